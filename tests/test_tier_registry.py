"""The verdict tiers are declared once (parity/tier.py): a tier registered in a fixture is decided by the
comparison, accepted as a gate in a case file, run through `parity run`, and shown by the CLI table, the verdict
line, markdown, JUnit and the HTML page with no other change; without it, a case file naming it is a one-line
error. No other module holds a tier name as a string literal (beyond one), and the page's CSS and script hold none.
"""

from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import parity
import parity.tier as tier_mod
from parity.tier import Band, Tier

PARITY = Path(parity.__file__).parent
BUILT_IN = ("EXACT", "NEAR", "DRIFT", "DIFFERENT", "ERROR")
CLOSE = Tier("CLOSE", "#0a7ea4", "misses NEAR's floor, luma SSIM at least 0.5", band=Band("ssim_y", 0.5))


def tier_literal_modules(root: Path) -> dict[str, list[int]]:
    """Module (relative path) -> lines of string constants that are exactly a built-in tier name."""
    found: dict[str, list[int]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lines = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in BUILT_IN]
        if lines:
            found[path.relative_to(root).as_posix()] = lines
    return found


def test_tier_names_are_string_literals_in_the_home_only():
    found = tier_literal_modules(PARITY)
    assert "tier.py" in found and len(found) <= 2, found


