"""What a preview can tell apart: the score landscape over two knobs around, or across, the values that rendered it.

Parameter recovery (docs/parameter-recovery.md) climbs the comparison's score. Whether any search can find the
answer within a budget depends on the landscape: one basin around the answer, or many local maxima, each a place
where a local search stops; or, far from the answer, no slope at all. For each case, a JPEG q75 preview is
rendered at the two knobs' true values on a smooth tiny FLUX.2 (the other knobs as recorded: 20 steps, guidance 4,
multiplier 1, AI Toolkit's schedule), every point of a grid is rendered and scored against the preview (PSNR
after re-encoding the render like the preview; identical = 1000 dB; `--score bins`: how closely the render lands in
the preview's own JPEG bins, which carries no JPEG error; `--item 0,1`: the scores of several prompts averaged),
and the benchmark prints:

    points     grid points (the truth's own values are added to each axis)
    maxima     local maxima on the grid (8 neighbours), the answer included
    basin      points from which steepest ascent over the 8 neighbours reaches the answer
    rival      the best score on the grid but the answer's
    nbr        the best score among the answer's 8 neighbours
    near       points whose comparison is NEAR or better
    bf<B>      of the local maxima that are not the answer, from how many a best-first expansion (the rule of
               parity.diagnose.fit.expand, on this grid) renders the answer within B renders
    lifted     points other than the answer scoring LIFT_DB above the grid's median: where the preview still
               tells a search that it is close
    apart      grey levels (RMS over the pixels, averaged over the items) from the answer's render to the nearest
               other point's render, and to the farthest: how far wrong answers are from the right picture
    funnel     rank correlation (Spearman) between a point's distance from the answer on the grid and its render's
               distance from the answer's render: near 1, the renders close in on the answer; near 0, none of
               them says where it lies (not even a score that saw the answer's own render)
    jpeg       grey levels from the answer's render to its JPEG preview: the error the encoding adds

Two grids (`--knobs`): steps x static shift, a window around the truth on the search's own grid (1 step, 0.05),
where the two trade off and the answer's neighbourhood is rough (`--valley`: the shift counted from the valley
through the answer at each steps value, shift x (steps / answer's steps)^VALLEY_POWER of parity.diagnose.fit, so the
window follows the valley along the steps); guidance x LoRA multiplier over the whole range
the recovery benchmark draws true values from (guidance 1.5-8, multiplier 0.3-1.5), at 0.5 x 0.1: how far from
the answer the preview still says where the answer lies. Cases are drawn as benchmarks/recovery.py draws them
(models of seeds 1000-9999), or given:

    PYTHONPATH=. nice python benchmarks/landscape.py --draws 6 [--seed S]
    PYTHONPATH=. nice python benchmarks/landscape.py --model 9964 --truth 30,3.2 --table
    PYTHONPATH=. nice python benchmarks/landscape.py --valley --window 5,0.1 --draws 8 [--seed S]
    PYTHONPATH=. nice python benchmarks/landscape.py --knobs guidance,lora_scale --draws 4 --table
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
from recovery import RANGES, Bench, Case, draw_value

from parity import knobs

BEST_FIRST_BUDGET = 30   # renders: the bound per changed knob
EXACT_DB = 1000.0   # the score of an identical image (the search's convention)
# a grid point's 8 neighbours, in the order parity.diagnose.fit.expand renders them (orthogonal first)
NEIGHBOURS = [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]
SHIFT_GRID = knobs.searchable()["schedule"].resolution   # the search's grid of the static shift
LIFT_DB = 3.0   # a point this far above the grid's median still tells a search it is close (`lifted`)
# the grids the benchmark knows: a window around the truth on the search's grid, or a whole drawn range
PAIRS = {"steps,schedule": {"truth": "30,3.2", "window": "3,0.3", "spacing": f"1,{SHIFT_GRID:g}"},
         "guidance,lora_scale": {"truth": "2.7,0.84", "window": None, "spacing": "0.5,0.1"}}


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


def axis_around(knob: str, centre: float, window: float, spacing: float) -> list[float]:
    """The knob's values `centre` +- `window` at `spacing` (steps at least 1)."""
    n = round(window / spacing)
    values = [round(centre + spacing * k, 2) for k in range(-n, n + 1)]
    return [int(v) for v in values if v >= 1] if knob == "steps" else values


