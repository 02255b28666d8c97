"""The HTML report's values and view state in headless Chromium: knob values in words (no raw JSON), the sigma
table behind a disclosure, the "expected" verdict, filters kept in the URL hash, repeated ERROR items grouped.
Skipped like tests/test_report_browser.py where the browser is absent."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from parity.report import load, synthetic_results, write_report

from test_report_browser import SCREENSHOTS, driver, open_report, visible_tiers  # noqa: F401 (driver: fixture)

pytestmark = pytest.mark.browser

SAME_ERROR = "base model not found: /models/FLUX.2-dev"


def _doctor(raw: dict) -> tuple[str, str]:
    """One DRIFT item with real knob shapes (as the runner writes them) and expected; three ERRORs sharing a text."""
    items = raw["items"]
    it = next(i for i in items if i["tier"] in ("DRIFT", "DIFFERENT") and "<" not in i["id"] and i.get("schedule")
              and i["schedule"]["preview"] != i["schedule"]["inference"])
    sched = {"name": "aitk", "semantics": "aitk", "numerics": {}, "mu": 0.460729, "sigmas": it["schedule"]["preview"]}
    it["params"]["preview"].update(
        resolution={"value": {"requested": [100, 64], "effective": [96, 64]}, "source": "floor"},
        schedule={"value": sched, "source": "default"},
        quantization={"value": {"transformer": None, "text_encoder": None}, "source": "block"},
        text_encoder={"value": None, "source": "case"})
    it["params"]["inference"].update(
        resolution={"value": {"requested": [64, 64], "effective": [64, 64]}, "source": "request"},
        schedule={"value": dict(sched, mu=0.459375, sigmas=it["schedule"]["inference"]), "source": "profile"},
        quantization={"value": {"transformer": "qfloat8", "text_encoder": None}, "source": "block"},
        text_encoder={"value": None, "source": "case"})
    it["passed"], it["expected"] = True, "expected: mismatches resolution"
    it["irreducible"] = ["lora_precision"]
    it["irreducible_details"] = [{"knob": "lora_precision", "preview": "fp32 (live training weights)",
                                  "inference": "bf16 (saved file)", "note": "saved in a lower precision"}]
    errors = [i for i in items if i["tier"] in ("EXACT", "NEAR") and "<" not in i["id"]][:3]
    for e in errors:
        e.update(tier="ERROR", passed=False, error=SAME_ERROR, metrics={})
    return it["id"], errors[0]["id"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("values-run")
    res = synthetic_results(40, d / "run", image_size=64)
    raw = json.loads(Path(res).read_text())
    ids = _doctor(raw)
    Path(res).write_text(json.dumps(raw))
    return write_report(load(res), d / "report"), raw, ids


def _open(drv, paths, item_id: str) -> None:
    open_report(drv, paths, "#item=" + quote(item_id, safe=""))


def test_parameter_table_reads_as_words(driver, report):
    paths, raw, (drift_id, _) = report
    _open(driver, paths, drift_id)
    rows = driver.execute_script(
        "return [...document.querySelectorAll('.card.open .sec.params tbody tr')].map("
        "r => [...r.children].map(c => c.querySelector('.val') ? c.querySelector('.val').textContent : c.textContent))")
    table = {r[0]: r[1:3] for r in rows}
    assert table["resolution"] == ["96x64 (requested 100x64)", "64x64"]
    assert table["schedule"] == ["AI Toolkit mu 0.461", "AI Toolkit mu 0.459"]
    assert table["quantization"] == ["none", "transformer qfloat8"]
    assert table["text_encoder"] == ["the base model's", "the base model's"]
    cells = [c for r in rows for c in r[1:3]]
    assert not [c for c in cells if c.startswith(("{", "[")) or c in ("None", "null", "–")], cells
    irr = driver.execute_script(
        "return [...document.querySelectorAll('.card.open .sec.irreducible tr')].map(r => r.innerText)")
    assert irr == ["lora_precision\tfp32 (live training weights)\tbf16 (saved file)"]
    # the sigma table is there, folded behind a disclosure
    assert driver.execute_script(
        "var d = document.querySelector('.card.open .sec.schedule details'); "
        "return !!d && !d.open && !!d.querySelector('table.sigma')")
    assert driver.execute_script("return document.querySelector('.card.open .gate').textContent") == "expected"
    driver.execute_script("document.querySelector('.card.open .sec.schedule details').open = true; "
                          "document.querySelector('.card.open .sec.params').scrollIntoView(); window.scrollBy(0, -90)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / "report-item-values.png"))  # docs/screenshots/ holds a copy


def test_filters_survive_a_reload_through_the_hash(driver, report):
    paths, raw, _ = report
    open_report(driver, paths)
    driver.find_element("css selector", ".tierchip[data-tier='DRIFT']").click()
    assert "tier=DRIFT" in driver.execute_script("return location.hash")
    open_report(driver, paths, "#tier=DRIFT,DIFFERENT&sort=name")
    shown = visible_tiers(driver)
    assert shown and set(shown) <= {"DRIFT", "DIFFERENT"}
    assert driver.execute_script("return document.getElementById('f-sort').value") == "name"
    assert driver.execute_script(
        "return document.querySelector(\"input[name=tier][value='NEAR']\").checked") is False


def test_repeated_errors_show_as_one_card_until_opened(driver, report):
    paths, raw, (_, error_id) = report
    open_report(driver, paths, "#tier=ERROR")
    n_same = sum(it.get("error") == SAME_ERROR for it in raw["items"])
    ids = driver.execute_script("return [...document.querySelectorAll('#cards article.card')].map(c => c.dataset.id)")
    grouped = [i for i in ids if next(it for it in raw["items"] if it["id"] == i).get("error") == SAME_ERROR]
    assert n_same == 3 and len(grouped) == 1
    chip = driver.find_element("css selector", ".chip.errgroup")
    assert chip.text == "+ 2 more item(s) with this error"
    chip.click()
    ids = driver.execute_script("return [...document.querySelectorAll('#cards article.card')].map(c => c.dataset.id)")
    assert sum(next(it for it in raw["items"] if it["id"] == i).get("error") == SAME_ERROR for i in ids) == 3
    # a permalink to a grouped-away item still opens it
    hidden = [it["id"] for it in raw["items"] if it.get("error") == SAME_ERROR and it["id"] != grouped[0]][0]
    _open(driver, paths, hidden)
    assert driver.execute_script("var c = document.querySelector('.card.open'); return c && c.dataset.id") == hidden
