"""How a model's renders change from one step count (and one static shift) to the next: smooth, or jumps.

Parameter recovery finds the steps of a preview by comparing renders at neighbouring step counts. An Euler
sampler whose error shrinks smoothly as 1/N renders N and N + 2 steps twice as far apart as N and N + 1
(r(N) ~ L + E/N: |r(N) - r(N+2)| / |r(N) - r(N+1)| = 2(N+1)/(N+2), about 2), and every render's distance from
the finest one times N stays about constant; then the steps' score rises smoothly to the answer. A model whose
renders jump from one step count to the next (a ratio far from 2, even and odd step counts in two families below
1) gives a steps line with no slope to climb: near the answer only exact re-encoding tells the steps apart
(docs/parameter-recovery.md, "What the smooth tiny model does not do like a trained one"). The same holds for the
static shift at a fixed step count (`--shifts`): a render that moves smoothly with the shift is twice as far from
the shift two grid steps away (0.1) as from the next one (0.05, the search's grid); a ratio near 1.4 is a random
walk (and the ratio of two renders that differ only by 8-bit rounding, about 0.4 grey levels apart).

For each prompt (the recovery benchmark's three, their seeds 3, 4, 5), at 64 px by default:

    d1   RMS grey levels between the renders at N and N + 1 steps, averaged over N in --steps
    d2   the same for N and N + 2
    ratio  d2 / d1 (about 2 for a smooth 1/N convergence)
    conv   N x |r(N) - r(finest)| / (1 - N / finest) at the ends of --steps and its spread (constant for 1/N)
    shift d1, d2, ratio   the same over the static shifts --shifts, one grid step (0.05) apart, at --at-steps steps

    PYTHONPATH=. python benchmarks/step_response.py --models 4206,1602          # smooth tiny models (seeds)
    PYTHONPATH=. python benchmarks/step_response.py --model-dir /weights/FLUX.2-dev --size 512   # local weights
    PYTHONPATH=. python benchmarks/step_response.py --smoke                                    # seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import pin_threads, smoke, smoke_option

PROMPTS = ["a red cube on a table", "a portrait of a woman, studio light", "sks dog on the beach"]


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()))


def sweep(images: list[np.ndarray]) -> dict[str, float]:
    """d1 (to the neighbour) and d2 (to the next but one) averaged over each render that has both, and d2 / d1,
    over renders at evenly spaced values of one knob."""
    d1 = float(np.mean([rms(a, b) for a, b in zip(images, images[1:-1])]))
    d2 = float(np.mean([rms(a, b) for a, b in zip(images, images[2:])]))
    return {"d1": d1, "d2": d2, "ratio": d2 / d1 if d1 else float("nan")}


def response(images: dict[int, np.ndarray], finest: int) -> dict[str, float]:
    """`sweep` over consecutive step counts (`images`: steps -> image, N..N+2 for every N measured) and the 1/N
    convergence constant's spread from them and the render at `finest` steps."""
    ns = sorted(n for n in images if n + 1 in images and n + 2 in images and n != finest)
    out = sweep([images[n] for n in range(ns[0], ns[-1] + 3)]) if ns else {"d1": 0.0, "d2": 0.0, "ratio": float("nan")}
    conv = [n * rms(images[n], images[finest]) / (1 - n / finest) for n in ns]
    return {**out, "conv_mean": float(np.mean(conv)) if conv else 0.0,
            "conv_spread": float(np.std(conv) / np.mean(conv)) if conv else 0.0}


