"""What portable CPU numerics cost: the same render under `--cpu-numerics portable` (ATen pinned to AVX2, MKL's
AVX2 path, no oneDNN, one thread) vs native kernels (torch's choice for this CPU, one thread), fp32 and bf16.

    .venv/bin/python benchmarks/cpu_numerics.py [--rounds 3] [--renders 2] [--json out.json]
    .venv/bin/python benchmarks/cpu_numerics.py --smoke        # seconds: one tiny render per side (the test)

The pins act only when torch loads, so each side is its own worker process (this script with --worker), started
alternately (native, portable, native, ...) for --rounds rounds; a worker enters its mode through the product
(parity.cpu_numerics.enter, which restarts it with the pins), builds one Engine, renders once untimed (warm-up),
then times --renders renders. Best per side over all rounds; the ratio is portable / native. The workers also
report their ATen capability and a hash of the last image (the two sides' bits differ where native is not AVX2).
Model: parity's tiny FLUX.2 (built once into a temporary folder), one 128x80 render at 16 steps (--smoke: 64x64,
2 steps).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine_line, ratio

SIDES = ("native", "portable")


def worker(mode: str, base: str, dtype: str, renders: int, smoke: bool) -> dict:
    from parity import cpu_numerics

    cpu_numerics.enter(mode, may_restart=True)   # portable: this process restarts itself with the pins
    import torch

    torch.set_num_threads(1)    # native at one thread too: the ratio is the kernels', not the thread count's
    from parity.engine.render import Engine
    from parity.spec import RenderSpec

    size, steps = ((64, 64), 2) if smoke else ((128, 80), 16)
    spec = RenderSpec(prompt="a red cabin in the snow", width=size[0], height=size[1], seed=7, sample_steps=steps,
                      guidance_scale=3.5, dtype=dtype)
    engine = Engine(base, cache_dir=None)
    engine.render(spec)                                      # warm-up: loads, first-call allocations
    times, image = [], None
    for _ in range(renders):
        t0 = time.perf_counter()
        image = engine.render(spec).image
        times.append(time.perf_counter() - t0)
    return {"mode": mode, "dtype": dtype, "capability": torch.backends.cpu.get_cpu_capability(),
            "seconds": times, "image_sha256": hashlib.sha256(image.tobytes()).hexdigest()}


def run_worker(mode: str, base: Path, dtype: str, renders: int, smoke: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--base", str(base), "--dtype", dtype,
           "--renders", str(renders)] + (["--smoke"] if smoke else [])
    # nothing pinned from outside: the portable side pins itself through the mode, the native side stays native
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "PARITY_CPU_NUMERICS")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    if r.returncode != 0:
        raise SystemExit(f"{mode} {dtype} worker failed: {r.stderr.strip()[-1500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(base: Path, dtypes: list[str], rounds: int, renders: int, smoke: bool) -> dict:
    out: dict = {}
    for dtype in dtypes:
        seen: dict[str, list[dict]] = {side: [] for side in SIDES}
        for _ in range(rounds):
            for side in SIDES:
                seen[side].append(run_worker(side, base, dtype, renders, smoke))
        best = {side: min(t for w in seen[side] for t in w["seconds"]) for side in SIDES}
        out[dtype] = {"best_s": best, "ratio_portable_vs_native": ratio(best["portable"], best["native"]),
                      "capability": {side: seen[side][0]["capability"] for side in SIDES},
                      "same_bits": seen["native"][0]["image_sha256"] == seen["portable"][0]["image_sha256"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--renders", type=int, default=2, help="timed renders per worker")
    ap.add_argument("--smoke", action="store_true", help="one round, one tiny fp32 render per side (seconds)")
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--base", default=None, help="a tiny FLUX.2 folder (default: built into a temporary folder)")
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.base, a.dtype, a.renders, a.smoke)))
        return 0
    base = Path(a.base) if a.base else _tiny_model()
    rounds, renders, dtypes = (1, 1, ["fp32"]) if a.smoke else (a.rounds, a.renders, ["fp32", "bf16"])
    result = {"machine": machine_line(), "smoke": a.smoke, "rounds": rounds, "renders": renders,
              "dtypes": measure(base, dtypes, rounds, renders, a.smoke)}
    for dtype, r in result["dtypes"].items():
        print(f"{dtype}: native ({r['capability']['native']}) {r['best_s']['native']:.3f} s, portable "
              f"({r['capability']['portable']}) {r['best_s']['portable']:.3f} s, ratio "
              f"{r['ratio_portable_vs_native']:.2f}; same bits: {r['same_bits']}")
    print("RESULT " + json.dumps(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _tiny_model() -> Path:
    from parity.tiny import build_tiny

    root = Path(tempfile.mkdtemp(prefix="parity-cpu-numerics-"))
    build_tiny(root)
    return root


if __name__ == "__main__":
    sys.exit(main())
