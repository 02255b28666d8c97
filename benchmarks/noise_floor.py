"""Calibration of `noise_floor_ratio` (parity.compare.tiers): how the real irreducible loss compares with the
measured twin loss, and whether a small hidden difference still stands out.

For each seed and dtype: a "training" LoRA in fp32 (values with detail below bf16 precision) renders the preview
(the live weights AI Toolkit samples with); the checkpoint is its bf16 rounding. Measured, all as luma-SSIM loss
(1 - SSIM-Y) between lossless renders:
  real  = preview vs render of the bf16 file          (what the item shows)
  twin  = render of the bf16 file vs its dithered twin (what parity measures)
  hidden = preview vs render of the file at 0.95x strength (a real difference the knob table cannot see)
The ratio real/twin must sit under `noise_floor_ratio` (default 2) and hidden/twin well above it.

    python benchmarks/noise_floor.py [--seeds 6] [--size 96] [--steps 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import smoke, smoke_option  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--dtypes", default="fp32,bf16")
    smoke_option(ap)
    a = smoke(ap.parse_args(argv), seeds=1, size=32, steps=2, dtypes="fp32")

    import torch

    torch.set_num_threads(1)
    from parity.compare import metrics as M
    from parity.engine import Engine
    from parity.engine.dither import dither_lora_file
    from parity.tiny import TRANSFORMER_CONFIG, build_tiny, make_lora, save_aitk_lora
    from parity.spec import RenderSpec

    tmp = Path(tempfile.mkdtemp(prefix="parity-floor-"))
    build_tiny(tmp / "tiny")
    g = torch.Generator().manual_seed(11)
    train = {k: v * (1 + 0.01 * torch.randn(v.shape, generator=g))
             for k, v in make_lora(TRANSFORMER_CONFIG, seed=7, dtype=torch.float32).items()}
    files = {
        "preview": save_aitk_lora(tmp / "train.safetensors", train, step=1, name="t"),
        "file": save_aitk_lora(tmp / "file.safetensors", {k: v.bfloat16() for k, v in train.items()}, step=1,
                               name="t"),
        "hidden": save_aitk_lora(tmp / "weak.safetensors", {k: (0.95 * v).bfloat16() for k, v in train.items()},
                                 step=1, name="t"),
    }
    for s in (0, 1):  # parity draws two dithered twins and keeps the larger loss (parity.diagnose.floor.TWINS)
        files[f"twin{s}"] = Path(dither_lora_file(files["file"], tmp / f"twin{s}.safetensors", seed=s)["file"])
    engine = Engine(tmp / "tiny", device="cpu")

    def loss(x, y) -> float:
        return 1.0 - M.ssim(x, y, luma=True).ssim_y

    print("| dtype | seed | real | twin (max of 2) | real/twin | hidden/twin |\n|---|---:|---:|---:|---:|---:|")
    for dtype in a.dtypes.split(","):
        ratios, hidden, single = [], [], []
        for seed in range(a.seeds):
            spec = RenderSpec(prompt="portrait of a woman, soft window light", width=a.size, height=a.size,
                              seed=seed, sample_steps=a.steps, guidance_scale=4.0, dtype=dtype)
            img = {k: engine.render(spec.with_(lora_path=str(p))).image for k, p in files.items()}
            real, hid = loss(img["preview"], img["file"]), loss(img["preview"], img["hidden"])
            one, two = loss(img["file"], img["twin0"]), loss(img["file"], img["twin1"])
            twin = max(one, two)
            single.append(real / one if one else float("inf"))
            ratios.append(real / twin if twin else float("inf"))
            hidden.append(hid / twin if twin else float("inf"))
            print(f"| {dtype} | {seed} | {real:.5f} | {twin:.5f} | {ratios[-1]:.2f} | {hidden[-1]:.1f} |", flush=True)
        print(f"| {dtype} | all | | | median {statistics.median(ratios):.2f}, max {max(ratios):.2f} "
              f"(one twin: max {max(single):.2f}) | min {min(hidden):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
