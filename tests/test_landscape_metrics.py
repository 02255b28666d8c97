"""benchmarks/landscape.py's measures of a score landscape (how many local maxima, the answer's basin), on grids
small enough to work out by hand. The benchmark itself runs in tests/test_benchmarks_smoke.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def landscape(request):
    sys.path.insert(0, str(BENCHMARKS))   # it imports _common and recovery, as when run as a script
    request.addfinalizer(lambda: sys.path.remove(str(BENCHMARKS)))
    spec = importlib.util.spec_from_file_location("landscape_benchmark", BENCHMARKS / "landscape.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_one_smooth_hill_is_one_basin(landscape):
    grid = np.array([[1.0, 2.0, 1.0],
                     [2.0, 9.0, 2.0],
                     [1.0, 2.0, 1.0]])
    assert landscape.local_maxima(grid) == [(1, 1)]
    assert landscape.basin_size(grid, (1, 1)) == 9


def test_a_rival_summit_takes_the_points_that_climb_to_it(landscape):
    # the answer (0, 0) and a false summit (2, 3); ascent from (1, 2) goes to its best neighbour (2, 3) at 7,
    # from (1, 1) to (0, 0) at 9 (diagonal neighbours count)
    grid = np.array([[9.0, 3.0, 2.0, 1.0],
                     [4.0, 5.0, 6.0, 2.0],
                     [1.0, 2.0, 3.0, 7.0]])
    assert sorted(landscape.local_maxima(grid)) == [(0, 0), (2, 3)]
    assert landscape.ascent_end(grid, 1, 2) == (2, 3)
    assert landscape.ascent_end(grid, 1, 1) == (0, 0)
    # to (0, 0): itself, (0, 1), (1, 0), (1, 1) and (2, 0) (via (1, 1)); (2, 1)'s best neighbour is (1, 2) at 6,
    # which climbs to (2, 3), as do (0, 2), (0, 3), (1, 3) and (2, 2)
    assert landscape.basin_size(grid, (0, 0)) == 5
    assert landscape.basin_size(grid, (2, 3)) == 7


def test_best_first_from_the_false_summit_renders_the_answer_on_its_tenth_render(landscape):
    # the grid above, from (2, 3): its neighbours (1, 3), (2, 2), (1, 2): none beats 7 (3 renders); then (1, 2),
    # the best with neighbours left: (0, 2), (1, 1), (0, 1), (0, 3), (2, 1), none beats 6 (8); then (1, 1): (1, 0),
    # then its diagonal (0, 0), the answer (10)
    grid = np.array([[9.0, 3.0, 2.0, 1.0],
                     [4.0, 5.0, 6.0, 2.0],
                     [1.0, 2.0, 3.0, 7.0]])
    assert landscape.best_first_renders(grid, (2, 3), 30) == 10
    assert landscape.best_first_renders(grid, (2, 3), 9) is None


def test_lifted_counts_the_points_well_above_the_level_of_another_picture(landscape):
    # median 13 (the flat level of other pictures); 16 and 17 are 3 dB or more above it, 15.9 is not, and the
    # answer (1000, identical) is not counted
    grid = np.array([[13.0, 12.0, 13.0, 14.0],
                     [12.5, 16.0, 1000.0, 17.0],
                     [13.0, 15.9, 13.0, 12.0]])
    assert float(np.median(grid)) == 13.0
    assert landscape.lifted(grid, (1, 2)) == 2


def test_the_axes_of_a_whole_range_grid_and_of_a_window(landscape):
    assert landscape.axis_over_range("guidance", 0.5) == [1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0,
                                                          7.5, 8.0]
    assert landscape.axis_over_range("lora_scale", 0.1)[:3] == [0.3, 0.4, 0.5]
    assert landscape.axis_around("steps", 2, 3, 1) == [1, 2, 3, 4, 5]        # no steps below 1
    assert landscape.axis_around("schedule", 3.2, 0.1, 0.05) == [3.1, 3.15, 3.2, 3.25, 3.3]


def test_funnel_is_one_where_renders_close_in_on_the_answer_and_about_zero_where_they_do_not(landscape):
    # render distances growing with the grid distance from the answer (1, 2): a perfect funnel; the same
    # distances shuffled over the grid: no funnel (Spearman's rank correlation, worked out below)
    i, j = np.indices((3, 5))
    grid_distance = np.hypot(i - 1, j - 2)
    assert landscape.funnel(0.1 + grid_distance, (1, 2)) == pytest.approx(1.0)
    assert landscape.funnel(10.0 - grid_distance, (1, 2)) == pytest.approx(-1.0)
    # one row apart everywhere at the same level, the other rows flat too: every distance tied, no correlation
    assert landscape.funnel(np.full((3, 5), 0.4), (1, 2)) == pytest.approx(0.0)


def test_ranks_share_ties(landscape):
    ranks = landscape._ranks(np.array([3.0, 1.0, 1.0, 2.0, 5.0, 5.0, 5.0]))
    assert ranks.tolist() == [3.0, 0.5, 0.5, 2.0, 5.0, 5.0, 5.0]


def test_valley_shift_follows_the_power_law_on_the_search_grid(landscape):
    from parity.diagnose.fit import VALLEY_POWER

    assert VALLEY_POWER == 1.25   # the worked numbers below use it
    truth = {"steps": 16, "schedule": 1.95}
    assert landscape.valley_shift(truth, 16) == 1.95
    assert landscape.valley_shift(truth, 20) == 2.6    # 1.95 x 1.25^1.25 = 2.578 -> 2.6 on the 0.05 grid
    assert landscape.valley_shift(truth, 12) == 1.35   # 1.95 x 0.75^1.25 = 1.365 -> 1.35
