"""Regenerate docs/report-overview.png and docs/report-item.png: a synthetic run of five cases with a 100-step
timeline each, in headless Chromium (needs chromium + chromedriver, as tests/test_report_browser.py).

    PYTHONPATH=. python docs/screenshots.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _shrink(path: Path) -> None:
    """A 256-colour PNG: the noisy synthetic images make full-colour screenshots megabytes."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def main() -> None:
    from test_report_browser import chromium_driver, open_report

    from parity.report import load, synthetic_results, write_report

    d = Path(tempfile.mkdtemp(prefix="parity-shots-"))
    res = load(synthetic_results(500, d / "run", image_size=96, cases=5, prompts=1))
    paths = write_report(res, d / "report", thumb_budget_s=None)
    drv = chromium_driver(1400, 1000)
    try:
        open_report(drv, paths)
        time.sleep(0.3)
        drv.save_screenshot(str(ROOT / "docs" / "report-overview.png"))
        it = next(i for i in res.items if i["tier"] == "DIFFERENT" and i.get("schedule") and i["step"] > 5000)
        drv.set_window_size(1400, 1700)
        open_report(drv, paths, "#item=" + quote(it["id"], safe=""))
        drv.execute_script("var c = document.querySelector('.card.open');"
                           "window.scrollTo(0, c.getBoundingClientRect().top + window.scrollY - 110);")
        time.sleep(0.4)
        drv.save_screenshot(str(ROOT / "docs" / "report-item.png"))
    finally:
        drv.quit()
    for name in ("report-overview.png", "report-item.png"):
        _shrink(ROOT / "docs" / name)


if __name__ == "__main__":
    main()
