"""Loading renders and previews as HxWx3 uint8 RGB arrays, with every failure as one InputFileError line.

Decisions (documented in docs/metrics.md):
- EXIF orientation is applied, so the array is what a viewer shows; the JPEG facts are read from the stored
  (unrotated) image, and encode matching re-encodes in the stored orientation (see engine.encode_matched).
- Alpha: a fully opaque alpha channel is dropped exactly. Any real transparency is composited on white (what a
  viewer shows on a light page) and noted, because a FLUX.2 render has no alpha and any choice is a guess.
- Palette, grayscale, CMYK images are converted to RGB; 16-bit grayscale is scaled to 8 bits (v // 257).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from parity import limits
from parity.errors import InputFileError

from .jpeg import JpegInfo, jpeg_info

# EXIF orientation -> Pillow transpose that displays the stored pixels upright, and its inverse.
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
}


@dataclass
class LoadedImage:
    path: str
    rgb: np.ndarray                  # HxWx3 uint8, display orientation
    format: str                      # Pillow format name: JPEG, PNG, WEBP, ...
    mode: str                        # Pillow mode of the file (RGB, RGBA, P, L, ...)
    orientation: int = 1             # EXIF orientation that was applied (1 = none)
    jpeg: JpegInfo | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) after orientation."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


def orient(rgb: np.ndarray, orientation: int, *, inverse: bool = False) -> np.ndarray:
    """Apply (or undo) an EXIF orientation to an HxWx3 uint8 array."""
    op = _ORIENT.get(orientation)
    if op is None:
        return rgb
    if inverse:
        op = _INVERSE.get(op, op)  # flips, 180 and (anti)transposes are their own inverse
    return np.asarray(Image.fromarray(rgb, "RGB").transpose(op))


def _to_rgb(im: Image.Image, notes: list[str]) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        v = np.asarray(im).astype(np.int64)
        v = np.clip(v // 257 if mode != "I" or v.max() > 255 else v, 0, 255).astype(np.uint8)
        notes.append(f"{mode} scaled to 8 bits")
        return np.repeat(v[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info) or (
        mode in ("L", "RGB") and "transparency" in im.info
    )
    if not has_alpha:
        return np.asarray(im.convert("RGB"))
    rgba = np.asarray(im.convert("RGBA"))
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha[..., None].astype(np.float32) / 255.0
    out = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    notes.append("transparency composited on white")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Read an image file fully. Missing, unreadable, truncated or corrupt files raise InputFileError naming it."""
    p = Path(path)
    if not p.exists():
        raise InputFileError("image file not found", p)
    if p.is_dir():
        raise InputFileError("is a directory, expected an image file", p)
    if not p.is_file():  # a FIFO or device would block or stream forever on open
        raise InputFileError("not a regular file, expected an image file", p)
    try:
        with Image.open(p) as im:
            fmt = im.format or "unknown"
            mode = im.mode
            if im.width * im.height > limits.MAX_PIXELS:  # refuse before decoding: the header is enough
                raise InputFileError(f"image is {im.width}x{im.height}; parity compares images of at most "
                                     f"{limits.MAX_PIXELS} pixels (what it can render)", p)
            im.load()  # decode now: truncation and corrupt data surface here, not later
            info = jpeg_info(im) if fmt in ("JPEG", "MPO") else None
            try:
                orientation = int(im.getexif().get(0x0112, 1) or 1)
            except Exception:  # a broken EXIF block: show the stored pixels
                orientation = 1
            notes: list[str] = []
            rgb = _to_rgb(im, notes)
    except InputFileError:
        raise
    except Image.DecompressionBombError as e:
        raise InputFileError(f"image too large to decode safely ({e})", p) from None
    except Exception as e:  # Pillow raises many types for bad data (OSError, SyntaxError, ValueError, struct.error...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, OSError) and "truncated" in msg:
            msg = "image file is truncated"
        elif type(e).__name__ == "UnidentifiedImageError":
            msg = "not an image Pillow can read (corrupt or unknown format)"
        raise InputFileError(f"cannot read image: {msg}", p) from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputFileError(f"unexpected image shape {rgb.shape}", p)
    if orientation in _ORIENT:
        rgb = orient(rgb, orientation)
        notes.append(f"EXIF orientation {orientation} applied")
    else:
        orientation = 1
    return LoadedImage(str(p), np.ascontiguousarray(rgb), fmt, mode, orientation, info, notes)
