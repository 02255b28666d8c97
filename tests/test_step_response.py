"""benchmarks/step_response.py's measures of how renders change with the step count, on sequences worked out by
hand. The benchmark itself runs in tests/test_benchmarks_smoke.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def step_response(request):
    sys.path.insert(0, str(BENCHMARKS))   # it imports _common, as when run as a script
    request.addfinalizer(lambda: sys.path.remove(str(BENCHMARKS)))
    spec = importlib.util.spec_from_file_location("step_response_benchmark", BENCHMARKS / "step_response.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def renders(value, steps: list[int]) -> dict[int, np.ndarray]:
    field = np.linspace(0.0, 1.0, 48).reshape(4, 4, 3)
    return {n: 100.0 + value(n) * field for n in steps}


def test_a_smooth_one_over_n_convergence(step_response):
    """r(N) = L + E/N: N and N+2 lie 2(N+1)/(N+2) times as far apart as N and N+1 (1.91 at N = 20, 1.95 at 40),
    and N x |r(N) - r(F)| / (1 - N/F) = |E| at every N."""
    images = renders(lambda n: 300.0 / n, [*range(20, 43), 100])
    r = step_response.response(images, 100)
    assert 1.91 <= r["ratio"] <= 1.95
    assert r["conv_spread"] == pytest.approx(0.0, abs=1e-12)
    assert r["conv_mean"] == pytest.approx(300.0 * np.sqrt((np.linspace(0.0, 1.0, 48) ** 2).mean()))


def test_even_and_odd_step_counts_in_two_families(step_response):
    """A render that jumps between even and odd step counts (as model 4206's do) puts N + 2 nearer than N + 1."""
    images = renders(lambda n: 300.0 / n + 5.0 * (-1) ** n, [*range(20, 43), 100])
    r = step_response.response(images, 100)
    assert r["ratio"] < 0.2
    assert r["conv_spread"] > 0.3


@pytest.mark.parametrize("option, value", [("--steps", "abc"), ("--steps", "40:20"), ("--steps", "20:99"),
                                           ("--shifts", "x"), ("--shifts", "1.0:1.05"), ("--shifts", "0:1"),
                                           ("--shifts", "2:1")])
def test_a_bad_sweep_is_one_line_and_exit_2(step_response, option, value, capsys):
    with pytest.raises(SystemExit) as e:
        step_response.main([option, value])
    assert e.value.code == 2
    assert option in capsys.readouterr().err


def test_a_sweep_of_a_smooth_knob_and_of_a_jagged_one(step_response):
    """Renders moving linearly with the shift lie twice as far apart two grid steps away; renders that jump by
    a fixed amount up and down with each grid step (the tiny model's schedule response) lie nearer."""
    field = np.linspace(0.0, 1.0, 48).reshape(4, 4, 3)
    smooth = step_response.sweep([100.0 + 8.0 * k * field for k in range(11)])
    assert smooth["ratio"] == pytest.approx(2.0)
    jagged = step_response.sweep([100.0 + (k + 6.0 * (-1) ** k) * field for k in range(11)])
    assert jagged["ratio"] < 0.5


def test_the_shift_sweep_is_one_grid_step_apart(step_response):
    import argparse

    assert step_response.shift_values(argparse.ArgumentParser(), "1.0:1.2") == [1.0, 1.05, 1.1, 1.15, 1.2]
    assert step_response.shift_values(argparse.ArgumentParser(), "") == []


def test_a_missing_model_folder_is_one_line_and_exit_2(step_response, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert step_response.main(["--model-dir", str(missing), "--steps", "4:5", "--finest", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and len(err.splitlines()) == 1
