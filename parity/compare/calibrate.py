"""Calibration of the tier thresholds on synthetic natural-looking images (python -m parity.compare.calibrate).

Each case renders a float image, derives a "render" from it by a perturbation, saves the unperturbed image as a
preview the way AI Toolkit does (Pillow JPEG defaults: q75 4:2:0), and runs compare(). The table it prints is the
one in docs/metrics.md; the defaults in tiers.Thresholds sit between the perturbation groups.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from parity import fileio

from .engine import compare
from .synth import natural_image
from .tiers import Thresholds


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def perturbations(seed: int, size: int) -> dict[str, np.ndarray]:
    f = natural_image(seed, size, size, as_float=True)
    rng = np.random.default_rng(10_000 + seed)
    patch = f.copy()
    p0 = size // 3
    patch[p0 : p0 + 40, p0 : p0 + 40] = natural_image(seed + 500, 40, 40, as_float=True)
    return {
        "identical": f,
        "noise sigma 0.25 (sub-level)": f + rng.normal(0, 0.25, f.shape),
        "noise sigma 0.5": f + rng.normal(0, 0.5, f.shape),
        "noise sigma 1": f + rng.normal(0, 1.0, f.shape),
        "brightness +1%": f * 1.01,
        "blur sigma 0.5": ndimage.gaussian_filter(f, (0.5, 0.5, 0)),
        "blur sigma 1": ndimage.gaussian_filter(f, (1.0, 1.0, 0)),
        "shift 1 px": np.roll(f, 1, axis=1),
        "shift 2 px": np.roll(f, 2, axis=1),
        "40x40 patch replaced": patch,
        "shift 8 px": np.roll(f, 8, axis=1),
        "unrelated image": natural_image(seed + 1000, size, size, as_float=True),
    }


def run(seeds: range, sizes: tuple[int, ...], t: Thresholds, fmt: str = "jpg") -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as d:
        for size in sizes:
            for seed in seeds:
                cases = perturbations(seed, size)
                preview = Path(d) / f"p{seed}_{size}.{fmt}"
                fileio.save_image(preview, Image.fromarray(_u8(cases["identical"])))  # AI Toolkit: image.save(path)
                for name, img in cases.items():
                    c = compare(_u8(img), preview, thresholds=t, flip=False)
                    rows.setdefault(name, []).append({**c.metrics, "tier": c.tier, **{
                        "ceiling_" + k: v for k, v in (c.ceiling or {}).items()}})
    return rows


def table(rows: dict[str, list[dict]]) -> str:
    cols = ["ssim", "ssim_y", "psnr", "max_abs", "share_over_tol", "window_density", "phash_distance"]
    out = ["| perturbation (render vs preview) | " + " | ".join(cols) + " | tiers |",
           "|---|" + "---|" * (len(cols) + 1)]
    for name, rs in rows.items():
        cells = []
        for c in cols:
            v = np.array([r[c] for r in rs], dtype=float)
            v = v[np.isfinite(v)]
            cells.append("inf" if v.size == 0 else f"{v.min():.4g}..{v.max():.4g}")
        tiers = {}
        for r in rs:
            tiers[r["tier"]] = tiers.get(r["tier"], 0) + 1
        out.append(f"| {name} | " + " | ".join(cells) + " | " + ", ".join(f"{k} {n}" for k, n in tiers.items()) + " |")
    if "ceiling_ssim" not in rows["identical"][0]:
        return "\n".join(out)
    ceil = np.array([r["ceiling_ssim"] for r in rows["identical"]])
    ceil_y = np.array([r["ceiling_ssim_y"] for r in rows["identical"]])
    out.append("")
    out.append(f"JPEG ceiling (render vs its own q75 4:2:0 re-encode): SSIM RGB {ceil.min():.3f}..{ceil.max():.3f}, "
               f"SSIM-Y {ceil_y.min():.3f}..{ceil_y.max():.3f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    a = ap.parse_args(argv)
    for fmt in ("jpg", "png"):
        print(f"\n### {fmt.upper()} previews, sizes {a.sizes}, seeds 0..{a.seeds - 1}\n")
        print(table(run(range(a.seeds), tuple(a.sizes), Thresholds(), fmt)))


if __name__ == "__main__":
    main()
