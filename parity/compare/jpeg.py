"""JPEG facts a preview carries (quality, chroma subsampling) and re-encoding a render the same way.

AI Toolkit saves previews with `image.save(path)` and no options, so Pillow's defaults apply: quality 75, 4:2:0
(peers-metrics-reports.md §3.2, "Encoding": config_modules.py::save_image). Re-encoding the render with the same
Pillow settings and decoding it gives pixels identical to the preview when the two sources are identical, because
Pillow/libjpeg encoding and decoding are deterministic for one build (§0 finding 3).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

# Annex K tables of the JPEG standard (ITU T.81), natural (row-major) order: the base tables libjpeg's
# jpeg_set_quality() scales. Pillow's `Image.quantization` also lists tables in natural order.
STD_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)
STD_CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)
# Pillow's `subsampling` save values and JpegImagePlugin.get_sampling() results.
SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def scaled_table(base: tuple[int, ...], quality: int) -> np.ndarray:
    """libjpeg's jpeg_quality_scaling + jpeg_add_quant_table with force_baseline (what Pillow's `quality=` does)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    t = (np.asarray(base, dtype=np.int64) * scale + 50) // 100
    return np.clip(t, 1, 255)


def detect_quality(qtables: dict[int, list[int]] | list) -> tuple[int | None, bool]:
    """Best libjpeg quality 1..100 for a file's quantization tables and whether it reproduces them exactly.

    Compares every table present (0 = luma, 1 = chroma) with the standard tables scaled for each q and keeps the
    q with the smallest total absolute difference. (None, False) when there is no table."""
    tables = dict(enumerate(qtables)) if isinstance(qtables, (list, tuple)) else dict(qtables)
    tables = {k: np.asarray(v, dtype=np.int64).reshape(-1) for k, v in tables.items() if len(v) == 64}
    if not tables:
        return None, False
    best_q, best_err = None, None
    for q in range(1, 101):
        err = 0
        for k, t in tables.items():
            err += int(np.abs(scaled_table(STD_LUMA if k == 0 else STD_CHROMA, q) - t).sum())
        if best_err is None or err < best_err:  # ties keep the lower q: equal tables give equal pixels anyway
            best_q, best_err = q, err
    return best_q, best_err == 0


@dataclass
class JpegInfo:
    """What is needed to encode another image the way a JPEG file was encoded."""

    quality: int | None              # best-matching libjpeg quality
    standard_tables: bool            # the file's tables are exactly libjpeg's tables for `quality`
    subsampling: int | None          # Pillow code 0/1/2, None when unknown (grayscale, CMYK, odd factors)
    grayscale: bool
    progressive: bool
    qtables: list[list[int]] = field(default_factory=list, repr=False)  # natural order, as in the file

    @property
    def subsampling_name(self) -> str | None:
        return SUBSAMPLING_NAMES.get(self.subsampling) if self.subsampling is not None else None

    def to_dict(self) -> dict:
        return {
            "quality": self.quality,
            "standard_tables": self.standard_tables,
            "subsampling": "gray" if self.grayscale else self.subsampling_name,
            "progressive": self.progressive,
        }

    def describe(self) -> str:
        q = f"q{self.quality}" if self.standard_tables else f"custom tables (nearest q{self.quality})"
        return f"{q} {'grayscale' if self.grayscale else self.subsampling_name}"


def jpeg_info(im: Image.Image) -> JpegInfo:
    """Read quality/subsampling from an opened (not yet transposed) Pillow JPEG image."""
    from PIL import JpegImagePlugin

    qt = getattr(im, "quantization", None) or {}
    tables = [list(qt[k]) for k in sorted(qt)]
    quality, exact = detect_quality(qt)
    layers = getattr(im, "layers", len(im.getbands()))
    grayscale = layers == 1
    sampling = JpegImagePlugin.get_sampling(im) if layers == 3 else -1
    progressive = bool(im.info.get("progressive") or im.info.get("progression"))
    return JpegInfo(
        quality=quality,
        standard_tables=exact,
        subsampling=sampling if sampling in SUBSAMPLING_NAMES else None,
        grayscale=grayscale,
        progressive=progressive,
        qtables=tables,
    )


def can_reencode(info: JpegInfo) -> str | None:
    """None when `reencode` can mirror this file; otherwise the reason it cannot."""
    if not info.qtables:
        return "no quantization tables"
    if not info.grayscale and info.subsampling is None:
        return "chroma subsampling not one of 4:4:4, 4:2:2, 4:2:0 (or not a YCbCr JPEG)"
    return None


def reencode(rgb: np.ndarray, info: JpegInfo) -> np.ndarray:
    """Encode an HxWx3 uint8 image with the file's settings through Pillow, decode, return HxWx3 uint8.

    Standard tables are reproduced with `quality=` (the very call AI Toolkit makes, default 75), other tables with
    `qtables=` (Pillow passes them at 100% scale, so they are written unchanged)."""
    im = Image.fromarray(rgb, "RGB")
    kwargs: dict = {"progressive": info.progressive}
    if info.grayscale:
        im = im.convert("L")
    else:
        kwargs["subsampling"] = info.subsampling
    if info.standard_tables and info.quality is not None:
        kwargs["quality"] = info.quality
    else:
        kwargs["qtables"] = info.qtables
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kwargs)
    buf.seek(0)
    with Image.open(buf) as dec:
        return np.asarray(dec.convert("RGB"))
