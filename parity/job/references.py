"""Relative paths in a job (ctrl_img, pretrained_lora_path) as AI Toolkit opens them: from the folder it ran in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def working_dirs(training_folder: Any, folder: Path, config_path: Path) -> list[Path]:
    """Where AI Toolkit may have run (its relative paths, e.g. ctrl_img, are opened from its working
    directory): the folder D with D/training_folder == the job folder's parent when training_folder is
    relative, then the config file's folder, then the job folder."""
    out: list[Path] = []
    tf = training_folder
    if isinstance(tf, str) and tf and not Path(tf).is_absolute():
        parts = Path(tf).parts
        parent = folder.resolve().parent
        tail = parent.parts[len(parent.parts) - len(parts):]
        if tuple(tail) == tuple(parts):
            out.append(Path(*parent.parts[: len(parent.parts) - len(parts)]))
    out += [config_path.resolve().parent, folder.resolve()]
    return list(dict.fromkeys(out))


def resolve_reference(written: str, dirs: list[Path]) -> str:
    """A path as AI Toolkit opens it: absolute as is; relative from its working directory (the first of `dirs`
    where the file exists, else the first of `dirs`, so a missing file is reported at the path AI Toolkit
    would have opened)."""
    p = Path(os.path.expanduser(written))
    if p.is_absolute():
        return str(p)
    for d in dirs:
        if (d / p).is_file():
            return str(d / p)
    return str(dirs[0] / p)
