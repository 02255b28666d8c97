"""Shared by the benchmark scripts: one torch thread, best-of-N timing, peak memory, the demo job's items.

Every benchmark times its two sides in the same process, interleaved (A, B, A, B, ...), and keeps the best of N
per side: the machine is shared, and the minimum is the least noisy estimate of the work itself.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def smoke_option(ap: argparse.ArgumentParser) -> None:
    """`--smoke`: every benchmark has one (tests/test_benchmarks_smoke.py runs each and fails for a benchmark
    without): a seconds-long run through the same code with the smallest sizes, so a benchmark cannot rot unseen.
    Its figures mean nothing."""
    ap.add_argument("--smoke", action="store_true",
                    help="a seconds-long run with the smallest sizes, to check the benchmark still works (figures "
                         "meaningless; the test suite runs it)")


def smoke(args: argparse.Namespace, **smallest: Any) -> argparse.Namespace:
    """`args` with the `smallest` values when --smoke was given."""
    if getattr(args, "smoke", False):
        for name, value in smallest.items():
            setattr(args, name, value)
    return args


def pin_threads() -> None:
    """One torch thread: on a shared 2-core box two threads are 10-70x noisier (cpu-stack-notes section 7)."""
    import torch

    torch.set_num_threads(1)
    try:  # diffusers' own loading bars ignore HF_HUB_DISABLE_PROGRESS_BARS
        from diffusers.utils import logging as dlog

        dlog.disable_progress_bar()
    except ImportError:
        pass


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_best(sides: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Run each side once per round, round-robin, `repeat` rounds; return every timing per side."""
    out: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeat):
        for name, fn in sides.items():
            out[name].append(timed(fn))
    return out


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_line() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = "?"
    try:
        import torch

        threads = str(torch.get_num_threads())
    except ImportError:
        pass
    return f"cpu: {cpu}, {os.cpu_count()} cores visible, torch threads {threads}"


def demo_root(arg: str | None) -> Path:
    """The demo folder (built by `parity demo --prepare` / parity.demo.build_demo), built here if missing."""
    from parity.demo import build_demo

    return build_demo(Path(arg) if arg else ROOT / "demo").root


def demo_items(root: Path, steps="all"):
    """The demo job's planned items, as `parity diff demo/output/tiny-portrait --step all` plans them."""
    from parity.cases import Case
    from parity.demo import JOB_NAME
    from parity.run import plan_cases

    job = root / "output" / JOB_NAME
    case = Case(name=JOB_NAME, path=job / "parity-diff.yaml", job=job, config=None)
    items, errors = plan_cases([case], steps=steps, base_model=str(root / "tiny-flux2"))
    if errors:
        raise SystemExit(f"planning the demo job failed: {errors[0].message}")
    return case, items


def aitk_shift(width: int, height: int) -> float:
    """AI Toolkit's FLUX.2 schedule as diffusers' static shift (cpu-stack-notes section 7): mu linear in the token
    count from (256, 0.5) to (4096, 1.15), shift = e^mu. Written here from the notes, not taken from parity."""
    import math

    seq_len = (height // 16) * (width // 16)
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (seq_len - 256)
    return math.exp(mu)


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")
