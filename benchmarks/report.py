"""Benchmark: `parity report` on a results.json of 2,000 synthetic items (target < 10 s) and the time to the
first screen of the HTML in headless Chromium (target < 2 s). Prints the numbers; not a timed test.

    .venv/bin/python benchmarks/report.py [--items 2000] [--image-size 256] [--keep DIR]

The synthetic run (generated first, not timed) has one JPEG preview, one PNG render and one PNG heatmap per item
(ERROR items have no render), `--image-size` pixels square; `--keep DIR` reuses DIR/run if it exists.
`parity report` is timed cold with the default thumbnail budget, without thumbnails, cold with every thumbnail
made, and warm (thumbnails cached, the usual case when a report is rebuilt).

Each figure is the median of `--runs` runs (default 3; the machine is shared), every cold run in an emptied report
folder. `--smoke` is a seconds-long run on 20 items (tests/test_benchmarks_smoke.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import smoke, smoke_option  # noqa: E402


CPU_S: dict[int, float] = {}  # id of a timing -> the child's user + sys seconds (the load on a shared box is in wall)


def time_cli(results: Path, out: Path, *extra: str) -> float:
    """Wall seconds of one `parity report` in a fresh interpreter with torch made unimportable, as a user's would
    run; its CPU seconds (user + sys, from the child's rusage) are kept in CPU_S."""
    import resource

    code = ("import sys; sys.modules['torch'] = None; from parity.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, "report", str(results), "--out", str(out), *extra],
                       capture_output=True, text=True, cwd=out.parent)  # not the checkout: PYTHONPATH decides
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"parity report failed:\n{r.stderr}")
    CPU_S[id(dt)] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dt


def runs_of(n: int, fn, out: Path, fresh: bool = True) -> tuple[list[float], int]:
    """`n` timings of `fn`, each after deleting the report folder `out` when `fresh` (a cold report: empty thumbnail
    cache, nothing copied yet), and the number of thumbnails the last run left in it."""
    times = []
    for _ in range(n):
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        times.append(fn())
    thumbs = out / "thumbs"
    return times, len(list(thumbs.iterdir())) if thumbs.is_dir() else 0


def said(times: list[float]) -> str:
    cpu = [CPU_S[id(t)] for t in times]
    return (f"median {statistics.median(times):.2f} s wall of {len(times)} ({', '.join(f'{t:.2f}' for t in times)}), "
            f"CPU (user + sys) median {statistics.median(cpu):.2f} s")


def first_screen(index: Path, runs: int = 3) -> list[dict[str, float]] | None:
    if not (Path("/usr/bin/chromium").exists() and (shutil.which("chromedriver") or Path("/usr/bin/chromedriver").exists())):
        print("first screen: skipped (no /usr/bin/chromium + chromedriver)")
        return None
    sys.path.insert(0, str(ROOT / "tests"))
    import pytest  # noqa: F401  (test_report_browser uses pytest.skip)
    from test_report_browser import chromium_driver

    out = []
    drv = chromium_driver()
    try:
        for _ in range(runs):
            drv.get("about:blank")
            t0 = time.perf_counter()
            drv.get(index.as_uri())  # returns after the load event
            # first screen = script ready, the first cards built and their visible thumbnails decoded
            while not drv.execute_script(
                "var b = document.body; if (!b || b.dataset.ready !== '1') return false;"
                "var imgs = [...document.querySelectorAll('#cards img')].filter(i => i.getBoundingClientRect().top < innerHeight);"
                "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"):
                time.sleep(0.01)
            wall = time.perf_counter() - t0
            nav = drv.execute_script(
                "var n = performance.getEntriesByType('navigation')[0];"
                "var fcp = performance.getEntriesByName('first-contentful-paint')[0];"
                "return {ready: +document.body.dataset.readyMs, fcp: fcp ? fcp.startTime : null,"
                " load: n ? n.loadEventEnd : null, cards: document.querySelectorAll('#cards article').length};")
            out.append({"wall_s": wall, "script_ready_ms": nav["ready"], "fcp_ms": nav["fcp"],
                        "load_ms": nav["load"], "cards_built": nav["cards"]})
    finally:
        drv.quit()
        shutil.rmtree(drv._parity_profile, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--keep", type=Path, default=None, help="work in DIR and keep it")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (the median is the figure)")
    smoke_option(ap)  # 20 small items, one run each, no browser
    args = smoke(ap.parse_args(), items=20, image_size=32, runs=1)
    from parity.report import synthetic_results

    work = args.keep or Path(tempfile.mkdtemp(prefix="parity-bench-report-"))
    try:
        t0 = time.perf_counter()
        results = work / "run" / "results.json"
        if results.exists():
            print(f"synthetic run: reusing {results}")
        else:
            results = synthetic_results(args.items, work / "run", image_size=args.image_size)
            print(f"synthetic run: {args.items} items, {args.image_size}px images, "
                  f"{time.perf_counter() - t0:.1f} s (not timed)")
        out = work / "report"
        cold, n_cold = runs_of(args.runs, lambda: time_cli(results, out), out)
        print(f"parity report, cold, default thumbnail budget ({n_cold} thumbnails made): {said(cold)}"
              "   (target <= 3 s)")
        nothumb, _ = runs_of(args.runs, lambda: time_cli(results, out, "--no-thumbnails"), out)
        print(f"parity report --no-thumbnails: {said(nothumb)}")
        full, n_full = runs_of(args.runs, lambda: time_cli(results, out, "--thumb-budget", "0"), out)
        print(f"parity report, cold, no budget (all {n_full} thumbnails): {said(full)}")
        warm, _ = runs_of(args.runs, lambda: time_cli(results, out), out, fresh=False)
        print(f"parity report, warm (images copied, all thumbnails cached): {said(warm)}")
        cpu = {k: statistics.median(CPU_S[id(t)] for t in v)
               for k, v in (("cold", cold), ("no_thumbs", nothumb), ("all_thumbs", full), ("warm", warm))}
        cold, nothumb, full, warm = (statistics.median(x) for x in (cold, nothumb, full, warm))
        size = (out / "index.html").stat().st_size
        print(f"index.html: {size / 1e6:.1f} MB, cpu count {os.cpu_count()}, load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        fs = None if args.smoke else first_screen(out / "index.html")
        if fs:
            for r in fs:
                print(f"first screen in headless Chromium: {r['wall_s']:.2f} s wall (script ready at "
                      f"{r['script_ready_ms']:.0f} ms, first contentful paint {r['fcp_ms'] or 0:.0f} ms, "
                      f"{r['cards_built']} cards built)   (target < 2 s)")
        print("RESULT " + json.dumps({"benchmark": "report", "items": args.items, "runs": args.runs,
                                      "report_cold_s": cold, "report_no_thumbs_s": nothumb,
                                      "report_all_thumbs_s": full, "report_warm_s": warm, "cpu_s": cpu,
                                      "load_average": os.getloadavg(),
                                      "first_screen_s": min(r["wall_s"] for r in fs) if fs else None}))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
