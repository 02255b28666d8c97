"""The runner is one per-item pipeline used two ways: `Runner.run` (the CLI: a list, pipelined) and
`Runner.run_item` (the pytest plugin: one item per test) give the same records; the session set-up both share
checks its inputs with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from parity.errors import ParityError

STEPS = 2


@pytest.fixture(scope="module")
def drifting_items(tiny_model_dir, tmp_path_factory):
    """Two items of a small job whose settings under test take one more sampling step (below the gate, so the
    determinism guard and attribution both run)."""
    from parity.cases import Case
    from parity.demo import demo_config, write_job
    from parity.run import plan_case

    root = tmp_path_factory.mktemp("runner-job")
    cfg = demo_config(root)
    cfg["config"]["process"][0]["sample"].update(width=32, height=32, sample_steps=STEPS,
                                                 prompts=["a cat", "a dog"])
    job = write_job(root / "rj", tiny_model_dir, config=cfg, checkpoints={100: 0.5})
    case = Case(name="rj", path=root / "rj.yaml", job=job, base_model=str(tiny_model_dir),
                inference={"set": {"sample_steps": STEPS + 1}})
    return plan_case(case), root


def _comparable(rec) -> dict:
    d = rec.to_dict()
    d.pop("timings")
    d["paths"] = {k: Path(v).name for k, v in d["paths"].items()}
    return d


def test_run_and_run_item_give_the_same_records(drifting_items):
    from parity.runner import Runner

    items, root = drifting_items
    assert len(items) == 2
    listed, single = Runner(root / "list", attribution_budget=2), Runner(root / "single", attribution_budget=2)
    try:
        seen = []
        by_run = {r.id: _comparable(r) for r in listed.run(items, on_record=seen.append)}
        by_item = {it.id: _comparable(single.run_item(it)) for it in items}
    finally:
        listed.close()
        single.close()
    assert len(seen) == len(items) and {r.id for r in seen} == set(by_run)  # on_record once per item
    assert by_run == by_item
    for rec in by_run.values():
        assert rec["mismatches"] == ["steps"] and not rec["passed"]
        assert rec["determinism"] == {"checked": True, "identical": True, "max_abs": 0}
        assert rec["causes"][0]["knob"] == "steps"  # attribution ran in both


def test_missing_preview_is_an_error_record_not_an_exception(drifting_items, tmp_path):
    import dataclasses

    from parity.runner import Runner

    items, _ = drifting_items
    broken = dataclasses.replace(items[0], problem="samples/: no preview for step 100 prompt 0")
    runner = Runner(tmp_path)
    try:
        rec = runner.run_item(broken)
    finally:
        runner.close()
    assert rec.tier == "ERROR" and rec.error == "samples/: no preview for step 100 prompt 0"
    assert rec.fail_reasons == [rec.error] and rec.traceback is None


def test_failure_message_names_unexpected_errors_by_type():
    from parity.runner import failure_message

    assert failure_message(ParityError("bad thing", "x.json")) == "x.json: bad thing"
    assert failure_message(ValueError("boom")) == "ValueError: boom"


def test_gate_override_is_checked_with_the_option_named():
    from parity.session import gate_tier

    assert gate_tier("near", "--min-tier") == "NEAR"
    with pytest.raises(ParityError, match=r"--parity-min-tier must be one of EXACT, NEAR, DRIFT, DIFFERENT, "
                                          r"got 'ERROR'"):
        gate_tier("ERROR", "--parity-min-tier")