def axis_over_range(knob: str, spacing: float) -> list[float]:
    """The knob's values over the range the recovery benchmark draws true values from (recovery.RANGES)."""
    low, high = RANGES[knob]
    values = [round(low + spacing * k, 2) for k in range(round((high - low) / spacing) + 1)]
    return [int(v) for v in values] if knob == "steps" else values


def bins_db(render: np.ndarray, stored) -> float:
    """How closely `render` lands in a preview's own JPEG bins (`stored`: parity.compare.dct.read_coefficients): the
    mean squared distance of its coefficients outside the bins the preview stored, in bin widths, as dB; EXACT_DB
    when every one is inside (the render encodes to the preview's coefficients)."""
    from parity.compare import dct

    misses = dct.bin_misses(render, stored)
    return EXACT_DB if not misses.any() else -10 * float(np.log10(float(misses @ misses) / len(misses)))


def valley_shift(truth: dict[str, float], steps: float) -> float:
    """The static shift at `steps` on the valley through the answer (`truth`: its steps and shift), on the
    search's grid (the search's own valley law, parity.diagnose.fit.valley_shift)."""
    from parity.diagnose import fit

    shift = fit.valley_shift(truth["schedule"], truth["steps"], steps)
    return round(round(shift / SHIFT_GRID) * SHIFT_GRID, 2)


def landscape(bench: Bench, items: list[int], truth: dict[str, float], axes: list[tuple[str, list[float]]],
              work: Path, score: str = "psnr", valley: bool = False) -> dict:
    """Scores of every grid point of two knobs' `axes` (knob, values; the truth's own value added to each), the
    other knobs as recorded, against the JPEG previews of `items` rendered at `truth` (those two knobs' true
    values), averaged over the items. `score`: "psnr" (the comparison's, after re-encoding the render like the
    preview) or "bins" (`bins_db`). A point is near when every item's comparison is NEAR or EXACT. `valley`
    (steps x shift): the second axis is an offset from the valley's shift at each steps value (`valley_shift`),
    the truth's offset 0."""
    from PIL import Image

    from parity.compare import dct

    def at(item: int, values: dict[str, float]):
        return bench.recorded[item].with_(**Case("point", 0, values).spec_changes())   # the model is the bench's

    def placed(x: float, y: float) -> dict[str, float]:
        return {ka: x, kb: round(valley_shift(truth, x) + y, 2) if valley else y}

    previews, answers = {}, {}
    for item in items:
        previews[item] = work / ("preview-" + "-".join(f"{k}{v:g}" for k, v in truth.items()) + f"-{item}.jpg")
        answers[item] = bench.render(at(item, truth))
        Image.fromarray(answers[item]).save(previews[item])
    stored = {item: dct.read_coefficients(path) for item, path in previews.items()} if score == "bins" else {}
    (ka, _), (kb, _) = axes
    home = {ka: truth[ka], kb: 0.0 if valley else truth[kb]}   # the truth on the grid (valley: offset 0)
    (ka, va), (kb, vb) = [(k, sorted(set(values) | {home[k]})) for k, values in axes]
    grid, apart = np.zeros((len(va), len(vb))), np.zeros((len(va), len(vb)))
    near = 0
    for a, x in enumerate(va):
        for b, y in enumerate(vb):
            values, tiers, levels = [], [], []
            for item in items:
                render = bench.render(at(item, placed(x, y)))
                levels.append(_rms(render, answers[item]))
                c = bench.score(render, str(previews[item]))
                tiers.append(c.tier)
                if score == "bins":
                    values.append(bins_db(render, stored[item]))
                else:
                    values.append(EXACT_DB if c.metrics["psnr"] == "inf" else float(c.metrics["psnr"]))
            grid[a, b] = float(np.mean(values))   # EXACT_DB only where every item is exact
            apart[a, b] = float(np.mean(levels))
            near += all(t in ("EXACT", "NEAR") for t in tiers)
    truth_at = (va.index(home[ka]), vb.index(home[kb]))
    others = grid.copy()
    others[truth_at] = -np.inf
    jpeg = float(np.mean([_rms(np.asarray(Image.open(previews[i]).convert("RGB")), answers[i]) for i in items]))
    maxima = local_maxima(grid)
    summits = [m for m in maxima if m != truth_at]
    reached = sum(best_first_renders(grid, m, BEST_FIRST_BUDGET) is not None for m in summits)
    return {"knobs": [ka, kb], "axes": [va, vb], "grid": grid, "truth": truth_at, "near": near,
            "best_first": f"{reached}/{len(summits)}", "maxima": len(maxima), "basin": basin_size(grid, truth_at),
            "rival": float(others.max()), "nbr": max(float(grid[p]) for p in _neighbours(grid, *truth_at)),
            "lifted": lifted(grid, truth_at), "apart": float(apart[others > -np.inf].min()),
            "apart_max": float(apart[others > -np.inf].max()), "funnel": funnel(apart, truth_at), "jpeg": jpeg,
            "apart_grid": apart, "valley": valley}


