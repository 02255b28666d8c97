"""What CI sees: expected differences as a gate (like xfail), progress lines when stderr is not a terminal, human
values (sizes, schedules, unset values) where people read, JUnit without "None", and the small CLI fixes
(`parity init` to a redirected stdout, `--profile` errors, `--version`)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from parity.cases import load_case
from parity.errors import ConfigError
from parity.record import ItemRecord
from parity.runner.records import judge

ROOT = Path(__file__).resolve().parents[1]


def _case(tmp_path: Path, expect: str) -> SimpleNamespace:
    (tmp_path / "job").mkdir(exist_ok=True)
    f = tmp_path / "c.yaml"
    f.write_text(f"name: c\njob: job\nexpect:\n{expect}")
    return SimpleNamespace(case=load_case(f))


def _judged(item: SimpleNamespace, tier: str, mismatches: list[str]) -> ItemRecord:
    rec = ItemRecord(id="c[step1-p0]", tier=tier, mismatches=mismatches)
    judge(rec, item)
    return rec


# -- expected differences --------------------------------------------------------------------------------------
def test_listed_mismatches_pass_as_expected_and_a_new_one_fails(tmp_path):
    item = _case(tmp_path, "  min_tier: NEAR\n  mismatches: [steps, guidance]\n")
    rec = _judged(item, "DRIFT", ["steps"])
    assert rec.passed and rec.expected and "steps" in rec.expected and rec.below_gate
    assert rec.fail_reasons == ["tier DRIFT is below the gate NEAR"]  # what the gate alone says, kept
    new = _judged(item, "DRIFT", ["steps", "seed"])
    assert not new.passed and new.expected is None
    assert any("unexpected mismatch: seed" in r for r in new.fail_reasons)
    assert not _judged(item, "ERROR", ["steps"]).passed           # an ERROR is never expected
    assert not _judged(item, "DRIFT", []).passed                  # below the gate with nothing listed to explain it
    ok = _judged(item, "NEAR", ["steps"])                         # meets the gate: a plain pass, not "expected"
    assert ok.passed and ok.expected is None and not ok.below_gate
    assert "expected" in rec.to_dict() and "expected" not in ok.to_dict()


def test_expected_tier_bounds_how_far_an_expected_difference_may_go(tmp_path):
    item = _case(tmp_path, "  min_tier: NEAR\n  mismatches: [steps]\n  tier: DRIFT\n")
    assert _judged(item, "DRIFT", ["steps"]).passed
    worse = _judged(item, "DIFFERENT", ["steps"])
    assert not worse.passed and any("worse than the expected DRIFT" in r for r in worse.fail_reasons)
    only_tier = _case(tmp_path, "  min_tier: NEAR\n  tier: DRIFT\n")
    assert _judged(only_tier, "DRIFT", []).passed                 # tier alone: any difference up to DRIFT


def test_no_expectation_keeps_the_plain_gate(tmp_path):
    rec = _judged(_case(tmp_path, "  min_tier: NEAR\n"), "DRIFT", ["steps"])
    assert not rec.passed and rec.expected is None


@pytest.mark.parametrize("expect, message", [
    ("  mismatches: [stepz]\n", "expect.mismatches (line 5): unknown knob 'stepz'"),
    ("  mismatches: steps\n", "expect.mismatches (line 5): must be a list of knob names"),
    ("  tier: ERROR\n", "expect.tier (line 5): must be one of EXACT, NEAR, DRIFT, DIFFERENT"),
])
def test_bad_expectations_name_file_key_and_line(tmp_path, expect, message):
    with pytest.raises(ConfigError) as e:
        _case(tmp_path, "  min_tier: NEAR\n" + expect)
    assert message in str(e.value) and "c.yaml" in str(e.value)


def test_shipped_drifting_demo_case_states_its_differences():
    case = load_case(ROOT / "cases" / "demo-reference-server.yaml")
    assert case.expect.min_tier == "NEAR" and {"steps", "guidance", "seed"} <= set(case.expect.mismatches)


# -- human values --------------------------------------------------------------------------------------------
def test_knob_values_read_as_words():
    from parity.values import cause_text, knob_text, size_mismatch_text

    assert knob_text("resolution", {"requested": [100, 64], "effective": [96, 64]}) == "96x64 (requested 100x64)"
    assert knob_text("resolution", {"requested": [96, 64], "effective": [96, 64]}) == "96x64"
    sched = {"name": "aitk", "mu": 0.460729, "sigmas": [1.0, 0.5, 0.0], "numerics": {}}
    assert knob_text("schedule", sched) == "AI Toolkit mu 0.461"
    assert knob_text("schedule", {"name": "static:3.0", "sigmas": [1.0, 0.0]}) == "static shift 3.0"
    assert knob_text("quantization", {"transformer": None, "text_encoder": None}) == "none"
    assert knob_text("quantization", {"transformer": "qfloat8", "text_encoder": None}) == "transformer qfloat8"
    assert knob_text("text_encoder", None) == "the base model's"
    assert knob_text("guidance", 4.0) == "4" and knob_text("reference_images", []) == "none"
    assert size_mismatch_text({"render": [64, 64], "preview": [96, 64]}) == "render 64x64, preview 96x64"
    assert cause_text("steps", 8, 25, 0.91234) == "steps 8 -> 25 (aligning it gives SSIM 0.9123)"
    for text in (knob_text("seed", None), knob_text("schedule", sched)):
        assert "None" not in text and "{" not in text


def test_failure_screen_has_no_raw_json_and_leads_with_the_top_cause():
    from parity.pytest_plugin import failure_screen
    from parity.record import Cause

    res = {"requested": [100, 64], "effective": [96, 64]}
    rec = ItemRecord(id="c[step1-p0]", tier="DRIFT", gate="NEAR", mismatches=["resolution"],
                     params={"preview": {"resolution": {"value": res, "source": "flag"}},
                             "inference": {"resolution": {"value": {"requested": [64, 64], "effective": [64, 64]},
                                                          "source": "request"}}},
                     size_mismatch={"render": [64, 64], "preview": [96, 64]},
                     causes=[Cause("resolution", [96, 64], [64, 64], 0.97)])
    screen = failure_screen(rec, Path("/r"))
    first = screen.splitlines()[0]
    assert first.startswith("c[step1-p0]: tier DRIFT (gate NEAR); top cause: resolution 96x64 -> 64x64")
    assert "resolution: preview 96x64 (requested 100x64) (flag) vs inference 64x64 (request)" in screen
    assert "size mismatch: render 64x64, preview 96x64" in screen
    assert "{" not in screen and "None" not in screen


def test_junit_leaves_unset_metrics_out_and_says_expected():
    from parity.report.junit import junit_xml
    from parity.report.results import Results

    items = [{"id": "a[step1-p0]", "case": "a", "tier": "DRIFT", "gate": "NEAR", "passed": True,
              "expected": "expected: mismatches steps", "metrics": {"ssim": 0.9, "psnr": None},
              "mismatches": ["steps"], "causes": [{"knob": "steps", "value_preview": 8, "value_inference": 25}]}]
    root = ET.fromstring(junit_xml(Results(run={}, items=items)))
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert "metric.psnr" not in props and props["metric.ssim"] == "0.9"
    assert props["expected"] == "expected: mismatches steps" and props["cause.1"] == "steps 8 -> 25"
    assert root.get("failures") == "0"  # an expected difference is not a failure
    assert "None" not in junit_xml(Results(run={}, items=items))


# -- progress ------------------------------------------------------------------------------------------------
def test_progress_lines_count_and_estimate_without_a_terminal():
    from parity.runner.progress import Progress

    now = [100.0]
    out = io.StringIO()
    p = Progress(stream=out, live=False, clock=lambda: now[0])
    p.start(4)
    p.note("[1/4] rendering x")  # what starts: its own line in a log
    now[0] = 110.0
    p.finished(SimpleNamespace(id="a[step1-p0]", tier="NEAR", passed=True, expected=None))
    now[0] = 250.0
    p.finished(SimpleNamespace(id="a[step1-p1]", tier="DRIFT", passed=True, expected="expected: steps"))
    p.finished(SimpleNamespace(id="a[step1-p2]", tier="DIFFERENT", passed=False, expected=None))
    # 10 s for one item -> 30 s for the 3 left; 150 s for two -> 75 s per item, 150 s left; 3 done -> 50 s left
    assert out.getvalue().splitlines() == [
        "parity: [1/4] rendering x  (0/4 done, elapsed 0s, ETA ?)",
        "[1/4] a[step1-p0]  NEAR  elapsed 10s, ETA 30s",
        "[2/4] a[step1-p1]  DRIFT (expected)  elapsed 2m30s, ETA 2m30s",
        "[3/4] a[step1-p2]  DIFFERENT FAIL  elapsed 2m30s, ETA 50s",
    ]


@pytest.fixture(scope="module")
def small_job(tiny_model_dir, tmp_path_factory) -> Path:
    """2 prompts, previews at label 100, 32 px, 2 steps."""
    from parity.demo import demo_config, write_job

    root = tmp_path_factory.mktemp("ci-job")
    cfg = demo_config(root)
    proc = cfg["config"]["process"][0]
    proc["sample"].update(width=32, height=32, sample_steps=2, prompts=["[trigger] a cat", "a dog"])
    proc["train"]["steps"] = 200
    return write_job(root / "job", tiny_model_dir, config=cfg, checkpoints={100: 0.5})


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # another Python process
def test_redirected_run_prints_item_lines_and_an_expected_drift_passes(small_job, tiny_model_dir, tmp_path):
    case = tmp_path / "cases" / "drift.yaml"
    case.parent.mkdir()
    case.write_text(f"name: drift\njob: {small_job}\nbase_model: {tiny_model_dir}\nsteps: latest\n"
                    "inference:\n  set:\n    sample_steps: 1\n"
                    "expect:\n  min_tier: NEAR\n  mismatches: [steps]\n")
    out = tmp_path / "rep"
    # stdout and stderr are pipes here, as in a CI job: no terminal
    r = subprocess.run([sys.executable, "-m", "parity.cli", "run", str(case), "--out", str(out),
                        "--no-attribution"], capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[")]
    assert len(lines) == 2, r.stderr
    for n, line in enumerate(lines, 1):
        assert re.fullmatch(rf"\[{n}/2\] drift\[step100-p\d\]  \w+ \(expected\)  elapsed \d+s, ETA \d+s", line), line
    assert "\r" not in r.stderr and "\033[" not in r.stderr  # no terminal control codes in a log
    assert "parity: [1/2] rendering drift[step100-p" in r.stderr
    items = json.loads((out / "results.json").read_text())["items"]
    assert all(it["passed"] and it["expected"].startswith("expected: mismatches steps") for it in items)
    assert "expected" in r.stdout  # the table's verdict column
    # the same case with a knob it does not list fails
    case.write_text(case.read_text().replace("[steps]", "[guidance]"))
    r2 = subprocess.run([sys.executable, "-m", "parity.cli", "-q", "run", str(case), "--out", str(tmp_path / "r2"),
                         "--no-attribution"], capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
    assert r2.returncode == 1 and "FAIL" in r2.stdout
    assert not [ln for ln in r2.stderr.splitlines() if ln.startswith(("[", "parity: ["))]  # --quiet: no progress


# -- small CLI fixes -----------------------------------------------------------------------------------------
def _cli(*args: str, cwd: Path, stdout: int | Path = subprocess.PIPE) -> subprocess.CompletedProcess:
    if isinstance(stdout, Path):
        with open(stdout, "w") as f:
            return subprocess.run([sys.executable, "-m", "parity.cli", *args], stdout=f, stderr=subprocess.PIPE,
                                  text=True, env=_env(), timeout=300, cwd=cwd)
    return subprocess.run([sys.executable, "-m", "parity.cli", *args], capture_output=True, text=True, env=_env(),
                          timeout=300, cwd=cwd)


@pytest.mark.slow  # another Python process
def test_init_redirected_writes_only_yaml_there(small_job, tmp_path):
    (tmp_path / "cases").mkdir()
    target = tmp_path / "cases" / "mine.yaml"
    r = _cli("init", str(small_job), cwd=tmp_path, stdout=target)
    assert r.returncode == 0, r.stderr
    case = load_case(target)  # clean YAML, and its job path is relative to where it landed
    assert case.job == small_job.resolve()
    assert sorted(p.name for p in (tmp_path / "cases").iterdir()) == ["mine.yaml"]  # nothing written elsewhere


@pytest.mark.slow  # another Python process
def test_bad_profile_blames_the_option_and_version_prints(small_job, tmp_path):
    r = _cli("diff", str(small_job), "--profile", "bogus", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("parity: error: --profile: unknown inference profile 'bogus'"), r.stderr
    assert "parity-diff.yaml" not in r.stderr
    v = _cli("--version", cwd=tmp_path)
    assert v.returncode == 0 and re.fullmatch(r"parity \S+.*\n", v.stdout)