def test_no_module_keeps_its_own_copy_of_the_tier_tuple():
    """`from parity.tier import TIERS` would freeze the tuple at import: a registered tier would be missed."""
    offenders = []
    for path in sorted(PARITY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "parity.tier" and \
                    any(a.name == "TIERS" for a in node.names):
                offenders.append(path.relative_to(PARITY).as_posix())
    assert not offenders


def test_the_page_has_no_tier_of_its_own():
    static = PARITY / "report" / "static"
    css, js = (static / "report.css").read_text(), (static / "report.js").read_text()
    assert not re.search(r"\b(" + "|".join(BUILT_IN) + r")\b", css)
    assert not re.search(r"""['"](""" + "|".join(BUILT_IN) + r""")['"]""", js)


def test_the_registry_orders_and_explains():
    assert tier_mod.tier_names() == BUILT_IN
    assert tier_mod.explaining_tiers() == ("EXACT", "NEAR")
    assert tier_mod.gate_names() == BUILT_IN[:-1] and tier_mod.DEFAULT_GATE == "NEAR"
    assert tier_mod.meets_gate("near", "DRIFT") and not tier_mod.meets_gate("DRIFT", "NEAR")
    assert not tier_mod.meets_gate("ERROR", "DIFFERENT")
    assert tier_mod.worst_tier(["NEAR", "DIFFERENT", "DRIFT"]) == "DIFFERENT"
    with pytest.raises(ValueError, match="must be one of EXACT, NEAR, DRIFT, DIFFERENT, got 'ERROR'"):
        tier_mod.parse_gate("ERROR")
    with pytest.raises(ValueError, match="not a #rrggbb colour"):
        Tier("X", "red;}", "bad colour")


@pytest.fixture
def close_tier(monkeypatch):
    """CLOSE registered between NEAR and DRIFT, for one test."""
    at = tier_mod.tier_names().index("DRIFT")
    monkeypatch.setattr(tier_mod, "TIERS", tier_mod.TIERS[:at] + (CLOSE,) + tier_mod.TIERS[at:])
    return CLOSE


def test_a_registered_tier_is_decided_by_its_band(close_tier):
    from parity.compare.tiers import Thresholds, decide_tier

    m = {"max_abs": 40, "phash_distance": 2, "window_density": 0.5}
    assert decide_tier(dict(m, ssim_y=0.6), Thresholds())[0] == "CLOSE"
    assert decide_tier(dict(m, ssim_y=0.6), Thresholds())[1].endswith("ssim_y 0.6000 >= 0.5")
    assert decide_tier(dict(m, ssim_y=0.45), Thresholds())[0] == "DRIFT"
    assert decide_tier(dict(m, ssim_y=0.995, window_density=0.0), Thresholds())[0] == "NEAR"
    assert decide_tier(dict(m, ssim_y=0.6), Thresholds(), resampled=True)[0] == "DRIFT"  # at best DRIFT
    assert tier_mod.tier_rank("CLOSE") == 2 and tier_mod.meets_gate("CLOSE", "CLOSE")
    assert not tier_mod.meets_gate("DRIFT", "CLOSE") and not tier_mod.explains("CLOSE")


def _pair(folder: Path) -> tuple[Path, Path]:
    """A lossless preview and a render with light noise on it: luma SSIM about 0.96, below NEAR's 0.99."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64]
    preview = np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.float32)
    render = np.clip(preview + np.random.default_rng(0).normal(0, 3, preview.shape), 0, 255)
    paths = folder / "preview.png", folder / "render.png"
    for path, image in zip(paths, (preview, render)):
        Image.fromarray(image.astype(np.uint8)).save(path)
    return paths


def test_parity_compare_decides_and_gates_a_registered_tier(close_tier, tmp_path, capsys):
    from parity.cli import main

    preview, render = _pair(tmp_path)
    assert main(["compare", str(render), str(preview), "--gate", "CLOSE", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tier"] == "CLOSE" and 0.5 <= out["ssim_y"] < 0.99
    assert main(["compare", str(render), str(preview), "--gate", "NEAR"]) == 1


def test_parity_compare_refuses_an_unknown_gate_in_one_line(tmp_path, capsys):
    from parity.cli import main

    preview, render = _pair(tmp_path)
    assert main(["compare", str(render), str(preview), "--json"]) == 1  # DRIFT without the registered tier
    assert json.loads(capsys.readouterr().out)["tier"] == "DRIFT"
    assert main(["compare", str(render), str(preview), "--gate", "CLOSE"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "parity: error: --gate must be one of EXACT, NEAR, DRIFT, DIFFERENT, got 'CLOSE'"


@pytest.fixture(scope="module")
def small_job(tiny_model_dir, tmp_path_factory) -> Path:
    from parity.demo import demo_config, write_job

    root = tmp_path_factory.mktemp("tier-job")
    cfg = demo_config(root)
    cfg["config"]["process"][0]["sample"].update(width=32, height=32, sample_steps=2, prompts=["a cat"])
    cfg["config"]["process"][0]["train"]["steps"] = 200
    return write_job(root / "tj", tiny_model_dir, config=cfg, checkpoints={100: 0.5})


def _case(folder: Path, job: Path, base: Path, gate: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "close.yaml"
    path.write_text(f"name: close\njob: {job}\nbase_model: {base}\ninference:\n  set: {{network_multiplier: 0.9}}\n"
                    f"attribution: false\nexpect:\n  min_tier: {gate}\n")
    return path


def test_a_registered_tier_runs_end_to_end(close_tier, small_job, tiny_model_dir, tmp_path, capsys):
    from parity.cli import main
    from parity.report.summary import verdict

    case = _case(tmp_path / "cases", small_job, tiny_model_dir, "CLOSE")
    out = tmp_path / "rep"
    code = main(["run", str(case), "--out", str(out), "-q", "--determinism-check", "off", "--github"])
    table = capsys.readouterr().out
    items = json.loads((out / "results.json").read_text())["items"]
    assert [it["tier"] for it in items] == ["CLOSE"], [(it["tier"], it["reason"]) for it in items]
    assert code == 0 and items[0]["gate"] == "CLOSE" and items[0]["passed"]
    assert re.search(r"close\[step100-p0\]\s+CLOSE\s+[\d.]+\s+ok", table) and "CLOSE=1" in table
    assert verdict(dict(items[0], gate="NEAR", passed=False)).line.startswith("tier CLOSE (gate NEAR)")
    md = (out / "summary.md").read_text()
    assert "| EXACT | NEAR | CLOSE | DRIFT | DIFFERENT | ERROR |" in md and "| 0 | 0 | 1 | 0 | 0 | 0 |" in md
    assert "| EXACT | NEAR | CLOSE | DRIFT | DIFFERENT | ERROR |" in (out / "pr-comment.md").read_text()
    props = {p.get("name"): p.get("value") for p in ET.parse(out / "junit.xml").getroot().iter("property")}
    assert props["tier"] == "CLOSE" and props["gate"] == "CLOSE"
    page = (out / "index.html").read_text()
    assert ".t-CLOSE { --t: #0a7ea4; }" in page and 'data-tier="CLOSE"' in page
    from parity.report.html import report_json_blob

    blob = report_json_blob(page)
    assert [t["name"] for t in blob["tiers"]] == ["EXACT", "NEAR", "CLOSE", "DRIFT", "DIFFERENT", "ERROR"]
    assert blob["items"][0]["texts"]["verdict"] == {"mark": "ok",
                                                    "line": "tier CLOSE (gate CLOSE); mismatched: lora_scale"}


def test_a_removed_tier_is_a_one_line_error_in_a_case_file(small_job, tiny_model_dir, tmp_path, capsys):
    from parity.cases import load_case
    from parity.cli import main
    from parity.errors import ConfigError

    case = _case(tmp_path / "cases", small_job, tiny_model_dir, "CLOSE")
    with pytest.raises(ConfigError) as e:
        load_case(case)
    assert str(e.value) == (f"{case}: expect.min_tier (line 8): must be one of EXACT, NEAR, DRIFT, DIFFERENT, "
                            "got 'CLOSE'")
    assert main(["run", str(case), "--out", str(tmp_path / "rep"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expect.min_tier (line 8): must be one of" in err