def funnel(apart: np.ndarray, truth: tuple[int, int]) -> float:
    """Spearman's rank correlation, over the grid's points but the answer, between the grid distance from the
    answer (in grid steps) and the render distance from the answer's render (`apart`)."""
    i, j = np.indices(apart.shape)
    mask = (i != truth[0]) | (j != truth[1])
    x, y = np.hypot(i - truth[0], j - truth[1])[mask], apart[mask]
    rx, ry = _ranks(x) - (len(x) - 1) / 2, _ranks(y) - (len(y) - 1) / 2
    spread = float(np.sqrt((rx @ rx) * (ry @ ry)))
    return float(rx @ ry) / spread if spread > 0 else 0.0   # every distance alike: nothing to correlate


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    """RMS difference of two images, in grey levels."""
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def lifted(grid: np.ndarray, truth: tuple[int, int]) -> int:
    """Points other than the answer scoring LIFT_DB above the grid's median: where the preview still tells a
    search it is close. Elsewhere the score is the level of another picture, and no direction is better."""
    others = grid.copy()
    others[truth] = -np.inf
    return int((others >= float(np.median(grid)) + LIFT_DB).sum())


def _ranks(v: np.ndarray) -> np.ndarray:
    """0-based ranks of `v`, ties sharing their mean rank."""
    values, inverse = np.unique(v, return_inverse=True)
    first = np.concatenate([[0], np.cumsum(np.bincount(inverse))[:-1]])
    return (first + (np.bincount(inverse) - 1) / 2)[inverse].astype(float)


