"""Every file parity writes into a user's folder, written whole: a temporary sibling, fsync, then os.replace.

Readers (a browser on the report, CI uploading it, a resumed run) see the old file or the new one, never half of
one; a run killed mid-write leaves at most a hidden `.<name>.*.tmp`. os.replace swaps the directory entry, so a
symlink planted at the destination is replaced, never followed (issue 35: `--export-requests DIR` overwrote the
file a `DIR/<id>.json` symlink pointed at). tests/test_structural.py checks that no other module in parity/ opens
a file for writing, copies one, or saves an image by itself.

    write_text(path, text)            write_bytes(path, data)          write_json(path, doc, indent=2)
    save_image(path, pil_image, ...)  copy_file(src, dest, max_bytes)  write_with(path, fill)
    link_or_copy(src, dest)           append_text(path, text) (only for a file another program owns, such as
                                      $GITHUB_STEP_SUMMARY)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from parity.errors import InputFileError


def write_with(path: Path, fill: Callable[[BinaryIO], None], *, durable: bool = True) -> Path:
    """Create or replace `path` with what `fill(binary file)` writes; the file appears only when `fill` returned.
    Any error (a full disk, a refused image, a size limit) leaves the destination as it was and no temporary.
    `durable`: fsync the file and its folder, so it survives a power cut too (results, configs); images, which
    a run can make again, skip it (thousands of thumbnails would wait on the disk)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600: a report uploaded as a CI artifact or served must be readable
        with os.fdopen(fd, "wb") as f:
            fill(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def write_bytes(path: Path, data: bytes, *, durable: bool = True) -> Path:
    return write_with(path, lambda f: f.write(data), durable=durable)


def write_text(path: Path, text: str) -> Path:
    """UTF-8 text (the encoding every file parity writes uses, whatever the machine's locale)."""
    return write_bytes(path, text.encode("utf-8"))


write_text_atomic = write_text   # the name parity.report.jsonfile exported first


def append_text(path: Path, text: str) -> Path:
    """Append to a file another program owns and reads line by line ($GITHUB_STEP_SUMMARY: every step of a job
    appends to it). Replacing it whole would drop what earlier steps wrote, so this is the one non-atomic write;
    a crash can leave a partial last paragraph, never touch what was there."""
    path = Path(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
    return path


def write_json(path: Path, doc: Any, **dump_kw: Any) -> Path:
    """Strict JSON (parity.jsonio.dumps: no NaN, numpy scalars as numbers) and a final newline."""
    from parity.jsonio import dumps

    return write_text(path, dumps(doc, **dump_kw) + "\n")


def save_image(path: Path, image: Any, format: str | None = None, **save_kw: Any) -> Path:
    """A PIL image (or an (H, W, 3) uint8 array) saved as `format` (default: from the file's suffix)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    fmt = format or Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"no image format for {Path(path).name!r}")
    return write_with(path, lambda f: image.save(f, format=fmt, **save_kw), durable=False)


def copy_file(src: Path, dest: Path, max_bytes: int | None = None) -> Path:
    """A byte copy of `src` (a regular file), refused with a one-line InputFileError when it is larger than
    `max_bytes`: nothing is written then (no empty or partial file at `dest`)."""
    src = Path(src)
    size = src.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise InputFileError(f"file is {size} bytes, over parity's limit of {max_bytes} for a copy", src)

    def fill(f: BinaryIO) -> None:
        with src.open("rb") as r:
            copied = 0
            while chunk := r.read(1 << 20):
                copied += len(chunk)
                if max_bytes is not None and copied > max_bytes:  # the file grew while being copied
                    raise InputFileError(f"file grew over parity's limit of {max_bytes} bytes while copied", src)
                f.write(chunk)
    return write_with(dest, fill, durable=False)


def link_or_copy(src: Path, dest: Path) -> Path:
    """`dest` made the same bytes as `src` through a temporary sibling + os.replace: a hard link where the file
    system allows it and `src` is already world-readable (no bytes copied: a cold report of thousands of images
    is dominated by copying otherwise), else a byte copy made 0644 with `src`'s modification time (so a later
    report build sees the copy is current). A link is safe because nothing rewrites an image in place: every file
    parity writes is a new inode (write_with), AI Toolkit writes each preview once, and a report never writes
    into its copies; replacing or deleting the original leaves the link as it was. The caller checks the size
    budget (parity.limits) first."""
    src, dest = Path(src), Path(dest)
    tmp = dest.with_name(f".{dest.name[:100]}.link.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        if os.stat(src).st_mode & 0o044 == 0o044:
            os.link(src, tmp)
            os.replace(tmp, dest)
            return dest
    except OSError:  # another file system, or links not allowed: copy
        pass
    copy_file(src, dest)
    st = os.stat(src)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
    return dest


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


def move(src: Path, dest: Path) -> Path:
    """Rename `src` to `dest` within one file system (atomic: what AI Toolkit does with its `.tmp/` previews)."""
    os.replace(src, dest)
    return Path(dest)
