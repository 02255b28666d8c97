"""`parity report`: rebuild the HTML report, JUnit XML and markdown summary from results alone (no torch, no
GPU), or merge shard results into one report."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from parity.errors import ParityError
from parity.options import ReportOptions

HELP = "build the HTML report, JUnit XML and markdown summary from results.json (or merge shards)"
EXAMPLES = """
  parity report reports/run1/results.json                 # rebuild reports/run1/index.html, junit.xml, summary.md
  parity report reports/run1/results.json --out /tmp/r1   # write the report elsewhere (links are rebased)
  parity report merge shard0/results.json shard1/results.json --out reports/merged
  parity report reports/run1 --strict                     # exit 1 when an item is below its gate
  parity report reports/run1 --report-url https://ci.example.com/artifacts/run1   # absolute links in summary.md
  parity report merge shard*/results.json --out merged --github --report-url https://ci.example.com/run1
                                                          # + pr-comment.md, commit-status.json (docs/ci.md)
exit codes: 0 written (merge: and every item meets its gate), 1 merge or --strict: an item is below its gate,
2 bad input or usage
"""
log = logging.getLogger("parity.report")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="RESULTS",
                   help="results.json, results.jsonl or a run directory; or `merge A B ...` to merge shards")
    p.add_argument("--out", type=Path, default=None,
                   help="report directory (default: the directory of RESULTS; required for merge)")
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--thumb-size", type=int, default=176, help="thumbnail longest side in pixels (default 176)")
    p.add_argument("--thumb-budget", type=float, default=1.5, metavar="SECONDS",
                   help="start no new thumbnail this long after the report began (they are made on worker threads "
                        "while the images are copied and the other files written; worst items get theirs first; "
                        "the rest lazy-load full images; a rebuild continues); 0 = no limit (default 1.5)")
    p.add_argument("--no-thumbnails", action="store_true", help="link full images instead of making thumbnails")
    add_report_arguments(p)
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when an item is below its gate or the run is incomplete")


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """Where the report's images live and where it will be hosted (shared with `parity run` / `parity diff`)."""
    img = p.add_mutually_exclusive_group()
    img.add_argument("--copy-images", dest="link_images", action="store_false", default=False,
                     help="copy the images shown into the report folder, so it can be zipped and moved (default)")
    img.add_argument("--link-images", dest="link_images", action="store_true", default=False,
                     help="keep linking the original previews by absolute path instead of copying them (huge "
                          "runs; the report then works only where the originals are)")
    p.add_argument("--report-url", default=None, metavar="BASE",
                   help="address the report folder will be served from: summary.md and junit.xml link there "
                        "(absolute links, e.g. for a CI job summary) instead of to index.html beside them")
    p.add_argument("--github", action="store_true",
                   help="also write pr-comment.md (a PR comment body with a marker, edited in place by the "
                        "workflow) and commit-status.json, and append the comment to $GITHUB_STEP_SUMMARY when "
                        "set; parity posts nothing itself (docs/ci.md)")


def report_options(args: argparse.Namespace) -> ReportOptions:
    """The flags of add_report_arguments as the report's options."""
    return ReportOptions(link_images=args.link_images, report_url=args.report_url, github=args.github)


def write_github(options: ReportOptions, results: Any, out: Path) -> None:
    """`--github`: the PR comment, commit status and step summary beside the report (docs/ci.md)."""
    if not options.github:
        return
    from parity.report.github import write_github_outputs

    gh = write_github_outputs(results, out, report_url=options.report_url)
    lines = [gh.comment, gh.status] + ([f"appended to {gh.step_summary}"] if gh.step_summary else [])
    print("\n".join(f"  {line}" for line in lines))


def run(args: argparse.Namespace) -> int:
    from parity.report import load, merge, write_report

    t0 = time.perf_counter()
    options = report_options(args)
    inputs = list(args.inputs)
    merging = inputs[0] == "merge" and not Path("merge").exists()
    if merging:
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
                         copy_images=not options.link_images, report_url=options.report_url)
    n = len(results.items)
    failed = sum(1 for it in results.items if not it.get("passed"))
    state = "" if results.complete else " (run incomplete)"
    print(f"{n - failed}/{n} items meet their gate{state}; report in {time.perf_counter() - t0:.1f} s")
    print(f"  {paths.index}\n  {paths.junit}\n  {paths.markdown}")
    write_github(options, results, paths.dir)
    if args.strict and (failed or not results.complete):
        return 1
    if merging and failed:
        return 1  # a merged CI run is judged like the shards were
    return 0