def print_table(land: dict) -> None:
    (ka, kb), (va, vb) = land["knobs"], land["axes"]
    kb = "valley+" if land["valley"] else kb
    label = f"{ka}\\{kb} "
    width = max(12, len(label))
    print(label.rjust(width) + " ".join(f"{y:5g}" for y in vb) + "  | grey levels from the answer's render")
    for a, (x, row) in enumerate(zip(va, land["grid"])):
        print(f"{x:{width - 1}g} " + " ".join("exact" if v >= EXACT_DB else f"{v:5.1f}" for v in row) + "  | "
              + " ".join("    -" if (a, b) == tuple(land["truth"]) else f"{d:5.2f}"
                         for b, d in enumerate(land["apart_grid"][a])))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--knobs", default="steps,schedule", choices=sorted(PAIRS),
                    help="the two knobs of the grid (default: steps and the static shift, a window around the truth; "
                         "guidance,lora_scale: the whole range the recovery benchmark draws from)")
    ap.add_argument("--draws", type=int, default=0, help="cases drawn at random (held-out models)")
    ap.add_argument("--seed", type=int, default=None, help="draws the models and cases (default: random, printed)")
    ap.add_argument("--model", type=int, default=None, help="one model seed (with --truth)")
    ap.add_argument("--truth", default=None, metavar="A,B",
                    help="the two knobs' true values for --model (default: 30,3.2 or 2.7,0.84)")
    ap.add_argument("--item", default="0", metavar="I[,J..]",
                    help="which of the three prompts (0-2); several: their scores averaged at every grid point")
    ap.add_argument("--score", default="psnr", choices=["psnr", "bins"],
                    help="psnr: the comparison's (default); bins: how closely each render lands in the preview's "
                         "own JPEG bins (no JPEG error: parity.compare.dct)")
    ap.add_argument("--window", default=None, metavar="A,B",
                    help="steps and shift either side of the truth (default 3,0.3); the whole range for "
                         "guidance,lora_scale")
    ap.add_argument("--spacing", default=None, metavar="A,B",
                    help="the grid's spacing per knob (default: the search's grid, 1,0.05; 0.5,0.1 for "
                         "guidance,lora_scale)")
    ap.add_argument("--valley", action="store_true",
                    help="steps,schedule: the shift window follows the valley through the answer (offsets from "
                         "its shift at each steps value)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--table", action="store_true", help="print every case's grid of scores")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="write every case's grid there (truth: its index in the grid; axes: the knobs' values, "
                         "with --valley the shift's offsets from the valley; apart_grid: grey levels from the "
                         "answer's render)")
    smoke_option(ap)
    args = smoke(ap.parse_args(argv), model=101, draws=0, size=32, window="1,0.05", table=True, item="0,1",
                 score="bins", valley=True)
    pair = PAIRS[args.knobs]
    try:
        truth_values = _pair_floats(args.truth or pair["truth"], "--truth")
        spacing = _pair_floats(args.spacing or pair["spacing"], "--spacing")
        given = args.window or pair["window"]   # none: the whole drawn range
        window = _pair_floats(given, "--window") if given else None
    except ValueError as e:
        ap.error(str(e))
    try:
        items = sorted({int(x) for x in args.item.split(",")})
    except ValueError:
        items = []
    if not items or min(items) < 0 or max(items) > 2:
        ap.error(f"--item takes prompt numbers 0-2, e.g. 0 or 0,1 (got {args.item!r})")
    if min(spacing) <= 0 or (window is not None and min(window) < 0) or min(truth_values) <= 0:
        ap.error("--truth and --spacing must be > 0, --window >= 0")
    if args.valley and (args.knobs != "steps,schedule" or window is None):
        ap.error("--valley needs the steps,schedule window")
    pin_threads()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10 ** 6)
    rng = random.Random(seed)
    pair_knobs = args.knobs.split(",")
    if args.draws:
        cases = [(rng.randrange(1000, 10000), {k: draw_value(rng, k, 1.58) for k in pair_knobs}) for _ in range(args.draws)]
    else:
        cases = [(args.model if args.model is not None else 101, dict(zip(pair_knobs, truth_values)))]
    work = Path(tempfile.mkdtemp(prefix="parity-landscape-"))
    extent = (f"window +-{window[0]:g} x +-{window[1]:g}" if window is not None else "the drawn ranges") \
        + f", spacing {spacing[0]:g} x {spacing[1]:g}"
    print(f"seed {seed}; {args.size} px; {args.knobs}: {extent}; the other knobs as recorded; "
          f"item {','.join(map(str, items))}; score {args.score}", flush=True)
    print(f"{'model':>5s} {'truth':>12s} {'points':>6s} {'maxima':>6s} {'basin':>5s} {'rival':>6s} {'nbr':>6s} "
          f"{'near':>5s} {f'bf{BEST_FIRST_BUDGET}':>6s} {'lifted':>6s} {'apart':>11s} {'funnel':>6s} {'jpeg':>5s}")
    saved = []
    for model, truth in cases:
        centre = {**truth, "schedule": 0.0} if args.valley else truth   # valley: offsets from its shift
        axes = [(k, axis_around(k, centre[k], window[n], spacing[n]) if window is not None
                 else axis_over_range(k, spacing[n])) for n, k in enumerate(pair_knobs)]
        land = landscape(Bench(work, model, args.size), items, truth, axes, work, args.score, args.valley)
        shown = " + ".join(f"{v:g}" for v in truth.values())
        print(f"{model:5d} {shown:>12s} {land['grid'].size:6d} {land['maxima']:6d} {land['basin']:5d} "
              f"{land['rival']:6.1f} {land['nbr']:6.1f} {land['near']:5d} {land['best_first']:>6s} "
              f"{land['lifted']:6d} {land['apart']:5.2f}-{land['apart_max']:<5.2f} {land['funnel']:6.2f} "
              f"{land['jpeg']:5.2f}", flush=True)
        if args.table:
            print_table(land)
        if args.json:
            saved.append({"model": model, "values": list(truth.values()), "size": args.size, "item": items,
                          "score": args.score,
                          **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in land.items()}})
            Path(args.json).write_text(json.dumps(saved))
        if land["grid"][land["truth"]] < EXACT_DB:
            print(f"error: the truth's own render does not reproduce its preview ({model}, {shown})")
            return 1
    return 0


def _pair_floats(text: str, option: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        values = tuple(float(x) for x in parts)
    except ValueError:
        values = ()
    if len(values) != 2:
        raise ValueError(f"{option} takes two numbers, A,B (got {text!r})")
    return values


if __name__ == "__main__":
    sys.exit(main())
