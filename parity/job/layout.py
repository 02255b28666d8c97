"""Write job folders laid out exactly as AI Toolkit writes them (for tests and the demo builder).

`{training_folder}/{name}/config.yaml` (BaseTrainProcess.py L75-79), `samples/{ms}__{step:09d}_{i}.{ext}`
written through `samples/.tmp/` with a 300x300 q90 thumbnail in `samples/.thumbs/{file}.jpg`
(config_modules.py L1254-1304), LoRA files `{name}_{step:09d}.safetensors` / `{name}.safetensors`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from parity import fileio
from parity.job.previews import checkpoint_filename, preview_filename


def write_config_copy(save_root: Path, config: dict) -> Path:
    """config.yaml as AI Toolkit dumps it (already `[name]`-preprocessed by the caller if needed)."""
    save_root.mkdir(parents=True, exist_ok=True)
    path = save_root / "config.yaml"
    fileio.write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path


def write_preview(samples_dir: Path, image, *, ms: int, step: int, index: int, ext: str = "jpg") -> Path:
    """Save a PIL image with no options (JPEG -> Pillow default quality 75, 4:2:0; config_modules.py
    L1342-1344) via `.tmp/`, thumbnail first, then move into place."""
    from PIL import Image

    tmp = samples_dir / ".tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    name = preview_filename(ms, step, index, ext)
    fileio.save_image(tmp / name, image)  # no options, as AI Toolkit
    thumbs = samples_dir / ".thumbs"
    thumbs.mkdir(exist_ok=True)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    thumb = image.convert("RGB").crop((left, top, left + side, top + side)).resize((300, 300), Image.LANCZOS)
    fileio.save_image(thumbs / (name + ".jpg"), thumb, "JPEG", quality=90)
    fileio.move(tmp / name, samples_dir / name)
    return samples_dir / name


def write_checkpoint(save_root: Path, name: str, step: int | None = None, *, final: bool = False,
                     data: bytes | None = None) -> Path:
    """A LoRA file name as AI Toolkit writes it. `data` defaults to an empty safetensors file."""
    path = save_root / checkpoint_filename(name, step, final=final)
    if data is None:
        header = b'{"__metadata__":{"format":"pt"}}'
        data = len(header).to_bytes(8, "little") + header
    fileio.write_bytes(path, data)
    return path
