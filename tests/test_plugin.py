"""The pytest plugin, driven through pytest itself (pytester): collection ids, -k, options, skip reasons, the
failure screen, JUnit properties, xdist merge and sharding."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here runs parity in other Python processes

pytest_plugins = ["pytester"]

SIZE, STEPS = 32, 2


@pytest.fixture(scope="session")
def plugin_job(tiny_model_dir, tmp_path_factory) -> Path:
    """A small AI Toolkit job (2 prompts, previews at labels 0 and 100, 32 px, 2 steps, fp32)."""
    from parity.demo import demo_config, write_job

    root = tmp_path_factory.mktemp("plugin-job")
    cfg = demo_config(root)
    proc = cfg["config"]["process"][0]
    proc["sample"].update(width=SIZE, height=SIZE, sample_steps=STEPS, prompts=["[trigger] a cat", "a dog"])
    proc["train"]["steps"] = 200
    return write_job(root / "pj", tiny_model_dir, config=cfg, checkpoints={100: 0.5})


def _cases(pytester, job: Path, base: Path, *, drift: bool = True, base_ok: bool = True) -> None:
    cases = pytester.mkdir("cases")
    (cases / "good.yaml").write_text(
        f"name: good\njob: {job}\nbase_model: {base}\nsteps: all\nexpect:\n  min_tier: NEAR\n")
    if drift:
        (cases / "drift.yaml").write_text(
            f"name: drift\njob: {job}\nbase_model: {base}\nsteps: latest\n"
            "inference:\n  set:\n    sample_steps: 1\nexpect:\n  min_tier: NEAR\n")
    if not base_ok:
        (cases / "nobase.yaml").write_text(
            f"name: nobase\njob: {job}\nbase_model: {base}/does-not-exist\nsteps: latest\n")


def test_collection_ids_and_k_selection(pytester, plugin_job, tiny_model_dir):
    _cases(pytester, plugin_job, tiny_model_dir)
    result = pytester.runpytest_subprocess("parity", "--collect-only", "-q")
    out = result.stdout.str()
    for step in (0, 100):
        for i in (0, 1):
            assert f"cases/good.yaml::good[step{step}-p{i}]" in out
    assert "cases/drift.yaml::drift[step100-p0]" in out and "drift[step0" not in out
    sub = pytester.runpytest_subprocess("parity", "--collect-only", "-q", "-k", "p1")
    ids = {line for line in sub.stdout.lines if "::" in line}
    # -k matches substrings: every prompt-1 item, plus step labels that contain "p1" (step100); not step0-p0.
    assert {i for i in ids if i.endswith("-p1]")} == {"cases/good.yaml::good[step0-p1]",
                                                       "cases/good.yaml::good[step100-p1]",
                                                       "cases/drift.yaml::drift[step100-p1]"}
    assert "cases/good.yaml::good[step0-p0]" not in ids
    one = pytester.runpytest_subprocess("cases/drift.yaml", "--collect-only", "-q")
    assert [line for line in one.stdout.lines if "::" in line] == ["cases/drift.yaml::drift[step100-p0]",
                                                                   "cases/drift.yaml::drift[step100-p1]"]


def test_run_failure_screen_junit_and_report(pytester, plugin_job, tiny_model_dir, monkeypatch):
    _cases(pytester, plugin_job, tiny_model_dir, base_ok=False)
    monkeypatch.setenv("CI", "true")  # pytest prints the short summary's message untrimmed on CI
    report = pytester.path / "rep"
    result = pytester.runpytest_subprocess("parity", "-p", "no:cacheprovider", f"--parity-report-dir={report}",
                                           "--junitxml=junit.xml", "--parity-no-attribution", "-rfs")
    # good: 4 pass; drift: 2 fail (1 step instead of 2); nobase: 2 fail (a CI runner without the model is red)
    result.assert_outcomes(passed=4, failed=4)
    out = result.stdout.str()
    assert "drift[step100-p0]: tier" in out and "(gate NEAR)" in out
    assert "steps: preview 2 (block) vs inference 1 (override)" in out
    assert "base model not found" in out and "--parity-skip-missing-model" in out
    # pytest's short summary line carries what mismatched, not only the tier
    assert any(line.startswith("FAILED cases/drift.yaml::drift[step100-p0] - tier ") and
               line.endswith("(gate NEAR); mismatched: steps") for line in result.stdout.lines), out
    assert any(line.startswith("FAILED cases/nobase.yaml::nobase[step100-p0] - tier ERROR (gate NEAR): base model "
                               "not found") for line in result.stdout.lines), out
    assert "{" not in out.split("short test summary")[0].split("FAILURES")[-1]  # no raw JSON on the screen
    assert f"report: {report / 'index.html'}" in out
    assert (report / "index.html").exists() and (report / "results.json").exists()
    results = json.loads((report / "results.json").read_text())
    assert len(results["items"]) == 8
    assert {it["tier"] for it in results["items"] if it["case"] == "nobase"} == {"ERROR"}
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["good[step100-p0]"].iter("property")}
    assert props["parity_tier"] in ("EXACT", "NEAR") and float(props["parity_ssim"]) > 0.99
    dprops = {p.get("name"): p.get("value") for p in cases["drift[step100-p0]"].iter("property")}
    assert dprops["parity_mismatches"] == "steps"


def test_missing_base_model_skips_only_when_asked(pytester, plugin_job, tiny_model_dir):
    _cases(pytester, plugin_job, tiny_model_dir, drift=False, base_ok=False)
    result = pytester.runpytest_subprocess("parity", "-p", "no:cacheprovider", "-k", "nobase", "-rs",
                                           "--parity-skip-missing-model")
    result.assert_outcomes(skipped=2)
    assert "base model not found" in result.stdout.str()
    pytester.makeini("[pytest]\nparity_skip_missing_model = true\n")
    pytester.runpytest_subprocess("parity", "-p", "no:cacheprovider", "-k", "nobase").assert_outcomes(skipped=2)


def test_expected_mismatch_passes_and_a_new_one_fails(pytester, plugin_job, tiny_model_dir):
    _cases(pytester, plugin_job, tiny_model_dir)
    drift = pytester.path / "cases" / "drift.yaml"
    drift.write_text(drift.read_text() + "  mismatches: [steps]\n")
    report = pytester.path / "rep"
    r = pytester.runpytest_subprocess("parity", "-p", "no:cacheprovider", "-k", "drift", "--parity-no-attribution",
                                      f"--parity-report-dir={report}")
    r.assert_outcomes(passed=2)
    assert "parity: 2 item(s) pass with expected differences" in r.stdout.str()
    assert "cases/drift.yaml::drift[step100-p0]: expected: mismatches steps" in r.stdout.str()
    items = json.loads((report / "results.json").read_text())["items"]
    assert all(it["tier"] != "NEAR" and it["expected"] for it in items)  # the drift is still in the report
    drift.write_text(drift.read_text().replace("[steps]", "[seed]"))
    r = pytester.runpytest_subprocess("parity", "-p", "no:cacheprovider", "-k", "drift", "--parity-no-attribution")
    r.assert_outcomes(failed=2)
    assert "unexpected mismatch: steps" in r.stdout.str()


def test_case_that_cannot_load_fails_alone(pytester, plugin_job, tiny_model_dir):
    _cases(pytester, plugin_job, tiny_model_dir, drift=False)
    (pytester.path / "cases" / "broken.yaml").write_text("name: broken\njob: [\n")
    result = pytester.runpytest_subprocess("parity", "-p", "no:cacheprovider", "--parity-no-attribution",
                                           f"--parity-report-dir={pytester.path / 'rep'}")
    result.assert_outcomes(passed=4, failed=1)
    assert "broken.yaml: malformed YAML at line 3" in result.stdout.str()


def test_shards_cover_every_item_once(pytester, plugin_job, tiny_model_dir):
    _cases(pytester, plugin_job, tiny_model_dir)
    seen = []
    for k in (1, 2):
        r = pytester.runpytest_subprocess("parity", "--collect-only", "-q", f"--parity-shard={k}/2")
        seen.append({line for line in r.stdout.lines if "::" in line})
    full = pytester.runpytest_subprocess("parity", "--collect-only", "-q")
    every = {line for line in full.stdout.lines if "::" in line}
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == every and len(every) == 6


def test_xdist_gives_same_results_and_one_merged_report(pytester, plugin_job, tiny_model_dir):
    pytest.importorskip("xdist")
    _cases(pytester, plugin_job, tiny_model_dir, drift=False)
    serial = pytester.path / "serial"
    par = pytester.path / "par"
    pytester.runpytest_subprocess("parity", "-p", "no:cacheprovider", f"--parity-report-dir={serial}"
                                  ).assert_outcomes(passed=4)
    r = pytester.runpytest_subprocess("parity", "-p", "no:cacheprovider", "-n", "2", f"--parity-report-dir={par}")
    r.assert_outcomes(passed=4)
    a = {it["id"]: it for it in json.loads((serial / "results.json").read_text())["items"]}
    b = {it["id"]: it for it in json.loads((par / "results.json").read_text())["items"]}
    assert a.keys() == b.keys() and len(a) == 4
    for key in a:
        assert a[key]["tier"] == b[key]["tier"] and a[key]["metrics"]["ssim"] == b[key]["metrics"]["ssim"]
    assert (par / "index.html").exists() and len(list((par / "workers").iterdir())) == 2
