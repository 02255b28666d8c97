"""An item's render on disk: saved as a lossless PNG under the run's `renders/`, submitted for comparison with
its preview, and read back when an interrupted run resumes its follow-ups."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from parity.items import PlannedItem

from .policies import thresholds_of

if TYPE_CHECKING:
    import numpy as np

    from parity.compare.engine import Comparer, Comparison


def save_render(out_dir: Path, item: PlannedItem, image: np.ndarray) -> Path:
    """Write `image` (H, W, 3) uint8 as `out_dir/renders/<item file name>.png`; the path written."""
    from parity import fileio
    from parity.ids import item_file_name

    return fileio.save_image(out_dir / "renders" / f"{item_file_name(item.id)}.png", image)


def submit_compare(comparer: Comparer, out_dir: Path, item: PlannedItem, image: np.ndarray) -> Future[Comparison]:
    """Queue the comparison of `image` with the item's preview on the comparer's worker thread."""
    from parity.ids import item_file_name

    # resample=True: a size mismatch still gets a (labelled, at best DRIFT) score, so it can be attributed.
    return comparer.submit(image, item.preview_path, heatmap_dir=out_dir / "heatmaps",
                           name=item_file_name(item.id), resample=True, thresholds=thresholds_of(item))


def read_render(path: str | Path | None) -> np.ndarray | None:
    """An item's saved render (H, W, 3) uint8, or None when it is missing or unreadable (rendered again then)."""
    import numpy as np
    from PIL import Image

    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        return None
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
