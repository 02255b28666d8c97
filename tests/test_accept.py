"""`parity accept` (parity/accept.py): a run's failing items become known differences of their cases. Round trip
on the demo job: a case whose guidance is nudged off the previews' value drifts (red), accept writes
expect.mismatches/tier, the re-run is green, and a new mismatching knob or a worse tier is red again. The YAML's
comments survive; ERROR and (without --allow-different) DIFFERENT are refused; results whose case file is gone or
changed since the run are refused whole (exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from parity.cli import main

ROOT = Path(__file__).resolve().parents[1]

CASE = """\
# A case that drifts on purpose: the guidance nudged off the previews' value.
name: nudged
job: {demo}/output/tiny-portrait
base_model: {demo}/tiny-flux2
preview_hardware: cpu   # the demo renders its previews on the CPU
steps: latest
inference:
  set: {{guidance_scale: {guidance}}}
expect:
  min_tier: NEAR        # the gate
  ssim: 0.05            # a floor far below every item
# closing comment
"""


def _run(case: Path, out: Path) -> int:
    return main(["-q", "run", str(case), "--no-attribution", "--out", str(out)])


@pytest.fixture(scope="module")
def drifted(tmp_path_factory):
    """One run of the nudged case (guidance 6.97 against the previews' 7: every item DRIFT, below NEAR)."""
    from parity.demo import build_demo

    demo = build_demo(ROOT / "demo")
    root = tmp_path_factory.mktemp("accept")
    case = root / "nudged.yaml"
    case.write_text(CASE.format(demo=demo.root, guidance=6.97))
    assert _run(case, root / "run1") == 1
    results = json.loads((root / "run1" / "results.json").read_text())
    assert {it["tier"] for it in results["items"]} == {"DRIFT"}, "the demo's nudged guidance drifts"
    assert all(it["mismatches"] == ["guidance"] for it in results["items"])
    return {"root": root, "case": case, "text": case.read_text(), "results": root / "run1" / "results.json",
            "demo": demo}


@pytest.fixture
def fresh(drifted, tmp_path):
    """The drifted case file and its results, copied so each test edits its own (the results point at the copy)."""
    case = tmp_path / "nudged.yaml"
    case.write_text(drifted["text"])
    doc = json.loads(drifted["results"].read_text())
    for it in doc["items"]:
        it["case_file"] = str(case)
    res = tmp_path / "results.json"
    _write_results(res, doc, drifted["results"].parent)
    return case, res, doc


def _write_results(path: Path, doc: dict, run_dir: Path) -> None:
    """A copy of results whose relative item paths still resolve (they are made absolute)."""
    for it in doc["items"]:
        it["paths"] = {k: (v if not isinstance(v, str) or v.startswith("/") else str(run_dir / v))
                       for k, v in it.get("paths", {}).items()}
    path.write_text(json.dumps(doc))


@pytest.mark.slow  # renders the demo
def test_accept_round_trip_green_then_red_on_a_new_knob_or_a_worse_tier(fresh, tmp_path, capsys):
    case, res, _ = fresh
    before = case.read_text()
    assert main(["accept", str(res), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "+  mismatches: [guidance]" in out and "+  tier: DRIFT" in out and "dry run: nothing written" in out
    assert case.read_text() == before
    assert main(["accept", str(res)]) == 0
    out = capsys.readouterr().out
    assert out.index("+  tier: DRIFT") < out.index("widens expect.tier: none -> DRIFT") < out.index("wrote ")
    after = case.read_text()
    for line in before.splitlines():  # every line, comments included, is still there, in the same order
        assert line in after.splitlines()
    assert after.splitlines()[-1] == "# closing comment"
    assert _run(case, tmp_path / "green") == 0
    rerun = json.loads((tmp_path / "green" / "results.json").read_text())["items"]
    assert all(it["passed"] and it["expected"] for it in rerun)
    # a knob that was not accepted mismatches now: red
    case.write_text(after.replace("{guidance_scale: 6.97}", "{guidance_scale: 6.97, sample_steps: 9}"))
    assert _run(case, tmp_path / "new-knob") == 1
    items = json.loads((tmp_path / "new-knob" / "results.json").read_text())["items"]
    assert all(any("unexpected mismatch: steps" in r for r in it["fail_reasons"]) for it in items)
    # the same knob, further off: a worse tier than the accepted DRIFT: red
    case.write_text(after.replace("6.97", "6.9"))
    assert _run(case, tmp_path / "worse") == 1
    items = json.loads((tmp_path / "worse" / "results.json").read_text())["items"]
    assert {it["tier"] for it in items} == {"DIFFERENT"}
    assert all(any("worse than the expected DRIFT" in r for r in it["fail_reasons"]) for it in items)


@pytest.mark.slow
def test_different_needs_the_flag_and_error_is_never_accepted(fresh, capsys):
    case, res, doc = fresh
    doc["items"][0].update(tier="DIFFERENT")
    doc["items"][1].update(tier="ERROR", error="render failed: out of memory", mismatches=[])
    res.write_text(json.dumps(doc))
    assert main(["accept", str(res)]) == 1  # the third item is accepted, the two others refused
    out = capsys.readouterr().out
    assert f"refused {doc['items'][0]['id']}: tier DIFFERENT" in out and "--allow-different" in out
    assert f"refused {doc['items'][1]['id']}: an ERROR is never accepted" in out
    assert "tier: DRIFT" in case.read_text()


@pytest.mark.slow
def test_allow_different_widens_the_tier_to_different(fresh, capsys):
    case, res, doc = fresh
    doc["items"][0].update(tier="DIFFERENT")
    res.write_text(json.dumps(doc))
    assert main(["accept", str(res), "--allow-different"]) == 0
    assert "tier: DIFFERENT" in case.read_text()
    assert "widens expect.tier: none -> DIFFERENT" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("how", ["changed", "gone", "unrecorded"])
def test_results_of_a_changed_or_gone_case_are_refused_whole(fresh, capsys, how):
    case, res, doc = fresh
    if how == "changed":
        case.write_text(case.read_text() + "# edited after the run\n")
    elif how == "gone":
        case.unlink()
    else:  # results from before parity recorded the case file's hash
        for it in doc["items"]:
            it.pop("case_sha256")
        res.write_text(json.dumps(doc))
    before = case.read_bytes() if case.exists() else None
    assert main(["accept", str(res)]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "case 'nudged'" in out[0] and str(res) in out[0]
    assert {"changed": "changed since the run", "gone": "is gone since the run",
            "unrecorded": "no case_sha256"}[how] in out[0]
    assert (case.read_bytes() if case.exists() else None) == before  # nothing written


@pytest.mark.slow
def test_results_from_another_machine_find_their_case_by_hash(fresh, tmp_path, capsys):
    """A CI runner's results name the runner's path; the case is found in --cases by its bytes' SHA-256."""
    case, res, doc = fresh
    for it in doc["items"]:
        it["case_file"] = "/home/runner/work/repo/cases/nudged.yaml"
    res.write_text(json.dumps(doc))
    elsewhere = tmp_path / "checkout" / "cases"
    elsewhere.mkdir(parents=True)
    (elsewhere / "renamed.yaml").write_text(case.read_text())
    assert main(["accept", str(res), "--cases", str(elsewhere)]) == 0
    assert "tier: DRIFT" in (elsewhere / "renamed.yaml").read_text()
    assert f"wrote {elsewhere / 'renamed.yaml'}" in capsys.readouterr().out
    (elsewhere / "nudged.yaml").write_text(case.read_text() + "# edited\n")  # same name, other bytes
    (elsewhere / "renamed.yaml").unlink()
    assert main(["accept", str(res), "--cases", str(elsewhere)]) == 2
    assert f"{elsewhere / 'nudged.yaml'} changed since the run" in capsys.readouterr().out


@pytest.mark.slow
def test_unknown_case_name_is_a_usage_error(fresh, capsys):
    _, res, _ = fresh
    assert main(["accept", str(res), "--case", "nope"]) == 2
    assert "--case 'nope': no item of that case" in capsys.readouterr().err


def test_edit_keeps_the_files_own_list_style_and_indentation(tmp_path):
    from parity.accept import edit_expect

    text = ("name: x  # the name\n"
            "steps:\n"
            "    - 100\n"
            "    - 200\n"
            "expect:\n"
            "    min_tier: NEAR\n"
            "    mismatches:\n"
            "        - steps   # known\n"
            "    tier: DRIFT\n"
            "tiers: {near_ssim_y: 0.995}\n")
    new = edit_expect(text, ["steps", "guidance"], "DIFFERENT", tmp_path / "x.yaml")
    assert new == text.replace("        - steps   # known\n", "        - steps   # known\n        - guidance\n"
                               ).replace("tier: DRIFT", "tier: DIFFERENT")


def test_edit_adds_an_expect_block_to_a_case_without_one(tmp_path):
    from parity.accept import edit_expect
    from parity.cases import load_case

    text = "# my case\njob: job\ninference:\n  set:\n    sample_steps: 9   # faster\n# end\n"
    (tmp_path / "job").mkdir()
    new = edit_expect(text, ["steps"], "DRIFT", tmp_path / "c.yaml")
    assert new == ("# my case\njob: job\ninference:\n  set:\n    sample_steps: 9   # faster\n"
                   "expect:\n  mismatches: [steps]\n  tier: DRIFT\n# end\n")
    (tmp_path / "c.yaml").write_text(new)
    exp = load_case(tmp_path / "c.yaml").expect
    assert exp.mismatches == ("steps",) and exp.tier == "DRIFT" and exp.min_tier == "NEAR"


def test_widening_covers_items_without_a_knob_and_keeps_already_expected_items_passing():
    """A case listing mismatches without a tier ceiling: an item below the gate with no mismatching knob needs a
    tier; the ceiling then also covers the worse items the case already expected."""
    from parity.accept import widened_expectation
    from parity.cases import Expectation

    old = Expectation("NEAR", {}, mismatches=("guidance",), tier=None)
    no_knob = {"id": "c[step1-p0]", "tier": "DRIFT", "mismatches": [], "metrics": {}}
    already = {"id": "c[step1-p1]", "tier": "DIFFERENT", "mismatches": ["guidance"], "metrics": {}}
    assert not old.judge("DRIFT", {}, [])[0] and old.judge("DIFFERENT", {}, ["guidance"])[0]
    mismatches, tier, widened = widened_expectation(old, [no_knob], [already])
    assert (mismatches, tier) == (["guidance"], "DIFFERENT") and widened == ["expect.tier: none -> DIFFERENT"]
    new = Expectation("NEAR", {}, tuple(mismatches), tier)
    assert new.judge("DRIFT", {}, [])[0] and new.judge("DIFFERENT", {}, ["guidance"])[0]
    assert not new.judge("DRIFT", {}, ["steps"])[0]  # a knob not listed still fails
    # every accepted item has a listed knob: no ceiling was set, none is added
    with_knob = dict(no_knob, mismatches=["steps"])
    assert widened_expectation(old, [with_knob], [already])[:2] == (["guidance", "steps"], None)