def engines(args: argparse.Namespace, work: Path):
    """(name, Engine, LoRA path or None) for each model asked for."""
    from parity.engine import Engine

    if args.model_dir:
        yield Path(args.model_dir).name, Engine(args.model_dir), args.lora
        return
    from parity.tiny import build_tiny, tiny_paths

    for seed in (int(s) for s in args.models.split(",")):
        paths = tiny_paths(build_tiny(work / f"tiny-{seed}", smooth=True, seed=seed).root)
        yield f"tiny {seed}", Engine(paths.diffusers_dir), str(paths.lora)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="4206,1602", help="smooth tiny models, by seed (comma-separated)")
    ap.add_argument("--model-dir", default=None, help="a local diffusers FLUX.2 folder instead (nothing downloaded)")
    ap.add_argument("--lora", default=None, help="with --model-dir: a LoRA applied at multiplier 1")
    ap.add_argument("--steps", default="20:40", help="N from:to (renders N..to+2)")
    ap.add_argument("--finest", type=int, default=100, help="the step count taken as the converged render")
    ap.add_argument("--shifts", default="1.0:1.5", help="static shifts from:to, one search grid step apart ('' to skip)")
    ap.add_argument("--at-steps", type=int, default=20, help="the step count of the shift sweep")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--prompts", type=int, default=3, help="how many of the three prompts")
    smoke_option(ap)
    args = smoke(ap.parse_args(argv), models="101", steps="4:6", finest=10, size=32, prompts=1, shifts="1.0:1.1",
                 at_steps=4)
    pin_threads()
    from parity.errors import ParityError

    try:
        lo, hi = (int(x) for x in args.steps.split(":"))
    except ValueError:
        ap.error(f"--steps {args.steps!r}: give FROM:TO, two whole numbers (e.g. 20:40)")
    if not 1 <= lo <= hi or hi + 2 >= args.finest:
        ap.error(f"--steps {args.steps!r}: need 1 <= FROM <= TO and TO + 2 < --finest ({args.finest})")
    shifts = shift_values(ap, args.shifts)
    print(f"{'model':>14s} {'prompt':>6s} {'d1':>6s} {'d2':>6s} {'ratio':>6s} {'conv':>8s} {'spread':>6s}   "
          + (f"{'shift d1':>8s} {'d2':>6s} {'ratio':>6s}   " if shifts else "")
          + f"(N = {lo}-{hi}, finest {args.finest}"
          + (f"; shift {shifts[0]:g}-{shifts[-1]:g} at {args.at_steps} steps" if shifts else "")
          + f", {args.size} px; smooth: ratio ~2, spread ~0)")
    work = Path(tempfile.mkdtemp(prefix="parity-steps-"))
    try:
        for name, engine, lora in engines(args, work):
            for i in range(args.prompts):
                print(measure(engine, args, i, lora, (lo, hi), shifts, name), flush=True)
    except ParityError as e:   # a missing or unreadable model folder or LoRA: one line, not a traceback
        print(f"step_response: {e}", file=sys.stderr)
        return 2
    return 0


def measure(engine, args: argparse.Namespace, i: int, lora: str | None, steps: tuple[int, int], shifts: list[float],
            name: str) -> str:
    """One table row: prompt `i`'s step response (and shift response) on `engine`."""
    from parity.spec import RenderSpec

    lo, hi = steps
    base = RenderSpec(prompt=PROMPTS[i], width=args.size, height=args.size, seed=3 + i, lora_path=lora,
                      dtype="fp32", guidance_scale=args.guidance, sample_steps=lo)
    images = {n: np.asarray(engine.render(base.with_(sample_steps=n)).image) for n in [*range(lo, hi + 3), args.finest]}
    r = response(images, args.finest)
    line = (f"{name:>14s} {i:6d} {r['d1']:6.2f} {r['d2']:6.2f} {r['ratio']:6.2f} {r['conv_mean']:8.1f} "
            f"{r['conv_spread']:6.2f}")
    if shifts:
        at = base.with_(sample_steps=args.at_steps)
        s = sweep([np.asarray(engine.render(at.with_(schedule=f"static:{v:g}")).image) for v in shifts])
        line += f"   {s['d1']:8.2f} {s['d2']:6.2f} {s['ratio']:6.2f}"
    return line


def shift_values(ap: argparse.ArgumentParser, text: str) -> list[float]:
    """--shifts FROM:TO -> FROM, FROM + one grid step of the shift, ... TO (at least three values); '' -> none."""
    if not text:
        return []
    from parity import knobs

    step = knobs.searchable()["schedule"].resolution   # parameter recovery's shift grid
    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        ap.error(f"--shifts {text!r}: give FROM:TO, two numbers (e.g. 1.0:1.5)")
    n = round((hi - lo) / step)
    if not 0 < lo or n < 2:
        ap.error(f"--shifts {text!r}: need 0 < FROM and TO at least {2 * step:g} above it")
    return [round(lo + k * step, 6) for k in range(n + 1)]


if __name__ == "__main__":
    raise SystemExit(main())
