"""Issue 17 (second part): nothing is mixed up between items, runs or settings. Colliding item names get distinct
files; a second run on one --out is refused while the first holds it; --resume refuses other settings; `parity
report` validates results.json before writing anything; control codes in prompts are escaped by `parity plan`;
a bad --lora is a usage error before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_reliability import STEP, assert_clean, cli, good_job, load_results, write_case  # noqa: F401 - fixture


def test_item_file_names_are_distinct_for_ids_safe_name_folds():
    from parity.run import item_file_name, safe_name

    ids = ["demo x[step200-p0]", "demo_x[step200-p0]", "demo/x[step200-p0]", "demo:x[step200-p0]"]
    assert len({safe_name(i) for i in ids}) == 1  # the collision the hash is there for
    names = [item_file_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert all("/" not in n and len(n) <= 120 for n in names)
    assert item_file_name(ids[0]) == item_file_name(ids[0])  # stable across runs (resume finds its renders)


def test_cases_whose_names_collide_keep_their_own_renders(capsys, tmp_path, good_job, tiny_model_dir):
    """Two cases, `demo x` and `demo_x`, same job: each item's render and heatmaps are its own files."""
    cases = tmp_path / "cases"
    for fname, name in (("a", "demo x"), ("b", "demo_x")):
        write_case(cases, fname, {"name": name, "job": str(good_job), "base_model": str(tiny_model_dir),
                                  "steps": STEP})
    out = tmp_path / "out"
    rc, so, se = cli(capsys, "run", cases, "--out", out, "--no-attribution", "-q")
    assert_clean(so, se)
    items = load_results(out).items
    assert len(items) == 2 * 3
    renders = [it["paths"]["render"] for it in items]
    heatmaps = [v for it in items for k, v in it["paths"].items() if k.startswith("heatmap_")]
    assert len(set(renders)) == len(renders)
    assert len(set(heatmaps)) == len(heatmaps)
    assert len(list((out / "renders").glob("*.png"))) == len(items)
