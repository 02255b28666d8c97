"""An item's render on disk: saved as a lossless PNG under the run's `renders/`, submitted for comparison with
its preview, and read back when an interrupted run resumes its follow-ups."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

from .policies import thresholds_of


def save_render(out_dir: Path, item: Any, image: Any) -> Path:
    """Write `image` (H, W, 3) uint8 as `out_dir/renders/<item file name>.png`; the path written."""
    from PIL import Image

    from parity.run import item_file_name

    from parity.report.jsonfile import replace_with

    path = out_dir / "renders" / f"{item_file_name(item.id)}.png"
    replace_with(path, Image.fromarray(image).save)  # a new file, never rewritten in place (a report may link it)
    return path


def submit_compare(comparer: Any, out_dir: Path, item: Any, image: Any) -> Future:
    """Queue the comparison of `image` with the item's preview on the comparer's worker thread."""
    from parity.run import item_file_name

    # resample=True: a size mismatch still gets a (labelled, at best DRIFT) score, so it can be attributed.
    return comparer.submit(image, item.preview_path, heatmap_dir=out_dir / "heatmaps",
                           name=item_file_name(item.id), resample=True, thresholds=thresholds_of(item))


def read_render(path: Any) -> Any:
    """An item's saved render (H, W, 3) uint8, or None when it is missing or unreadable (rendered again then)."""
    import numpy as np
    from PIL import Image

    if not isinstance(path, str) or not Path(path).is_file():
        return None
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):
        return None
