"""The item record (parity.record.ItemRecord) is the one contract between runner, store, report and plugin.

A real tiny-model `parity diff` writes results.json; its items must load as records with no field outside the
record, the schema document must list exactly the record's fields, and the report built from the real file must
carry what static/report.js reads. Each drift found in issue 19 fails here: `variants` written where everything
reads `metric_variants`, a `schedule` only the synthetic report data had, an infinite PSNR stored as null where the
schema says "inf".
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from parity.record import VIEW_FIELDS, ItemRecord, record_fields

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DOC = ROOT / "docs" / "results-schema.md"
REPORT_JS = ROOT / "parity" / "report" / "static" / "report.js"
STEPS = 2


def _strict(text: str):
    """json.loads that refuses NaN/Infinity literals (what a strict parser in another language does)."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def _doc_item_fields() -> set[str]:
    text = SCHEMA_DOC.read_text()
    table = text.split("### `items[]`", 1)[1].split("\n\n", 2)[1]
    names: set[str] = set()
    for line in table.splitlines()[2:]:
        first = line.split("|")[1]
        names.update(re.findall(r"`([a-z][a-z0-9_]*)`", first))
    return names


# ----------------------------------------------------------------------------------------------- static checks
def test_schema_doc_lists_exactly_the_record_fields():
    assert _doc_item_fields() == set(record_fields())


def test_schema_doc_example_items_are_records_without_unknown_fields():
    text = SCHEMA_DOC.read_text()
    example = text.split("```json", 1)[1].split("```", 1)[0]
    doc = _strict(re.sub(r'"sha256:…"', '"sha256:x"', example))
    for item in doc["items"]:
        rec = ItemRecord.from_dict(item)
        assert rec.extra == {}, f"the example has fields the record does not: {sorted(rec.extra)}"


def test_report_js_reads_only_record_fields_the_view_carries():
    js = REPORT_JS.read_text()
    read = set(re.findall(r"\bit\.([a-z][a-z_]*)", js))  # _group, _text...: computed by report.js itself
    computed = {"u", "t", "dims", "score", "texts"}  # added by parity.report.html._view_item (texts: report/texts.py)
    fields = set(record_fields())
    assert read - computed - fields == set(), "report.js reads fields no item record has"
    assert (read & fields) - set(VIEW_FIELDS) == set(), "report.js reads record fields the HTML view leaves out"
    assert set(VIEW_FIELDS) <= fields


def test_record_round_trip_and_validation():
    from parity.errors import InputFileError

    d = {"id": "c[step1-p0]", "tier": "near", "metrics": {"psnr": "inf"}, "variants": {"x": "kept as unknown"},
         "causes": [{"knob": "seed", "value_preview": 1, "value_inference": 2, "ssim_aligned": 0.5}],
         "schedule": {"preview": [1.0, 0.0], "inference": [1.0, 0.5, 0.0], "mu_preview": 0.4}}
    rec = ItemRecord.from_dict(d, default_gate="EXACT")
    assert rec.tier == "NEAR" and rec.gate == "EXACT" and rec.passed is False
    assert rec.metrics["psnr"] == math.inf and rec.causes[0].knob == "seed"
    assert rec.schedule.mu_preview == 0.4 and rec.schedule.mu_inference is None
    assert rec.extra == {"variants": {"x": "kept as unknown"}}
    again = ItemRecord.from_dict(rec.to_dict())
    assert again == rec
    with pytest.raises(InputFileError, match=r"r\.json: item 'x': 'mismatches' should be list"):
        ItemRecord.from_dict({"id": "x", "tier": "EXACT", "mismatches": "seed"}, where="r.json")
    with pytest.raises(InputFileError, match=r"item 'x': schedule.preview should be list"):
        ItemRecord.from_dict({"id": "x", "tier": "EXACT", "schedule": {"preview": 1, "inference": []}})


