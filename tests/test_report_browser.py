"""The HTML report driven in headless Chromium (Debian's chromium + chromium-driver, via Selenium).

Skipped with a reason where the browser is absent (`apt-get install chromium chromium-driver`; .ci/run does it).
Screenshots of a demo-like report are kept in reports/screenshots/ as test artifacts."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from parity.report import load, synthetic_results, write_report
from parity.report.synthetic import HOSTILE_PROMPT

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "reports" / "screenshots"


def chromium_driver(width: int = 1400, height: int = 1000):
    """A headless Chromium with a fresh profile and browser + performance logs; skips when absent."""
    if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
        pytest.skip(f"headless browser tests need {CHROMIUM} and chromedriver "
                    "(apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="parity-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv._parity_profile = profile
    # Any alert() (an injected handler firing) is recorded instead of blocking the page.
    drv.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                        {"source": "window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };"})
    return drv


@pytest.fixture(scope="module")
def driver():
    drv = chromium_driver()
    yield drv
    drv.quit()
    shutil.rmtree(drv._parity_profile, ignore_errors=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser-run")
    res = synthetic_results(60, d / "run", hostile=True, image_size=96)
    paths = write_report(load(res), d / "report")
    return paths, json.loads(Path(res).read_text())


def open_report(drv, paths, fragment: str = ""):
    drv.get(paths.index.as_uri() + fragment)
    for _ in range(200):
        if drv.execute_script("return document.body && document.body.dataset.ready === '1'"):
            return
        time.sleep(0.02)
    raise AssertionError("the report script never finished initialising")


def visible_tiers(drv):
    return drv.execute_script("return [...document.querySelectorAll('#cards article.card')].map(c => c.dataset.tier)")


def test_loads_without_console_errors_or_network(driver, report):
    paths, raw = report
    driver.get_log("performance")  # drop earlier entries
    driver.get_log("browser")
    open_report(driver, paths)
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # trigger lazy images and cards
    time.sleep(0.5)
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    assert urls, "the performance log recorded no requests at all"
    assert [u for u in urls if not u.startswith(("file://", "data:", "about:"))] == []
    n_cards = driver.execute_script("return document.querySelectorAll('#cards article.card').length")
    assert 0 < n_cards <= len(raw["items"])


def test_tier_filter_changes_visible_cards(driver, report):
    paths, raw = report
    open_report(driver, paths)
    before = visible_tiers(driver)
    assert len(set(before)) > 1
    n_different = sum(it["tier"] == "DIFFERENT" for it in raw["items"])
    driver.find_element("css selector", ".tierchip[data-tier='DIFFERENT']").click()
    after = visible_tiers(driver)
    assert after == ["DIFFERENT"] * n_different
    assert driver.find_element("id", "count").text == f"showing {n_different} of {len(raw['items'])}"
    # unticking a tier checkbox removes exactly that tier
    open_report(driver, paths)
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    driver.find_element("css selector", "input[name=tier][value='NEAR']").click()
    assert "NEAR" not in visible_tiers(driver)
    shown = int(driver.find_element("id", "count").text.split()[1])
    assert shown == sum(it["tier"] != "NEAR" for it in raw["items"])


def _open_first_with_render(drv, raw, paths):
    it = next(i for i in raw["items"] if i["tier"] in ("DRIFT", "DIFFERENT") and "render" in i["paths"])
    open_report(drv, paths, "#item=" + quote(it["id"], safe=""))
    return it


def test_slider_and_blink_change_what_is_shown(driver, report):
    paths, raw = report
    _open_first_with_render(driver, raw, paths)
    body = driver.find_element("tag name", "body")
    body.send_keys("2")  # slider
    top = ".card.open .pane.compare .clipper"
    clip0 = driver.execute_script(f"return document.querySelector('{top}').style.clipPath")
    assert clip0 == "inset(0px 0px 0px 50%)"
    rng = driver.find_element("css selector", ".card.open input.slider-range")
    driver.execute_script("arguments[0].value = 20; arguments[0].dispatchEvent(new Event('input'))", rng)
    assert driver.execute_script(f"return document.querySelector('{top}').style.clipPath") == "inset(0px 0px 0px 20%)"
    # dragging on the pane moves the split too
    pane = driver.find_element("css selector", ".card.open .pane.compare")
    from selenium.webdriver import ActionChains

    # (offsets are from the element's centre: +30 % of the width lands at 80 %)
    ActionChains(driver).move_to_element_with_offset(pane, int(pane.size["width"] * 0.3), 0).click_and_hold() \
        .move_by_offset(5, 0).release().perform()
    clip2 = driver.execute_script(f"return document.querySelector('{top}').style.clipPath")
    assert clip2 != "inset(0px 0px 0px 20%)" and clip2.startswith("inset(0px 0px 0px 8")
    body.send_keys("4")  # blink
    seen = set()
    for _ in range(40):
        seen.add(driver.execute_script(
            "var p = document.querySelector('.card.open .pane.compare');"
            "return p.dataset.showing + ':' + p.querySelector('img.layer.over').style.visibility"))
        time.sleep(0.05)
    assert seen == {"render:visible", "preview:hidden"}
    body.send_keys("m")  # m cycles: blink -> difference
    assert driver.execute_script("return document.querySelector('.card.open .viewer').className") == "viewer mode-diff"
    assert driver.execute_script(
        "return getComputedStyle(document.querySelector('.card.open .pane.compare img.layer.over')).mixBlendMode"
    ) == "difference"


def test_zoom_moves_all_panes_together(driver, report):
    paths, raw = report
    _open_first_with_render(driver, raw, paths)
    driver.find_element("tag name", "body").send_keys("1")
    driver.find_element("tag name", "body").send_keys("+")
    transforms = driver.execute_script(
        "return [...document.querySelectorAll('.card.open .stage')].map(s => s.style.transform)")
    assert len(transforms) == 3 and len(set(transforms)) == 1 and "scale(1.5)" in transforms[0]


def test_heatmap_lines_up_with_the_images_and_its_legend_sits_beside_it(driver, report):
    paths, raw = report
    _open_first_with_render(driver, raw, paths)
    driver.find_element("tag name", "body").send_keys("1")  # side by side
    for _ in range(100):
        sizes = driver.execute_script(
            "return [...document.querySelectorAll('.card.open .pane img.layer')].map("
            "i => [i.naturalWidth, i.naturalHeight, Math.round(i.getBoundingClientRect().width),"
            " Math.round(i.getBoundingClientRect().height)])")
        if len(sizes) == 3 and all(s[0] for s in sizes):
            break
        time.sleep(0.05)
    assert len(sizes) == 3 and len({tuple(s) for s in sizes}) == 1, sizes   # same pixels, same box
    legend = driver.execute_script(
        "var l = document.querySelector('.card.open .viewer .hlegend');"
        "return l && {ticks: [...l.querySelectorAll('.hticks span')].map(s => s.textContent),"
        " title: l.querySelector('.htitle').textContent, bar: getComputedStyle(l.querySelector('.hbar')).backgroundImage}")
    assert legend and legend["ticks"] == ["0", "8", "16", "24", "32+"], legend
    assert "levels" in legend["title"] and legend["bar"].startswith("linear-gradient")
    # below the heatmap, not over it
    assert driver.execute_script(
        "var p = document.querySelector('.card.open .panecol .pane').getBoundingClientRect();"
        "return document.querySelector('.card.open .hlegend').getBoundingClientRect().top >= p.bottom - 1")


def test_permalink_opens_its_item(driver, report):
    paths, raw = report
    target = raw["items"][-3]
    open_report(driver, paths, "#item=" + quote(target["id"], safe=""))
    opened = driver.execute_script("var c = document.querySelector('.card.open'); return c && c.dataset.id")
    assert opened == target["id"]
    top = driver.execute_script("return document.querySelector('.card.open').getBoundingClientRect().top")
    assert 0 <= top < 400
    # the hostile id (quotes and markup in it) round-trips through the hash as well
    hostile = next(it for it in raw["items"] if "<svg" in it["id"])
    open_report(driver, paths, "#item=" + quote(hostile["id"], safe=""))
    assert driver.execute_script("return document.querySelector('.card.open').dataset.id") == hostile["id"]
    # keyboard: j moves to the next card in the list
    order = driver.execute_script("return [...document.querySelectorAll('#cards article.card')].map(c => c.dataset.id)")
    driver.find_element("tag name", "body").send_keys("j")
    now = driver.execute_script("return document.querySelector('.card.open').dataset.id")
    assert order.index(now) == order.index(hostile["id"]) + 1
    assert driver.execute_script("return decodeURIComponent(location.hash.slice(6))") == now


def test_noise_floor_section_explains_the_verdict(driver, report):
    paths, raw = report
    target = next(it for it in raw["items"] if it.get("noise_floor"))
    open_report(driver, paths, "#item=" + quote(target["id"], safe=""))
    text = driver.execute_script("var s = document.querySelector('.card.open .sec.noisefloor'); return s && s.innerText")
    assert text and "Noise floor" in text and "DRIFT → NEAR" in text and "rounding cells" in text
    chips = driver.execute_script("return document.querySelector('.card.open .chips').innerText")
    assert "within noise floor" in chips


def test_hostile_prompt_is_text_and_nothing_fires(driver, report):
    paths, raw = report
    hostile = next(it for it in raw["items"] if it["prompt"] == HOSTILE_PROMPT)
    open_report(driver, paths, "#item=" + quote(hostile["id"], safe=""))
    time.sleep(0.3)
    texts = driver.execute_script(
        "return [...document.querySelectorAll('.card.open .prompt')].map(p => p.textContent)")
    assert texts == [HOSTILE_PROMPT]
    assert driver.execute_script("return window.__alerts") == []
    assert driver.execute_script(
        "return document.querySelectorAll('img[src=\"x\"], img[src=\"y\"], svg[onload], [onerror]').length") == 0
    # the parameter table shows the prompt knob as text too, quoted as parity.values.knob_text writes a prompt
    cells = driver.execute_script(
        "return [...document.querySelectorAll('.card.open table.kv td .val')].map(v => v.textContent)")
    assert repr(HOSTILE_PROMPT) in cells


def test_screenshots_of_a_demo_report(driver, report):
    paths, raw = report
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    open_report(driver, paths)
    time.sleep(0.4)
    assert driver.save_screenshot(str(SCREENSHOTS / "report-overview.png"))
    it = next(i for i in raw["items"] if i["tier"] == "DIFFERENT" and i["schedule"] and "<" not in i["id"])
    open_report(driver, paths, "#item=" + quote(it["id"], safe=""))
    driver.find_element("tag name", "body").send_keys("2")
    driver.set_window_size(1400, 1500)
    try:
        driver.execute_script("document.querySelector('.card.open').scrollIntoView()")
        time.sleep(0.4)
        assert driver.save_screenshot(str(SCREENSHOTS / "report-item-slider.png"))
    finally:
        driver.set_window_size(1400, 1000)
    assert (SCREENSHOTS / "report-overview.png").stat().st_size > 10_000


def test_size_mismatch_reads_as_sizes_on_the_card_and_in_its_detail(driver, tmp_path):
    """The chip and the detail both say "render 64x64, preview 96x64" (the detail printed the raw JSON)."""
    res = load(synthetic_results(6, tmp_path / "run", image_size=32))
    res.items[0]["size_mismatch"] = {"render": [64, 64], "preview": [96, 64]}
    paths = write_report(res, tmp_path / "report")
    open_report(driver, paths, "#item=" + quote(res.items[0]["id"], safe=""))
    texts = driver.execute_script("var c = document.querySelector('.card.open');"
                                  "return [...c.querySelectorAll('.chip.mis, p.warn')].map(e => e.textContent)"
                                  ".filter(t => t.startsWith('size mismatch'))")
    assert texts == ["size mismatch: render 64x64, preview 96x64"] * 2, texts
