"""Files of a run directory written whole: results.json text (one item per line) and atomic replacement."""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from parity.jsonio import dumps

SCHEMA = "parity.results/1"
JOURNAL_NAME = "results.jsonl"
SNAPSHOT_NAME = "results.json"
PATH_KEYS: tuple[str, ...] = ("preview", "render", "heatmap_diff", "heatmap_ssim")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def dumps_results(doc: dict[str, Any]) -> str:
    """A results document as text: compact JSON with one item per line (diff- and grep-friendly, and fast: the
    C encoder does not run with `indent`)."""
    head = dumps({k: v for k, v in doc.items() if k != "items"})
    items = doc.get("items", [])
    body = ",\n".join(dumps(it) for it in items)
    sep = ", " if head != "{}" else ""
    return head[:-1] + (sep + '"items": [\n' + body + "\n]}\n" if items else sep + '"items": []}\n')


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary sibling + fsync + os.replace: readers see the old or the new file,
    never half of one. os.replace swaps the directory entry, so a symlink at `path` is replaced, not followed."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    replace_with(path, write, suffix=".tmp")
    _fsync_dir(Path(path).parent)


def replace_with(path: Path, write: Callable[[str], None], suffix: str | None = None) -> None:
    """Have `write(tmp)` write a temporary sibling of `path`, made 0644 (a report uploaded as a CI artifact or
    served must be readable), then os.replace it onto `path`: a reader, or a report that hard-linked the old file,
    never sees a half-written or changed-in-place file (a rewrite is a new inode). The temporary name ends in
    `path`'s extension unless `suffix` is given (Pillow picks the image format from it). Not fsync'd here: images
    can be remade; write_text_atomic fsyncs its text."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