# ----------------------------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def real_runs(tiny_model_dir, tmp_path_factory):
    """Two real `parity diff` runs of a small job on the tiny model: the previews' own settings (EXACT: identical
    pixels, infinite PSNR) and one more sampling step (the schedules differ)."""
    from parity.cli import main
    from parity.demo import demo_config, write_job

    root = tmp_path_factory.mktemp("record-job")
    cfg = demo_config(root)
    cfg["config"]["process"][0]["sample"].update(width=32, height=32, sample_steps=STEPS, prompts=["a cat"])
    job = write_job(root / "rj", tiny_model_dir, config=cfg, checkpoints={100: 0.5})
    base = ["diff", str(job), "--base-model", str(tiny_model_dir), "--no-attribution", "-q"]
    assert main(base + ["--out", str(root / "same")]) == 0
    assert main(base + ["--out", str(root / "steps"), "--set", f"sample_steps={STEPS + 1}"]) == 1
    return root / "same", root / "steps"


def _raw_items(run_dir: Path) -> list[dict]:
    doc = _strict((run_dir / "results.json").read_text())
    assert doc["items"], "the run wrote no items"
    return doc["items"]


def test_real_results_are_records_with_no_field_outside_the_schema(real_runs):
    for run_dir in real_runs:
        for item in _raw_items(run_dir):
            rec = ItemRecord.from_dict(item, where=run_dir / "results.json")
            assert rec.extra == {}, f"{rec.id}: fields outside the record: {sorted(rec.extra)}"
            assert set(item) <= set(record_fields())
            # the comparison's metric descriptions reach the file under the name the schema and report use
            assert {"ssim", "ssim_y", "psnr", "mae", "max_abs"} <= set(rec.metric_variants), rec.id


def test_real_identical_render_stores_infinite_psnr_as_the_schema_says(real_runs):
    same, _ = real_runs
    for item in _raw_items(same):
        assert item["tier"] == "EXACT" and item["metrics"]["max_abs"] == 0, item["id"]
        assert item["metrics"]["psnr"] == "inf", item["id"]
    from parity.report import load

    assert all(r.metrics["psnr"] == math.inf for r in load(same).records())


def test_real_schedule_matches_what_the_engine_ran(real_runs):
    same, steps = real_runs
    for run_dir, n_inference in ((same, STEPS), (steps, STEPS + 1)):
        for item in _raw_items(run_dir):
            sched = item["schedule"]
            assert len(sched["preview"]) == STEPS + 1 and len(sched["inference"]) == n_inference + 1
            # cross-check against the sigmas the engine actually used (float32), not the knob table
            assert sched["inference"] == pytest.approx(item["render"]["sigmas"], abs=1e-6)
            assert sched["mu_inference"] == pytest.approx(item["render"]["mu"])


def test_report_built_from_a_real_run_carries_what_report_js_reads(real_runs, tmp_path):
    from parity.report import load, write_report
    from parity.report.html import report_json_blob

    _, steps = real_runs
    paths = write_report(load(steps), tmp_path / "report")
    view = report_json_blob(Path(paths.index).read_text())["items"]
    raw = {it["id"]: it for it in _raw_items(steps)}
    assert view and {v["id"] for v in view} == set(raw)
    for v in view:
        assert v["metric_variants"] == raw[v["id"]]["metric_variants"]
        assert v["schedule"]["preview"] != v["schedule"]["inference"]  # the sigma table section has data
        assert v["mismatches"] == ["steps"]


def test_plugin_failure_screen_reads_a_real_record(real_runs):
    from parity.pytest_plugin import failure_screen, junit_properties

    _, steps = real_runs
    rec = ItemRecord.from_dict(_raw_items(steps)[0])
    screen = failure_screen(rec, steps)
    assert f"steps: preview {STEPS} (block) vs inference {STEPS + 1} (override)" in screen, screen
    props = dict(junit_properties(rec))
    assert props["parity_tier"] == rec.tier and props["parity_mismatches"] == "steps"
