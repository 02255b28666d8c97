"""`parity report`: rebuild the HTML report, JUnit XML and markdown summary from results alone (no torch, no
GPU), or merge shard results into one report."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from parity.errors import ParityError

HELP = "build the HTML report, JUnit XML and markdown summary from results.json (or merge shards)"
EXAMPLES = """
  parity report reports/run1/results.json                 # rebuild reports/run1/index.html, junit.xml, summary.md
  parity report reports/run1/results.json --out /tmp/r1   # write the report elsewhere (links are rebased)
  parity report merge shard0/results.json shard1/results.json --out reports/merged
  parity report reports/run1 --strict                     # exit 1 when an item is below its gate
"""
log = logging.getLogger("parity.report")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="RESULTS",
                   help="results.json, results.jsonl or a run directory; or `merge A B ...` to merge shards")
    p.add_argument("--out", type=Path, default=None,
                   help="report directory (default: the directory of RESULTS; required for merge)")
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--thumb-size", type=int, default=176, help="thumbnail longest side in pixels (default 176)")
    p.add_argument("--thumb-budget", type=float, default=4.0, metavar="SECONDS",
                   help="stop making new thumbnails after this long (worst items get theirs first; the rest "
                        "lazy-load full images; a rebuild continues); 0 = no limit (default 4)")
    p.add_argument("--no-thumbnails", action="store_true", help="link full images instead of making thumbnails")
    p.add_argument("--copy-images", action="store_true",
                   help="copy images from outside --out into it, so the report directory can be zipped and moved")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when an item is below its gate or the run is incomplete")


def run(args: argparse.Namespace) -> int:
    from parity.report import load, merge, write_report

    t0 = time.perf_counter()
    inputs = list(args.inputs)
    if inputs[0] == "merge" and not Path("merge").exists():
        shards = inputs[1:]
        if not shards:
            raise ParityError("`parity report merge` needs at least one results file")
        if args.out is None:
            raise ParityError("`parity report merge` needs --out DIR")
        results = merge([load(p) for p in shards])
        out = args.out
    else:
        if len(inputs) != 1:
            raise ParityError("give one results file (use `parity report merge A B ... --out DIR` for several)")
        src = Path(inputs[0])
        results = load(src)
        out = args.out if args.out is not None else (src if src.is_dir() else src.parent)
    if not 16 <= args.thumb_size <= 1024:
        raise ParityError(f"--thumb-size {args.thumb_size} is outside 16..1024")
    for w in results.warnings:
        log.warning("%s", w)
    paths = write_report(results, out, thumbnails=not args.no_thumbnails, thumb_size=args.thumb_size,
                         thumb_budget_s=args.thumb_budget or None, title=args.title,
                         copy_images=args.copy_images)
    n = len(results.items)
    failed = sum(1 for it in results.items if not it.get("passed"))
    state = "" if results.complete else " (run incomplete)"
    print(f"{n - failed}/{n} items meet their gate{state}; report in {time.perf_counter() - t0:.1f} s")
    print(f"  {paths.index}\n  {paths.junit}\n  {paths.markdown}")
    if args.strict and (failed or not results.complete):
        return 1
    return 0
