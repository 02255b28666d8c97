"""Benchmarks that cannot rot (issue 34): every `benchmarks/*.py` (but the `_`-prefixed helpers) has a seconds-long
`--smoke` mode (benchmarks/_common.py `smoke_option`), and the suite runs each one, so a renamed file or a changed
signature breaks a test instead of the next `make bench`. A new benchmark is picked up by this convention alone;
one without `--smoke` fails here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def test_every_benchmark_has_a_smoke_mode():
    assert len(BENCHMARKS) >= 10, BENCHMARKS
    missing = [p.name for p in BENCHMARKS if "smoke_option(" not in p.read_text() and '"--smoke"' not in p.read_text()]
    assert not missing, f"benchmarks without a --smoke mode (benchmarks/_common.py smoke_option): {missing}"


def _env() -> dict:
    from aitk_oracle import ORACLE

    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "PARITY_ORACLE": str(ORACLE)}


@pytest.fixture(scope="module")
def demo():
    from parity.demo import build_demo

    return build_demo(ROOT / "demo")


@pytest.mark.slow
@pytest.mark.parametrize("script", [p.name for p in BENCHMARKS])
def test_benchmark_smoke_run(script, demo):
    # run, and checked field by field, where their subject is tested (not twice)
    elsewhere = {"gpu_flux2.py": "tests/test_structural.py::test_gpu_benchmark_runs_tiny_on_cpu (its --tiny mode)",
                 "recovery.py": "tests/test_parameter_recovery.py::test_the_recovery_benchmark_smoke_mode"}
    if script in elsewhere:
        pytest.skip(f"{script} --smoke runs in {elsewhere[script]}")
    if script == "mutation.py":
        from aitk_oracle import ORACLE

        if not (ORACLE / "README.md").is_file():
            pytest.skip(f"mutation.py needs the AI Toolkit oracle at {ORACLE} (set PARITY_ORACLE)")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"benchmarks/{script} --smoke exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    if script == "overhead.py":  # the harness-overhead ratio is printed again (it crashed on renamed renders)
        result = json.loads(re.search(r"^RESULT (.*)$", r.stdout, re.M).group(1))
        assert result["modes"]["warm"]["ratio"] > 0, result
        assert re.search(r"^warm\s+[\d.]+\s+[\d.]+\s+[\d.]+", r.stdout, re.M), r.stdout
