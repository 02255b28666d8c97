"""What a preview can tell apart: the score landscape over (steps, static shift) around the values that rendered it.

Parameter recovery (docs/parameter-recovery.md) climbs the comparison's score. Whether any search can find the
answer within a budget depends on the landscape: one basin around the answer, or many local maxima, each a place
where a local search stops. For each case, a JPEG q75 preview is rendered at the true (steps, shift) on a smooth
tiny FLUX.2 (guidance 4, multiplier 1), every grid point of a window around it is rendered and scored against the
preview (PSNR after re-encoding the render like the preview; identical = 1000 dB), and the benchmark prints:

    points     grid points in the window (steps integer, shift grid 0.05)
    maxima     local maxima on the grid (8 neighbours), the answer included
    basin      points from which steepest ascent over the 8 neighbours reaches the answer
    rival      the best score in the window but the answer's
    nbr        the best score among the answer's 8 neighbours
    near       points whose comparison is NEAR or better
    bf<B>      of the local maxima that are not the answer, from how many a best-first expansion (the rule of
               parity.diagnose.fit.expand, on this grid) renders the answer within B renders

Cases are drawn as benchmarks/recovery.py draws them (models of seeds 1000-9999, steps 8-50, shift 1-4), or given:

    PYTHONPATH=. nice python benchmarks/landscape.py --draws 6 [--seed S]
    PYTHONPATH=. nice python benchmarks/landscape.py --model 9964 --steps 30 --shift 3.2 --table
    PYTHONPATH=. python benchmarks/landscape.py --smoke
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import pin_threads, smoke, smoke_option
from recovery import Bench, draw_value

from parity import knobs

BEST_FIRST_BUDGET = 30   # renders: the bound per changed knob
EXACT_DB = 1000.0   # the score of an identical image (the search's convention)
# a grid point's 8 neighbours, in the order parity.diagnose.fit.expand renders them (orthogonal first)
NEIGHBOURS = [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]
SHIFT_GRID = knobs.searchable()["schedule"].resolution   # the search's grid of the static shift


def _neighbours(grid: np.ndarray, i: int, j: int):
    for di, dj in NEIGHBOURS:
        a, b = i + di, j + dj
        if 0 <= a < grid.shape[0] and 0 <= b < grid.shape[1]:
            yield a, b


def ascent_end(grid: np.ndarray, i: int, j: int) -> tuple[int, int]:
    """Where steepest ascent over the 8 neighbours from (i, j) stops: a point no neighbour beats."""
    while True:
        best = max(_neighbours(grid, i, j), key=lambda p: grid[p])
        if grid[best] <= grid[i, j]:
            return i, j
        i, j = best


def local_maxima(grid: np.ndarray) -> list[tuple[int, int]]:
    return [(i, j) for i in range(grid.shape[0]) for j in range(grid.shape[1])
            if all(grid[p] <= grid[i, j] for p in _neighbours(grid, i, j))]


def basin_size(grid: np.ndarray, peak: tuple[int, int]) -> int:
    """How many points of the grid steepest ascent takes to `peak`."""
    return sum(ascent_end(grid, i, j) == peak for i in range(grid.shape[0]) for j in range(grid.shape[1]))


def best_first_renders(grid: np.ndarray, start: tuple[int, int], budget: int) -> int | None:
    """How many renders after `start` a best-first expansion needs to render the answer (the grid's maximum):
    the best rendered point with a neighbour not rendered yet has its neighbours rendered in NEIGHBOURS order
    until one scores better than it; None when `budget` renders do not reach it."""
    answer = tuple(int(x) for x in np.unravel_index(np.argmax(grid), grid.shape))
    seen = {start}
    while answer not in seen:
        todo = []
        for p in sorted(seen, key=lambda q: -grid[q]):
            todo = [q for q in _neighbours(grid, *p) if q not in seen]
            if todo:
                break
        if not todo:
            return None
        for q in todo:
            if len(seen) > budget:
                return None
            seen.add(q)
            if q == answer or grid[q] > grid[p]:
                break
    return len(seen) - 1 if len(seen) - 1 <= budget else None


def landscape(bench: Bench, item: int, steps: int, shift: float, steps_window: int, shift_window: float,
              work: Path) -> dict:
    """Scores of every (steps, shift) grid point within the window around the truth, against its JPEG preview."""
    from PIL import Image

    spec = bench.recorded[item]
    preview = work / f"preview-{steps}-{shift:g}-{item}.jpg"
    Image.fromarray(bench.render(spec.with_(sample_steps=steps, schedule=f"static:{shift:g}"))).save(preview)
    n_shift = round(shift_window / SHIFT_GRID)
    steps_axis = [n for n in range(steps - steps_window, steps + steps_window + 1) if n >= 1]
    shift_axis = [round(shift + SHIFT_GRID * k, 2) for k in range(-n_shift, n_shift + 1)]
    grid = np.zeros((len(steps_axis), len(shift_axis)))
    near = 0
    for a, n in enumerate(steps_axis):
        for b, s in enumerate(shift_axis):
            c = bench.score(bench.render(spec.with_(sample_steps=n, schedule=f"static:{s:g}")), str(preview))
            psnr = c.metrics["psnr"]
            grid[a, b] = EXACT_DB if psnr == "inf" else float(psnr)
            near += c.tier in ("EXACT", "NEAR")
    truth = (steps_axis.index(steps), shift_axis.index(round(shift, 2)))
    others = grid.copy()
    others[truth] = -np.inf
    maxima = local_maxima(grid)
    summits = [m for m in maxima if m != truth]
    reached = sum(best_first_renders(grid, m, BEST_FIRST_BUDGET) is not None for m in summits)
    return {"steps": steps_axis, "shift": shift_axis, "grid": grid, "truth": truth, "near": near,
            "best_first": f"{reached}/{len(summits)}", "maxima": len(maxima), "basin": basin_size(grid, truth), "rival": float(others.max()),
            "nbr": max(float(grid[p]) for p in _neighbours(grid, *truth))}


def print_table(land: dict) -> None:
    print("steps\\shift " + " ".join(f"{s:5.2f}" for s in land["shift"]))
    for n, row in zip(land["steps"], land["grid"]):
        print(f"{n:11d} " + " ".join("exact" if v >= EXACT_DB else f"{v:5.1f}" for v in row))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=0, help="cases drawn at random (held-out models)")
    ap.add_argument("--seed", type=int, default=None, help="draws the models and cases (default: random, printed)")
    ap.add_argument("--model", type=int, default=None, help="one model seed (with --steps and --shift)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--shift", type=float, default=3.2)
    ap.add_argument("--item", type=int, default=0, help="which of the three prompts")
    ap.add_argument("--steps-window", type=int, default=3, help="steps either side of the truth")
    ap.add_argument("--shift-window", type=float, default=0.3, help="shift either side of the truth")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--table", action="store_true", help="print every case's grid of scores")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="write every case's grid there (truth: its index in the grid; values: steps, shift)")
    smoke_option(ap)
    args = smoke(ap.parse_args(argv), model=101, draws=0, size=32, steps_window=1, shift_window=0.05, table=True)
    if args.steps < 1 or args.shift <= 0 or args.steps_window < 0 or args.shift_window < 0:
        ap.error("--steps must be >= 1, --shift > 0, and the windows >= 0")
    pin_threads()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10 ** 6)
    rng = random.Random(seed)
    if args.draws:
        cases = [(rng.randrange(1000, 10000), draw_value(rng, "steps", 1.58), draw_value(rng, "schedule", 1.58))
                 for _ in range(args.draws)]
    else:
        cases = [(args.model if args.model is not None else 101, args.steps, args.shift)]
    work = Path(tempfile.mkdtemp(prefix="parity-landscape-"))
    print(f"seed {seed}; {args.size} px; window +-{args.steps_window} steps x +-{args.shift_window:g} shift; "
          f"guidance 4, multiplier 1; item {args.item}", flush=True)
    print(f"{'model':>5s} {'truth':>12s} {'points':>6s} {'maxima':>6s} {'basin':>5s} {'rival':>6s} {'nbr':>6s} "
          f"{'near':>5s} {f'bf{BEST_FIRST_BUDGET}':>6s}")
    saved = []
    for model, steps, shift in cases:
        land = landscape(Bench(work, model, args.size), args.item, int(steps), float(shift), args.steps_window,
                         args.shift_window, work)
        print(f"{model:5d} {f'{int(steps)} + {shift:g}':>12s} {land['grid'].size:6d} {land['maxima']:6d} "
              f"{land['basin']:5d} {land['rival']:6.1f} {land['nbr']:6.1f} {land['near']:5d} {land['best_first']:>6s}",
              flush=True)
        if args.table:
            print_table(land)
        if args.json:
            saved.append({"model": model, "values": [int(steps), float(shift)], "size": args.size, "item": args.item,
                          **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in land.items()}})
            Path(args.json).write_text(json.dumps(saved))
        if land["grid"][land["truth"]] < EXACT_DB:
            print(f"error: the truth's own render does not reproduce its preview ({model}, {steps}, {shift:g})")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
