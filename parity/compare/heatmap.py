"""Heatmap PNGs of exactly the compared images' size, and the scales their legends show (Pillow only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# A perceptually ordered dark-to-bright ramp (anchor colours sampled by eye from 'inferno').
_ANCHORS = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
     [252, 255, 164]],
    dtype=np.float64,
)


def _lut() -> np.ndarray:
    x = np.linspace(0, 1, len(_ANCHORS))
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, x, _ANCHORS[:, c]) for c in range(3)], 1).round().astype(np.uint8)


LUT = _lut()


def colorize(values01: np.ndarray) -> np.ndarray:
    """HxW in [0,1] (clipped) -> HxWx3 uint8."""
    idx = np.clip(np.nan_to_num(values01, nan=0.0), 0.0, 1.0) * 255.0
    return LUT[np.rint(idx).astype(np.uint8)]


# The scales, for whoever draws the legend (the HTML report draws it beside the image, so the heatmap keeps the
# render's exact size and lines up with it under linked zoom). Ticks: (position 0..1 along the ramp, label).
DIFF_FULL_SCALE = 32     # levels at which the difference ramp saturates
SSIM_FLOOR = 0.5         # local SSIM at which the SSIM ramp saturates


def diff_legend(full_scale: int = DIFF_FULL_SCALE) -> dict:
    return {"title": f"|render - preview|, max over RGB, levels (x{255 / full_scale:.0f})",
            "ticks": [(i / 4, f"{full_scale * i // 4}" + ("+" if i == 4 else "")) for i in range(5)]}


def ssim_legend(floor: float = SSIM_FLOOR) -> dict:
    return {"title": "local SSIM (11x11 Gaussian, RGB mean)",
            "ticks": [(i / 4, ("<=" if i == 4 else "") + f"{1.0 - (1.0 - floor) * i / 4:.3g}") for i in range(5)]}


def css_gradient() -> str:
    """The ramp as a CSS linear-gradient (left = 0)."""
    stops = ", ".join(f"rgb({r},{g},{b}) {100 * i / (len(_ANCHORS) - 1):.0f}%" for i, (r, g, b) in
                      enumerate(_ANCHORS.astype(int)))
    return f"linear-gradient(to right, {stops})"


def _save(img: np.ndarray, path: Path, legend: dict, note: str) -> Path:
    """PNG of exactly the image's size; the scale travels in the PNG's text chunks for anyone opening it alone."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    ticks = ", ".join(f"{label} at {pos:.2f}" for pos, label in legend["ticks"])
    info.add_text("parity:scale", f"{legend['title']}; ramp dark to bright: {ticks}; {note}")
    from parity.report.jsonfile import replace_with

    # a new file, never rewritten in place: a report may have hard-linked the old one (parity.report.html)
    replace_with(path, lambda tmp: Image.fromarray(img, "RGB").save(tmp, "PNG", pnginfo=info))
    return path


def diff_heatmap(diff_max: np.ndarray, path: Path, *, full_scale: int = DIFF_FULL_SCALE) -> Path:
    """|a-b| (max over RGB, levels) amplified 255/full_scale times; >= full_scale saturates. Same HxW as a, b."""
    img = colorize(diff_max.astype(np.float32) / float(full_scale))
    return _save(img, path, diff_legend(full_scale), f"max {int(diff_max.max())}")


def ssim_heatmap(ssim_map: np.ndarray, shape_hw: tuple[int, int], path: Path, *, floor: float = SSIM_FLOOR) -> Path:
    """SSIM map (cropped by the 5 px window radius, padded back with edge values): 1 dark, <= floor bright.
    Same HxW as the images (`shape_hw`)."""
    H, W = shape_hw
    ph, pw = (H - ssim_map.shape[0]) // 2, (W - ssim_map.shape[1]) // 2
    m = np.pad(ssim_map, ((ph, H - ssim_map.shape[0] - ph), (pw, W - ssim_map.shape[1] - pw)), mode="edge")
    img = colorize((1.0 - m) / (1.0 - floor))
    return _save(img, path, ssim_legend(floor), f"mean {float(ssim_map.mean()):.4f}")
