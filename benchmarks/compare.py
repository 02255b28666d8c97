"""Pairs per second at 1024x1024: parity's comparison engine vs scikit-image's SSIM, same run, same images.

    .venv/bin/python benchmarks/compare.py [--size 1024] [--pairs 4] [--repeat 3]

Rows:
  skimage ssim RGB        structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                          data_range=255, channel_axis=-1): RGB SSIM only (the reference)
  parity ssim RGB+Y       parity.compare.ssim: RGB SSIM and luma SSIM in one pass
  parity metrics          SSIM RGB+Y, pixel stats (PSNR, MAE, max, tolerance share, worst window), pHash
  parity compare (JPEG)   compare() against a q75 4:2:0 JPEG preview file: decode, detect, re-encode the render,
                          all metrics, and the JPEG ceiling (a second SSIM RGB+Y)
Peak memory: tracemalloc peak of one call (numpy/scipy allocations are traced) and the process RSS high-water mark.
Best of --repeat timings per row, rows run round-robin (the machine is shared; best-of is the least noisy).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parity.compare import compare, ssim  # noqa: E402
from parity.compare.engine import _core_metrics  # noqa: E402
from parity.compare.metrics import phash_distance  # noqa: E402
from parity.compare.synth import natural_image  # noqa: E402
from parity.compare.tiers import Thresholds  # noqa: E402

from _common import smoke, smoke_option  # noqa: E402


def once(fn, pairs):
    t0 = time.perf_counter()
    for a, b in pairs:
        fn(a, b)
    return (time.perf_counter() - t0) / len(pairs)


def peak_of(fn, pairs):
    tracemalloc.start()
    fn(*pairs[0])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    smoke_option(ap)
    a = smoke(ap.parse_args(argv), size=128, pairs=1, repeat=1)
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    pairs, previews = [], []
    tmp = tempfile.TemporaryDirectory()
    for i in range(a.pairs):
        f = natural_image(i, a.size, a.size, as_float=True)
        ref = np.clip(np.rint(f), 0, 255).astype(np.uint8)
        test = np.clip(np.rint(f + rng.normal(0, 1.0, f.shape)), 0, 255).astype(np.uint8)
        pairs.append((test, ref))
        p = Path(tmp.name) / f"p{i}.jpg"
        Image.fromarray(ref).save(p)  # AI Toolkit's preview encoding: Pillow defaults, q75 4:2:0
        previews.append((test, p))

    def sk(x, y):
        return structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=255, channel_axis=-1)

    t = Thresholds()

    def metrics(x, y):
        _core_metrics(x, y, t, full=False)
        phash_distance(x, y)

    for x, y in pairs[:1]:  # the two SSIMs agree (sanity, printed)
        d = abs(ssim(x, y).ssim - sk(x, y))
    rows = [
        ("skimage ssim RGB", sk, pairs),
        ("parity ssim RGB+Y", lambda x, y: ssim(x, y), pairs),
        ("parity metrics", metrics, pairs),
        ("parity compare (JPEG)", lambda x, p: compare(x, p, flip=False), previews),
    ]
    print(f"{a.size}x{a.size} RGB uint8, {a.pairs} pairs, best of {a.repeat}; cpu count {os.cpu_count()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; |parity - skimage| SSIM = {d:.2e}")
    print(f"{'method':24s} {'s/pair':>8s} {'pairs/s':>8s} {'vs skimage':>10s} {'tracemalloc peak':>17s}")
    best = [float("inf")] * len(rows)
    for _ in range(a.repeat):  # round-robin, so a burst of load on the shared machine hits every row alike
        for i, (_, fn, data) in enumerate(rows):
            best[i] = min(best[i], once(fn, data))
    base = best[0]
    for (name, fn, data), s in zip(rows, best):
        peak = peak_of(fn, data)
        print(f"{name:24s} {s:8.3f} {1 / s:8.2f} {base / s:9.2f}x {peak / 2**20:14.1f} MiB")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS {rss:.0f} MiB (includes the test images and skimage)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
