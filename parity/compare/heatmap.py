"""Heatmap PNGs with a colour bar that gives the scale (Pillow only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def _with_colorbar(img: np.ndarray, ticks: list[tuple[float, str]], title: str) -> Image.Image:
    """Image above a colour bar; ticks are (position 0..1, label)."""
    H, W = img.shape[:2]
    cw = max(W, 360)
    bar_h, pad, text_h = 14, 6, 12
    canvas = Image.new("RGB", (cw, H + pad + bar_h + 2 * text_h + 3 * pad), (255, 255, 255))
    canvas.paste(Image.fromarray(img, "RGB"), (0, 0))
    bw = cw - 40
    bar = colorize(np.tile(np.linspace(0, 1, bw), (bar_h, 1)))
    y0 = H + pad
    canvas.paste(Image.fromarray(bar, "RGB"), (20, y0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for pos, label in ticks:
        x = 20 + int(round(pos * (bw - 1)))
        draw.line([(x, y0 + bar_h), (x, y0 + bar_h + 3)], fill=(0, 0, 0))
        tw = draw.textlength(label, font=font)
        draw.text((min(max(0, x - tw / 2), cw - tw), y0 + bar_h + 4), label, fill=(0, 0, 0), font=font)
    draw.text((20, y0 + bar_h + text_h + 2 * pad), title, fill=(0, 0, 0), font=font)
    return canvas


def diff_heatmap(diff_max: np.ndarray, path: Path, *, full_scale: int = 32) -> Path:
    """|a-b| (max over RGB, levels) amplified 255/full_scale times; >= full_scale saturates."""
    img = colorize(diff_max.astype(np.float32) / float(full_scale))
    ticks = [(i / 4, f"{full_scale * i // 4}" + (" or more" if i == 4 else "")) for i in range(5)]
    title = f"|render - preview|, max over RGB, levels (x{255 / full_scale:.0f} amplified); max {int(diff_max.max())}"
    out = _with_colorbar(img, ticks, title)
    out.save(path, "PNG")
    return path


def ssim_heatmap(ssim_map: np.ndarray, shape_hw: tuple[int, int], path: Path, *, floor: float = 0.5) -> Path:
    """SSIM map (cropped by the 5 px window radius, padded back with edge values): 1 dark, <= floor bright."""
    H, W = shape_hw
    ph, pw = (H - ssim_map.shape[0]) // 2, (W - ssim_map.shape[1]) // 2
    m = np.pad(ssim_map, ((ph, H - ssim_map.shape[0] - ph), (pw, W - ssim_map.shape[1] - pw)), mode="edge")
    img = colorize((1.0 - m) / (1.0 - floor))
    ticks = [(i / 4, f"{1.0 - (1.0 - floor) * i / 4:.3g}" + (" or less" if i == 4 else "")) for i in range(5)]
    out = _with_colorbar(img, ticks, f"local SSIM (11x11 gaussian, RGB mean); mean {float(ssim_map.mean()):.4f}")
    out.save(path, "PNG")
    return path
