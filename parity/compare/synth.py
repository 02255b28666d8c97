"""Natural-looking synthetic test images (no dataset is available offline): smooth colour fields, hard-edged
shapes with slightly soft edges, and band-limited texture in some regions. Used by tests, the calibration and
the benchmark; deterministic per seed."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage


def natural_image(seed: int, height: int = 256, width: int = 256, *, as_float: bool = False) -> np.ndarray:
    """HxWx3 uint8 (or float64 0..255 before rounding when as_float)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    img = np.zeros((height, width, 3))
    base = rng.uniform(40, 200, 3)
    img += base
    for _ in range(6):  # smooth field: gaussian blobs and low-frequency waves
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.5)
        img += rng.uniform(-60, 60, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
    for _ in range(3):
        f, ph, ang = rng.uniform(1, 4), rng.uniform(0, 6.3), rng.uniform(0, 3.14)
        img += rng.uniform(-15, 15, 3) * np.sin(2 * np.pi * f * (xx * np.cos(ang) + yy * np.sin(ang)) + ph)[..., None]
    # shapes with hard edges (objects), softened by ~0.7 px like a rendered image
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(4, 9))):
        c = tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,)
        x0, y0 = rng.uniform(-0.1, 0.9) * width, rng.uniform(-0.1, 0.9) * height
        w, h = rng.uniform(0.08, 0.4) * width, rng.uniform(0.08, 0.4) * height
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=c)
        else:
            pts = [(x0 + rng.uniform(0, w), y0 + rng.uniform(0, h)) for _ in range(int(rng.integers(3, 6)))]
            draw.polygon(pts, fill=c)
    rgba = np.asarray(layer, dtype=np.float64)
    alpha = ndimage.gaussian_filter(rgba[..., 3] / 255.0, 0.7)[..., None]
    colour = np.stack([ndimage.gaussian_filter(rgba[..., c], 0.7) for c in range(3)], -1)
    colour = np.where(alpha > 1e-3, colour / np.maximum(alpha, 1e-3), 0)
    shade = 1.0 + 0.25 * (yy - 0.5)[..., None]  # a little lighting on the objects
    img = img * (1 - alpha) + np.clip(colour * shade, 0, 255) * alpha
    # texture: band-limited noise, stronger in a random half-plane (grass, fabric, hair...)
    tex = ndimage.gaussian_filter(rng.standard_normal((height, width, 3)), (1.0, 1.0, 0))
    mask = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1) > rng.uniform(-0.3, 0.3)).astype(float)
    mask = ndimage.gaussian_filter(mask, 3)[..., None]
    img += tex * (6 + 30 * mask)
    img = np.clip(img, 0, 255)
    return img if as_float else np.rint(img).astype(np.uint8)
