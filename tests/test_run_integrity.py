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
    from parity.ids import item_file_name, safe_name

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


# ----------------------------------------------------------------------------------------------- folder lock
_HOLDER = r"""
import sys
sys.modules["torch"] = None  # the store needs no torch
from parity.report import ResultsStore
store = ResultsStore(sys.argv[1]).start({"id": "holder"})
print("ready", flush=True)
sys.stdin.readline()  # hold the folder until the test says so
store.finish()
"""


def _holder(out: Path):
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.mark.slow  # another Python process
def test_second_run_on_one_out_is_refused_while_the_first_holds_it(capsys, tmp_path, good_job, tiny_model_dir):
    out = tmp_path / "out"
    p = _holder(out)
    try:
        rc, so, se = cli(capsys, "diff", good_job, "--base-model", tiny_model_dir, "--out", out, "--resume",
                         "--no-attribution", "-q")
        assert rc == 2 and "another parity run" in se and f"pid {p.pid}" in se, se
        assert_clean(so, se)
        journal = (out / "results.jsonl").read_text()
        assert journal.count('"type": "run"') + journal.count('"type":"run"') == 1
        assert '"type": "resume"' not in journal and '"type":"resume"' not in journal  # the refused run wrote nothing
    finally:
        p.communicate("go\n", timeout=60)
    assert p.returncode == 0
    # once the holder is gone (even without a clean exit the kernel drops the flock) the folder can be resumed
    rc, so, se = cli(capsys, "diff", good_job, "--base-model", tiny_model_dir, "--out", out, "--resume",
                     "--no-attribution", "-q")
    assert rc == 0, se


# ----------------------------------------------------------------------------------------------- resume settings
def test_resume_with_other_settings_is_refused_unless_forced(capsys, tmp_path, good_job, tiny_model_dir):
    out = tmp_path / "out"
    common = ["diff", good_job, "--base-model", tiny_model_dir, "--out", out, "--no-attribution", "-q"]
    rc, so, se = cli(capsys, *common)
    assert rc == 0, se
    journal_before = (out / "results.jsonl").read_bytes()

    rc, so, se = cli(capsys, *common, "--resume", "--set", "guidance_scale=4")
    assert rc == 2 and "other settings than the interrupted run" in se, se
    assert "overrides: [] -> ['guidance_scale=4']" in se and "--force-resume" in se, se
    assert_clean(so, se)
    assert (out / "results.jsonl").read_bytes() == journal_before  # refused before writing anything

    rc, so, se = cli(capsys, *common, "--resume")  # the same settings resume
    assert rc == 0, se
    rc, so, se = cli(capsys, *common, "--resume", "--set", "guidance_scale=4", "--force-resume")
    assert rc in (0, 1) and "other settings" not in se, se
    run = load_results(out).run  # the journal records the forced change
    assert run["inputs"]["overrides"] == ["guidance_scale=4"]
    assert run["forced_resume"] == ["overrides: [] -> ['guidance_scale=4']"]


# ----------------------------------------------------------------------------------------------- parity report
@pytest.fixture(scope="module")
def report_run(tmp_path_factory) -> tuple[Path, dict]:
    """A synthetic run with its report built once; results.json as a dict to mutate."""
    from parity.report.synthetic import synthetic_results

    out = tmp_path_factory.mktemp("rep") / "run"
    synthetic_results(4, out)
    (out / "results.jsonl").unlink(missing_ok=True)  # results.json alone is what `parity report` reads here
    assert cli_quiet("report", out / "results.json", "--no-thumbnails") == 0
    return out, json.loads((out / "results.json").read_text())


def cli_quiet(*argv) -> int:
    from parity.cli import main

    return main([str(a) for a in argv])


def _report_files(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in ("index.html", "junit.xml", "summary.md")}


def _with(doc: dict, where: str, key: str, value) -> dict:
    import copy

    d = copy.deepcopy(doc)
    (d["run"] if where == "run" else d["items"][0])[key] = value
    return d


