"""The knob registry (parity.knobs) is the one home of a knob: a throwaway knob + setting registered in a fixture
reaches the plan, `--set`, the limits, request files, the parameter diff, attribution and the report with no other
change, and an entry taken out of the registry is refused by each of them.

The throwaway is `sharpness` (float 0..2, AI Toolkit default 1, config key `sample.sharpness`, alias `sharp`): a
setting the engine does not read, so it lives in RenderSpec.extra. Expected values follow from the fixture's
declaration and the demo job's config, not from the code under test."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from parity import coerce, knobs
from parity.cli import main
from parity.diagnose import InferenceSettings, attribute, item_diff, parse_overrides
from parity.diagnose.request import parse_request
from parity.diagnose.settings import inference_spec
from parity.errors import ConfigError
from parity.job import load_job
from parity.spec import RenderSpec

DEMO_JOB = Path(__file__).resolve().parents[1] / "demo" / "output" / "tiny-portrait"


@pytest.fixture
def sharpness(monkeypatch):
    """The throwaway setting and knob, registered for one test (monkeypatch takes them out again)."""
    setting = knobs.Setting("sharpness", coerce.as_float, float, ("sharp",), limit=knobs.Range(0.0, 2.0),
                            request_limit=knobs.Range(0.0, 2.0), config_key="sample.sharpness", default=1.0,
                            plan=knobs.PlanColumn("sharp"), plan_source=True)
    monkeypatch.setitem(knobs.SETTINGS, "sharpness", setting)
    monkeypatch.setitem(knobs.KNOBS_TABLE, "sharpness", knobs.Knob("sharpness", ("sharpness",), prior=6))
    return setting


@pytest.fixture
def job_dir(tmp_path):
    """The demo job with `sharpness: 0.5` in its sample block (one line added to the config)."""
    if not (DEMO_JOB / "config.yaml").is_file():
        pytest.skip("demo data not built (parity demo --prepare)")
    out = tmp_path / "tiny-portrait"
    shutil.copytree(DEMO_JOB, out)
    text = (out / "config.yaml").read_text()
    assert "      sample_every: 100\n" in text
    (out / "config.yaml").write_text(text.replace("      sample_every: 100\n",
                                                  "      sample_every: 100\n      sharpness: 0.5\n"))
    return out


def _plan(job: Path, capsys) -> tuple[str, list[dict]]:
    assert main(["plan", str(job), "--step", "all"]) == 0
    table = capsys.readouterr().out
    assert main(["plan", str(job), "--step", "all", "--json"]) == 0
    return table, json.loads(capsys.readouterr().out)


def test_plan_shows_the_setting_from_its_config_key(sharpness, job_dir, capsys):
    table, records = _plan(job_dir, capsys)
    assert records and all(r["sharpness"] == 0.5 and r["sources"]["sharpness"] == "block" for r in records)
    head = next(line for line in table.splitlines() if line.startswith("step"))
    assert "sharp" in head.split()
    assert "0.5 [B]" in table


def test_plan_uses_the_declared_default_when_the_config_leaves_it_out(sharpness, capsys):
    if not (DEMO_JOB / "config.yaml").is_file():
        pytest.skip("demo data not built (parity demo --prepare)")
    _, records = _plan(DEMO_JOB, capsys)
    assert all(r["sharpness"] == 1.0 and r["sources"]["sharpness"] == "default" for r in records)


def test_job_reader_checks_the_range(sharpness, job_dir):
    cfg = job_dir / "config.yaml"
    cfg.write_text(cfg.read_text().replace("sharpness: 0.5", "sharpness: 9"))
    with pytest.raises(ConfigError, match="sharpness"):
        load_job(job_dir)


def _first_item(job_dir: Path):
    job = load_job(job_dir)
    return job, job.items("all")[0]


def test_set_alias_reaches_the_parameter_diff(sharpness, job_dir):
    job, item = _first_item(job_dir)
    settings = InferenceSettings.preview().with_overrides(parse_overrides(["sharp=1.5"]))
    inf, diff = item_diff(item, job, settings)
    assert inf.spec.value("sharpness") == 1.5 and inf.source("sharpness") == "override"
    assert diff.mismatches == ["sharpness"]
    row = diff.row("sharpness").to_dict()
    assert row["preview"] == {"value": 0.5, "source": "block"}
    assert row["inference"] == {"value": 1.5, "source": "override"}


def test_set_out_of_range_is_refused_in_one_line(sharpness, capsys):
    with pytest.raises(ConfigError) as e:
        parse_overrides(["sharp=9"])
    assert "sharpness" in str(e.value) and "0..2" in str(e.value) and "\n" not in str(e.value)
    if (DEMO_JOB / "config.yaml").is_file():
        assert main(["diff", str(DEMO_JOB), "--set", "sharp=9"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "0..2" in err


def test_request_key_is_parsed_and_range_checked(sharpness, tmp_path):
    req = {"model": "flux2", "prompts": [{"prompt": "a cat", "sharpness": 1.25}], "loras": []}
    parsed = parse_request(req, tmp_path / "r.json")
    assert parsed.prompts[0].extra == (("sharpness", 1.25),)
    preview = RenderSpec(prompt="a cat", width=64, height=64, seed=0, sample_steps=8, guidance_scale=4.0)
    from parity.spec import ResolvedSpec

    inf = inference_spec(ResolvedSpec(preview), 0, replace(InferenceSettings(), kind="request", request=parsed))
    assert inf.spec.value("sharpness") == 1.25 and inf.source("sharpness") == "request"
    req["prompts"][0]["sharpness"] = 9
    with pytest.raises(ConfigError, match=r"prompts\[0\]\.sharpness: 9 is outside the allowed range 0\.\.2"):
        parse_request(req, tmp_path / "r.json")


def _render(spec: RenderSpec) -> np.ndarray:
    """A fake render that depends on the throwaway setting only."""
    return np.full((4, 4), float(spec.value("sharpness", 1.0)))


def _score(image: np.ndarray, target: float) -> float:
    return 1.0 - min(1.0, abs(float(image.mean()) - target))


def test_attribution_aligns_the_setting(sharpness):
    preview = RenderSpec(prompt="a", width=64, height=64, seed=0, sample_steps=8, guidance_scale=4.0)
    inference = knobs.with_settings(preview, sharpness=1.5)
    a = attribute(1.0, preview, inference, _render, _score)
    assert a.knobs == ["sharpness"]
    cause = a.causes[0]
    assert (cause.knob, cause.value_preview, cause.value_inference) == ("sharpness", 1.0, 1.5)
    assert cause.ssim_aligned == pytest.approx(1.0) and a.explained is True


def test_report_data_carries_the_knob(sharpness, job_dir, tmp_path):
    from parity.report import load, synthetic_results, write_report

    job, item = _first_item(job_dir)
    _, diff = item_diff(item, job, InferenceSettings.preview().with_overrides(parse_overrides(["sharp=1.5"])))
    results = load(synthetic_results(2, tmp_path / "run", image_size=32))
    d = diff.to_dict()
    results.items[0].update(params=d["params"], mismatches=d["mismatches"], tier="DRIFT")
    paths = write_report(results, tmp_path / "out", thumbnails=False)
    html = Path(paths.index).read_text()
    assert '"sharpness"' in html and "| sharpness |" in Path(paths.markdown).read_text()


def test_without_the_entry_each_stage_refuses_it(tmp_path):
    assert "sharpness" not in knobs.SETTINGS   # no fixture here: the registry does not know it
    with pytest.raises(ConfigError, match="unknown setting 'sharp'"):
        parse_overrides(["sharp=1.5"])
    preview = RenderSpec(prompt="a", width=64, height=64, seed=0, sample_steps=8, guidance_scale=4.0)
    with pytest.raises(ValueError, match="unknown knob"):
        attribute(1.0, preview, preview, _render, _score, knobs=["sharpness"])
    req = {"model": "flux2", "prompts": [{"prompt": "a cat", "sharpness": 1.25}], "loras": []}
    assert parse_request(req, tmp_path / "r.json").prompts[0].extra == ()


def test_removing_an_alias_makes_set_refuse_it(monkeypatch):
    assert parse_overrides(["cfg=4"]) == {"guidance_scale": 4.0}
    guidance = knobs.setting("guidance_scale")
    monkeypatch.setitem(knobs.SETTINGS, "guidance_scale", replace(guidance, aliases=("guidance",)))
    with pytest.raises(ConfigError, match="unknown setting 'cfg'"):
        parse_overrides(["cfg=4"])
    assert "cfg" not in knobs.valid_keys()


def test_removing_a_knob_takes_it_out_of_the_diff(monkeypatch):
    preview = RenderSpec(prompt="a", width=64, height=64, seed=0, sample_steps=8, guidance_scale=4.0)
    inference = preview.with_(guidance_scale=7.0)
    # a new table without the entry (deleting and restoring in place would move it to the end of the order)
    monkeypatch.setattr(knobs, "KNOBS_TABLE", {k: v for k, v in knobs.KNOBS_TABLE.items() if k != "guidance"})
    from parity.diagnose.paramdiff import align, differing_knobs

    assert differing_knobs(preview, inference) == []
    with pytest.raises(KeyError, match="unknown knob"):
        align(inference, preview, "guidance")


def test_extra_slot_keeps_existing_specs_unchanged(sharpness):
    spec = RenderSpec(prompt="a", width=64, height=64, seed=0, sample_steps=8, guidance_scale=4.0)
    assert "extra" not in spec.to_dict()
    assert spec.with_(seed=1) == RenderSpec(prompt="a", width=64, height=64, seed=1, sample_steps=8,
                                            guidance_scale=4.0)
    moved = knobs.with_settings(spec, sharpness=1.5)
    assert moved.extra == (("sharpness", 1.5),) and moved.to_dict()["extra"] == {"sharpness": 1.5}
    assert moved != spec and hash(moved.with_(seed=0)) == hash(moved)


def test_a_name_no_setting_has_is_refused_not_carried_in_extra(sharpness, monkeypatch):
    """A typo (or a setting taken out of the registry) never rides along silently in the extra slot."""
    spec = RenderSpec(prompt="a", width=64, height=64, seed=0, sample_steps=8, guidance_scale=4.0)
    with pytest.raises(TypeError):
        spec.with_(sample_step=3)
    with pytest.raises(KeyError, match="sample_step"):
        knobs.with_settings(spec, sample_step=3)
    monkeypatch.delitem(knobs.SETTINGS, "sharpness")
    with pytest.raises(KeyError, match="sharpness"):
        knobs.with_settings(spec, sharpness=1.5)


def test_recovery_searches_the_axes_the_registry_declares(sharpness, monkeypatch):
    """Parameter recovery takes its knobs and value spaces from the registry: a throwaway knob given a search axis
    is searched (its probes set RenderSpec.extra), a changed axis changes the grid, the coarse values and the
    screening step, and a knob whose axis is taken out is not searched."""
    from parity.diagnose import recover, scan

    axis = knobs.SearchAxis(0.0, 2.0, 0.1, 0.3, (0.2, 1.8), 0.25, False, 0.1, 0.1, rank=9)
    monkeypatch.setitem(knobs.KNOBS_TABLE, "sharpness", knobs.Knob("sharpness", ("sharpness",), prior=6, axis=axis))
    spec = RenderSpec(prompt="a", width=64, height=64, seed=0, sample_steps=20, guidance_scale=4.0,
                      lora_path="/l.safetensors", extra=(("sharpness", 1.0),))
    axes = {a.knob: a for a in recover.axes_for(spec)}
    assert list(axes)[-1] == "sharpness"                       # rank 9: after the four built-in knobs
    sharp = axes["sharpness"]
    assert (sharp.lo, sharp.hi, sharp.resolution, sharp.first_step, sharp.start) == (0.0, 2.0, 0.1, 0.3, 1.0)
    assert [sharp.value(i) for i in scan.coarse_indices(sharp)] == [0.2, 1.8]
    assert sharp.apply(spec, sharp.index(1.5)).value("sharpness") == 1.5

    guidance = knobs.KNOBS_TABLE["guidance"]
    wider = replace(guidance.axis, hi=30.0, coarse=(2.0, 20.0), first_step=3.0)
    monkeypatch.setitem(knobs.KNOBS_TABLE, "guidance", replace(guidance, axis=wider))
    g = {a.knob: a for a in recover.axes_for(spec)}["guidance"]
    assert (g.hi, g.first_step) == (30.0, 3.0)
    assert [g.value(i) for i in scan.coarse_indices(g)] == [2.0, 20.0]

    monkeypatch.setitem(knobs.KNOBS_TABLE, "guidance", replace(guidance, axis=None))
    assert "guidance" not in {a.knob for a in recover.axes_for(spec)}

def test_a_knobs_value_reads_in_the_format_its_entry_names(sharpness, monkeypatch):
    """How a value reads is part of the knob's entry (`text`): the throwaway reads plain, then as a size once its
    entry says so; every format an entry names exists."""
    from parity.values import TEXT_FORMATS, knob_text

    assert knob_text("sharpness", [96, 64]) == "96, 64"
    monkeypatch.setitem(knobs.KNOBS_TABLE, "sharpness", knobs.Knob("sharpness", ("sharpness",), text="size"))
    assert knob_text("sharpness", [96, 64]) == "96x64"
    assert knob_text("prompt", " zk9 ") == "' zk9 '"          # the built-in prompt knob: quoted
    assert {k.text for k in knobs.KNOBS_TABLE.values()} <= set(TEXT_FORMATS)
