"""CLI entry points not covered elsewhere: `parity init` writes a case that plans; `parity diff` exits 0 for a
parity run and 1 for a drifting one with its cause named; `parity run --shard` halves cover every item once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parity.cli import main


@pytest.fixture(scope="module")
def small_job(tiny_model_dir, tmp_path_factory) -> Path:
    from parity.demo import demo_config, write_job

    root = tmp_path_factory.mktemp("cli-job")
    cfg = demo_config(root)
    cfg["config"]["process"][0]["sample"].update(width=32, height=32, sample_steps=2, prompts=["a cat", "a dog"])
    cfg["config"]["process"][0]["train"]["steps"] = 200
    return write_job(root / "cj", tiny_model_dir, config=cfg, checkpoints={100: 0.5})


def test_init_writes_a_case_that_loads_and_plans(small_job, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from parity.cases import load_case
    from parity.run import plan_case

    monkeypatch.chdir(tmp_path)
    assert main(["init", str(small_job), "--base-model", str(tiny_model_dir)]) == 0
    case = load_case(tmp_path / "cases" / "cj.yaml")
    assert case.job == small_job.resolve() and case.base_model == str(tiny_model_dir)
    items = plan_case(case)
    assert [(p.step, p.index) for p in items] == [(100, 0), (100, 1)]
    assert main(["init", str(small_job)]) == 2  # exists: refuses to overwrite
    assert "pass --force" in capsys.readouterr().err


def test_diff_exit_codes_and_cause(small_job, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ok"
    code = main(["diff", str(small_job), "--base-model", str(tiny_model_dir), "--out", str(out), "-q"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "cj[step100-p0]" in text and f"report: {out / 'index.html'}" in text
    drift = tmp_path / "drift"
    code = main(["diff", str(small_job), "--base-model", str(tiny_model_dir), "--set", "guidance_scale=2",
                 "--out", str(drift), "--json", str(tmp_path / "r.json"), "-q"])
    text = capsys.readouterr().out
    assert code == 1, text
    assert "top cause: guidance 7 -> 2" in text
    items = json.loads((tmp_path / "r.json").read_text())["items"]
    assert all(it["causes"][0]["knob"] == "guidance" for it in items)
    assert main(["diff", str(tmp_path / "nope")]) == 2
    assert "nope: no such job folder" in capsys.readouterr().err


def test_shards_merge_to_the_unsharded_results(small_job, tiny_model_dir, tmp_path, capsys):
    from parity.report import load

    base = ["diff", str(small_job), "--base-model", str(tiny_model_dir), "--step", "all", "-q"]
    assert main([*base, "--out", str(tmp_path / "full")]) == 0
    for k in (1, 2):
        main([*base, "--shard", f"{k}/2", "--out", str(tmp_path / f"s{k}")])
    assert main(["report", "merge", str(tmp_path / "s1" / "results.json"), str(tmp_path / "s2" / "results.json"),
                 "--out", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    shards = [{it["id"] for it in load(tmp_path / f"s{k}").items} for k in (1, 2)]
    assert shards[0].isdisjoint(shards[1])
    full = {it["id"]: it for it in load(tmp_path / "full").items}
    merged = {it["id"]: it for it in load(tmp_path / "merged" / "results.json").items}
    assert merged.keys() == full.keys() == shards[0] | shards[1] and len(full) == 4
    for key, it in full.items():
        assert merged[key]["tier"] == it["tier"] and merged[key]["metrics"] == it["metrics"]


def test_exit_codes_tell_a_crash_from_bad_input(capsys, monkeypatch, tmp_path):
    """2: bad input / environment (one line); 3: an internal error, said to be a bug (issue 17)."""
    import parity.commands.plan as plan_cmd
    from parity.cli import main

    def boom(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(plan_cmd, "run", boom)
    assert main(["plan", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError" in err and "a bug" in err and "Traceback" not in err

    def disk_full(args):
        raise OSError(28, "No space left on device", str(tmp_path / "results.jsonl"))

    monkeypatch.setattr(plan_cmd, "run", disk_full)
    assert main(["plan", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"parity: error: {tmp_path / 'results.jsonl'}: No space left on device"



def test_output_into_a_closed_pipe_is_quiet(capsys, monkeypatch, tmp_path):
    """`parity plan ... | head`: the reader went away; exit 0 without a traceback."""
    import parity.commands.plan as plan_cmd
    from parity.cli import main

    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(plan_cmd, "run", closed)
    assert main(["plan", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


def test_demo_outside_the_repository_says_so_before_building_anything(tmp_path, monkeypatch, capsys):
    """Without cases/demo-*.yaml there is nothing to run: say so at once instead of after minutes of building."""
    from parity.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 2
    assert "no demo-*.yaml case files here" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no demo/ built
