"""Two answers that explain a preview equally (issue 31): "ambiguous: 11 steps or static shift 3.2 explain
equally" reaches results.json, the console table, summary.md, JUnit, the PR comment, the pytest failure screen and
the report, whose recovery section marks each candidate on its own knob's curve.

The suspects are the real search's, on the two-basin score of tests/test_diagnose_attribution.py (11 steps at the
recorded schedule; a static shift of 3.2 at the recorded 20 steps) with peaks 0.970 and 0.968; the item around them
is the failing searched item of tests/data/results-before-typed-record (DRIFT against a NEAR gate)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_diagnose_attribution import A_STEPS, B_SHIFT, SCAN_RECORDED, FakeEngine, two_basins

from parity.diagnose import suspect_search
from parity.record import ItemRecord
from parity.report.store import dumps_results, load

FIXTURE = Path(__file__).parent / "data" / "results-before-typed-record" / "results.json"
SEARCHED = "demo-parity[step200-p9]"
VERDICT = "ambiguous: 11 steps or static shift 3.2 explain equally (0.970 vs 0.968)"


@pytest.fixture(scope="module")
def results():
    found = suspect_search("p.jpg", SCAN_RECORDED, FakeEngine().render, two_basins(0.970, 0.968),
                           preview_size=(512, 512))
    assert found.verdict == VERDICT and not found.explained   # the search's own words, checked in its tests
    res = load(FIXTURE)
    (item,) = [it for it in res.items if it["id"] == SEARCHED]
    item["suspects"] = found.to_dict()
    return res


def _item(results) -> dict:
    return next(it for it in results.items if it["id"] == SEARCHED)


def test_results_json_keeps_both_answers(results, tmp_path):
    (tmp_path / "results.json").write_text(dumps_results(results.to_dict(), tmp_path), encoding="utf-8")
    back = next(it for it in json.loads((tmp_path / "results.json").read_text())["items"] if it["id"] == SEARCHED)
    assert back["suspects"]["verdict"] == VERDICT
    assert [a["changes"] for a in back["suspects"]["ambiguous"]] == [{"steps": A_STEPS},
                                                                      {"schedule": f"static:{B_SHIFT:g}"}]


def test_console_table_summary_junit_and_pr_comment_state_it(results, capsys):
    from parity.commands._execute import print_summary
    from parity.report.github import comment_body
    from parity.report.junit import junit_xml
    from parity.report.markdown import markdown_summary

    print_summary(results.items, SimpleNamespace(index="report/index.html"))
    table_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(SEARCHED))
    assert VERDICT in table_row
    assert VERDICT in markdown_summary(results)
    assert VERDICT in junit_xml(results)
    assert VERDICT in comment_body(results)


def test_the_pytest_failure_screen_states_it(results, tmp_path):
    from parity.pytest_plugin import failure_screen

    screen = failure_screen(ItemRecord.from_dict(_item(results)), tmp_path)
    assert f"  recovered: {VERDICT}" in screen.splitlines()


def test_the_report_marks_each_candidate_on_its_knobs_curve(results, tmp_path):
    from parity.report.html import write_report
    from parity.report.texts import item_texts

    words = item_texts(_item(results), "ssim")["recovery"]
    assert words["recovered"] == {"steps": str(A_STEPS), "schedule": f"static shift {B_SHIFT:g}"}
    searched = {t["knob"] for t in _item(results)["suspects"]["searches"]}
    assert {"steps", "schedule"} <= searched   # a curve for each candidate's knob
    write_report(results, tmp_path / "report")
    page = "\n".join(p.read_text(encoding="utf-8") for p in (tmp_path / "report").rglob("*.html"))
    assert VERDICT in page


@pytest.mark.browser
def test_in_chromium_each_curve_names_its_candidate_and_none_says_recovered(results, tmp_path):
    from urllib.parse import quote

    from test_report_browser import chromium_driver, open_report

    from parity.report.html import write_report

    write_report(results, tmp_path / "report")
    drv = chromium_driver(1400, 1700)
    try:
        open_report(drv, SimpleNamespace(index=tmp_path / "report" / "index.html"), "#item=" + quote(SEARCHED, safe=""))
        sec = drv.find_element("css selector", ".detail section.recovery")
        captions = drv.execute_script("return [...document.querySelectorAll('.detail section.recovery figcaption')]"
                                      ".map(c => c.textContent)")
        assert VERDICT in sec.text
        assert any(c.startswith("steps recorded 20 · candidate 11 (ambiguous)") for c in captions), captions
        assert any(c.startswith("schedule recorded AI Toolkit · candidate static shift 3.2 (ambiguous)")
                   for c in captions), captions
        assert not any("recovered" in c for c in captions), captions
    finally:
        drv.quit()
        shutil.rmtree(drv._parity_profile, ignore_errors=True)