@pytest.mark.parametrize("where,key,value,fragment", [
    ("run", "versions", ["torch", "2.4"], "'run.versions' should be dict, got list"),
    ("run", "settings", "fast", "'run.settings' should be dict, got str"),
    ("run", "timings", {"total_s": "slow"}, "'run.timings.total_s' should be a number"),
    ("item", "step", 10**400, "'step' 100000000000... (401 digits) is outside"),
    ("item", "index", float("nan"), "'index' nan is outside"),
], ids=["versions-list", "settings-str", "timing-str", "huge-step", "nan-index"])
def test_report_refuses_malformed_results_before_writing(capsys, report_run, tmp_path, where, key, value, fragment):
    out, doc = report_run
    before = _report_files(out)
    (out / "results.json").write_text(json.dumps(_with(doc, where, key, value)))
    try:
        rc, so, se = cli(capsys, "report", out / "results.json", "--no-thumbnails")
    finally:
        (out / "results.json").write_text(json.dumps(doc))
    assert rc == 2 and fragment in se and "results.json" in se, se
    assert len(se.strip().splitlines()) == 1 and "internal error" not in se
    assert _report_files(out) == before  # nothing replaced


def _json_values():
    from hypothesis import strategies as st

    leaf = (st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30) | st.floats()
            | st.text(max_size=8))
    return st.recursive(leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids,
                                                                                         max_size=3), max_leaves=6)


def test_report_on_any_field_value_is_a_report_or_one_clear_error(report_run, tmp_path_factory):
    """Any JSON value in any run or item field: `parity report` builds the report (exit 0/1) or refuses with
    exit 2, never an internal error, and a refusal leaves the existing report files as they were."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    src, doc = report_run
    run_keys = st.sampled_from([("run", k) for k in doc["run"]])
    item_keys = st.sampled_from([("item", k) for k in doc["items"][0] if k != "id"])

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(run_keys | item_keys, _json_values())
    def check(where_key, value):
        import shutil

        out = tmp_path_factory.mktemp("fuzz")
        shutil.copytree(src, out, dirs_exist_ok=True)
        before = _report_files(out)
        (out / "results.json").write_text(json.dumps(_with(doc, *where_key, value)))
        rc = cli_quiet("report", out / "results.json", "--no-thumbnails")
        assert rc in (0, 1, 2), (where_key, value)
        if rc == 2:
            assert _report_files(out) == before

    check()


# ----------------------------------------------------------------------------------------------- parity plan
def test_plan_shows_terminal_control_codes_escaped(capsys, tmp_path, tiny_model_dir):
    from test_reliability import write_job

    hostile = "a cat \x1b]0;owned\x07\x1b[2J\rred\x9b31m"
    job = write_job(tmp_path / "jobs" / "ctl", tiny_model_dir, prompts=[hostile, "a dog"])
    rc, so, se = cli(capsys, "plan", job)
    assert rc == 0, se
    assert not any(ord(c) < 32 and c != "\n" or 0x7f <= ord(c) < 0xa0 for c in so), repr(so)
    assert "a cat \\x1b]0;owned\\x07" in so
    rc, so, se = cli(capsys, "plan", job, "--json")  # JSON escapes them itself, and keeps the prompt exact
    assert json.loads(so)[0]["prompt"].startswith(hostile)


# ----------------------------------------------------------------------------------------------- bad flags
@pytest.mark.parametrize("flags,fragment", [
    (["--device", "bogus"], "is not a torch device"),
    (["--device", "cuda:7"], "CUDA"),
    (["--budget", "-3"], "--budget must be 0 or more"),
    (["--json", "{tmp}"], "--json is a folder"),
    (["--step", "soon"], "--step must be"),
    (["--min-tier", "GOOD"], "--min-tier must be one of"),
    (["--set", "sample_steps=0"], "sample_steps"),
], ids=["device", "cuda-index", "budget", "json-folder", "step", "min-tier", "set"])
def test_bad_flag_is_a_usage_error_before_any_model_loads(flags, fragment, capsys, tmp_path, good_job,
                                                         tiny_model_dir, monkeypatch):
    import torch

    from parity.engine import Engine

    if flags[0] == "--device" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    monkeypatch.setattr(Engine, "__init__", lambda *a, **k: pytest.fail("a model was loaded"))
    out = tmp_path / "out"
    rc, so, se = cli(capsys, "diff", good_job, "--base-model", tiny_model_dir, "--out", out, "--no-attribution",
                     *[f.format(tmp=tmp_path) for f in flags])
    assert rc == 2 and fragment in se and len(se.strip().splitlines()) == 1, se
    assert_clean(so, se)
    assert not out.exists()
