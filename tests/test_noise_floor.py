"""Irreducible-only items judged against a measured noise floor (issue 11).

The floor is measured, not assumed: the render against a twin that differs by one sample of the irreducible
difference. The end-to-end tests reproduce the situation it exists for: AI Toolkit samples previews with the live
fp32 LoRA but saves the checkpoint in bf16, so a perfect re-render still differs by the rounding of the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from parity.compare.tiers import Thresholds, decide_floor_tier

# ------------------------------------------------------------------------------------------------ tier rule (pure)

T = Thresholds()


def _m(ssim_y: float, window: float = 0.0) -> dict[str, float]:
    return {"ssim_y": ssim_y, "window_density": window}


def test_drift_within_the_measured_floor_becomes_near():
    tier, reason = decide_floor_tier("DRIFT", _m(0.995), _m(0.997), T, knobs=["lora_precision"])
    assert tier == "NEAR"
    assert "lora_precision" in reason and "within" in reason


def test_drift_above_the_floor_stays_drift():
    tier, reason = decide_floor_tier("DRIFT", _m(0.990), _m(0.997), T, knobs=["lora_precision"])
    assert tier == "DRIFT" and "above" in reason
    # the ratio is what decides: 3x the floor passes with noise_floor_ratio 4
    assert decide_floor_tier("DRIFT", _m(0.991), _m(0.997), Thresholds(noise_floor_ratio=4.0))[0] == "NEAR"


@pytest.mark.parametrize("tier", ["EXACT", "NEAR", "DIFFERENT", "ERROR"])
def test_only_drift_moves(tier):
    assert decide_floor_tier(tier, _m(0.5), _m(0.5), T)[0] == tier


def test_a_twin_identical_to_the_render_lifts_nothing():
    tier, reason = decide_floor_tier("DRIFT", _m(0.9999), _m(1.0), T)
    assert tier == "DRIFT" and "no noise" in reason


def test_resampled_comparisons_stay_drift():
    assert decide_floor_tier("DRIFT", _m(0.999), _m(0.99), T, resampled=True)[0] == "DRIFT"


def test_a_local_defect_is_not_excused_by_a_global_floor():
    # SSIM loss within the floor, but one window much worse than the twin's worst window
    assert decide_floor_tier("DRIFT", _m(0.999, window=0.5), _m(0.998, window=0.01), T)[0] == "DRIFT"
    assert decide_floor_tier("DRIFT", _m(0.999, window=0.1), _m(0.998, window=0.01), T)[0] == "NEAR"


def test_ratio_is_validated():
    from parity.errors import ConfigError

    with pytest.raises(ConfigError, match="noise_floor_ratio"):
        Thresholds.from_mapping({"noise_floor_ratio": -1})


# ------------------------------------------------------------------------------------------------ dithered LoRA

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dither_stays_in_each_values_rounding_cell(dtype):
    """Every dithered value rounds back to the saved one (torch's round-to-nearest cast is the judge), and the
    draws spread over the cell rather than sitting on the saved value."""
    from parity.engine.dither import dither, rounding_cell

    g = torch.Generator().manual_seed(0)
    q = (torch.randn(20000, generator=g) * 3).to(dtype)
    q[:4] = torch.tensor([0.0, 1.0, -2.5, 65504.0 if dtype == torch.float16 else 3.0e38]).to(dtype)
    w = dither(q, torch.Generator().manual_seed(1))
    assert w.dtype == torch.float32
    assert torch.equal(w.to(dtype), q)
    low, high = rounding_cell(q)
    pos = ((w - low) / (high - low))[4:]
    assert 0.0 <= float(pos.min()) < 0.01 and 0.99 < float(pos.max()) <= 1.0
    assert abs(float(pos.mean()) - 0.5) < 0.02
    assert float((w != q.float()).float().mean()) > 0.99


def test_dither_lora_file_keeps_keys_and_metadata(tmp_path):
    from safetensors import safe_open

    from parity.engine.dither import dither_lora_file
    from parity.tiny import TRANSFORMER_CONFIG, make_lora, save_aitk_lora

    src = save_aitk_lora(tmp_path / "l.safetensors", make_lora(TRANSFORMER_CONFIG, seed=1), step=5, name="l")
    info = dither_lora_file(src, tmp_path / "d.safetensors", seed=3)
    again = dither_lora_file(src, tmp_path / "d2.safetensors", seed=3)
    with safe_open(str(src), "pt") as a, safe_open(info["file"], "pt") as b, safe_open(again["file"], "pt") as c:
        assert sorted(a.keys()) == sorted(b.keys())
        assert json.loads(b.metadata()["training_info"]) == {"step": 5, "epoch": 0}
        for k in a.keys():
            assert b.get_tensor(k).dtype == torch.float32
            assert torch.equal(b.get_tensor(k).to(torch.bfloat16), a.get_tensor(k))
            assert torch.equal(b.get_tensor(k), c.get_tensor(k))  # deterministic for a seed
    assert info["source_dtypes"] == ["bfloat16"]


# ------------------------------------------------------------------------------------------------ twin planning


def test_twin_plans(tmp_path):
    from parity.diagnose.floor import KERNEL_SWITCHES, noise_twin
    from parity.tiny import TRANSFORMER_CONFIG, make_lora, save_aitk_lora
    from parity.spec import RenderSpec

    lora = save_aitk_lora(tmp_path / "l.safetensors", make_lora(TRANSFORMER_CONFIG, seed=1), step=5, name="l")
    spec = RenderSpec(prompt="p", width=64, height=64, seed=1, sample_steps=4, guidance_scale=4.0,
                      lora_path=str(lora))
    history = [(None, 1.0), (str(tmp_path / "gone_100.safetensors"), 1.0), (str(lora), 1.0)]
    twin = noise_twin(spec, ["lora_precision", "merge_history", "hardware"], merge_history=history,
                      work_dir=tmp_path / "nf")
    assert twin.knobs == ["lora_precision", "merge_history", "hardware"]
    assert twin.spec.lora_path != spec.lora_path and Path(twin.spec.lora_path).is_file()
    assert twin.merge_history == [(None, 1.0), (str(lora), 1.0), (str(lora), 1.0)]  # the missing round stood in
    flipped = dict(twin.spec.numerics)
    assert set(flipped) == set(KERNEL_SWITCHES) and set(flipped.values()) == {"diffusers"}
    # nothing to sample: no LoRA, nothing missing
    bare = noise_twin(spec.with_(lora_path=None), ["lora_precision", "merge_history"], merge_history=None,
                      work_dir=tmp_path / "nf")
    assert bare.knobs == [] and [u["knob"] for u in bare.unmeasured] == ["lora_precision", "merge_history"]


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def jobs(tiny_model_dir, tmp_path_factory):
    """Two jobs whose previews were sampled with fp32 LoRA weights while the checkpoint on disk is bf16:
    `faithful` saved exactly those weights (only their rounding differs); `tampered` saved weights 15 % weaker,
    a real difference the knob table cannot see."""
    from parity.demo import demo_config, write_job
    from parity.engine import Engine
    from parity.engine.weights import load_safetensors
    from parity.tiny import save_aitk_lora

    root = tmp_path_factory.mktemp("floor")
    engine = Engine(tiny_model_dir, device="cpu")
    out = {}
    for name, factor in (("faithful", 1.0), ("tampered", 0.85)):
        cfg = demo_config(root)
        cfg["config"]["process"][0]["sample"]["prompts"] = ["[trigger] portrait of a woman, soft window light",
                                                             "a red fox in deep snow"]
        job = write_job(root / name, tiny_model_dir, config=cfg, checkpoints={200: 1.0}, preview_steps=(200,),
                        engine=engine, lora_dtype="fp32")
        ck = job / f"{name}.safetensors"
        sd = load_safetensors(ck)
        save_aitk_lora(ck, {k: (v * factor).to(torch.bfloat16) for k, v in sd.items()}, step=200, name=name)
        out[name] = job
    return out


def _case(tmp_path: Path, job: Path, base: Path, **extra) -> Path:
    data = {"name": job.name, "job": str(job), "base_model": str(base), "steps": 200,
            "preview_hardware": "cpu", "attribution": False, "expect": {"min_tier": "NEAR"},
            # strict NEAR floor: the bf16 rounding of this LoRA alone is DRIFT by the standard rule
            "tiers": {"near_ceiling_ratio": 0.001}}
    data.update(extra)
    path = tmp_path / f"{job.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(case_paths, out_dir):
    from parity.cases import load_case
    from parity.runner import Runner
    from parity.run import plan_cases

    items, errors = plan_cases([load_case(p) for p in case_paths])
    assert not errors
    runner = Runner(out_dir, attribution=False, determinism="off")
    try:
        return {r.id: r.to_dict() for r in runner.run(items, lambda r: None)}
    finally:
        runner.close()


def test_precision_only_items_are_judged_against_their_noise_floor(jobs, tiny_model_dir, tmp_path):
    faithful = _case(tmp_path, jobs["faithful"], tiny_model_dir)
    tampered = _case(tmp_path, jobs["tampered"], tiny_model_dir)
    records = _run([faithful, tampered], tmp_path / "out")
    assert len(records) == 4
    for rid, r in records.items():
        print(rid, r["tier"], r.get("reason"), json.dumps(r.get("noise_floor", {}).get("metrics")))
        assert r["mismatches"] == [] and r["irreducible"] == ["lora_precision"]
        nf = r["noise_floor"]
        assert nf["tier_before"] == "DRIFT" and nf["knobs"] == ["lora_precision"]
        assert 0.0 < 1.0 - nf["metrics"]["ssim_y"] < 0.05
        assert len(nf["draws"]) == 2 and nf["metrics"]["ssim_y"] == min(nf["draws"])  # the larger of two losses
        if rid.startswith("faithful"):
            assert r["tier"] == "NEAR" and nf["applied"] and r["passed"], r
            assert "within the noise floor of lora_precision" in r["reason"]
        else:
            # 15 % weaker LoRA: far above the rounding noise; stays DRIFT and fails the gate
            assert r["tier"] == "DRIFT" and not nf["applied"] and not r["passed"], r
            assert 1.0 - r["metrics"]["ssim_y"] > 3 * (1.0 - nf["metrics"]["ssim_y"])
    # the dithered twin file is written once per LoRA file, in the run's folder
    # two dithered draws per LoRA file (TWINS), each written once
    assert len(list((tmp_path / "out" / "noise-floor").glob("*.safetensors"))) == 4


def test_noise_floor_can_be_turned_off_and_hardware_is_named(jobs, tiny_model_dir, tmp_path):
    case = _case(tmp_path, jobs["faithful"], tiny_model_dir, noise_floor=False, preview_hardware="NVIDIA H100")
    records = _run([case], tmp_path / "out")
    for r in records.values():
        assert r["tier"] == "DRIFT" and "noise_floor" not in r
        assert r["irreducible"] == ["lora_precision", "hardware"]
        hw = [d for d in r["irreducible_details"] if d["knob"] == "hardware"][0]
        assert hw["preview"] == "NVIDIA H100" and hw["inference"] == "cpu"


def test_case_tiers_are_validated_with_file_and_line(tmp_path):
    from parity.cases import load_case
    from parity.errors import ConfigError

    p = tmp_path / "c.yaml"
    p.write_text("job: x\ntiers:\n  near_ssim_y: 0.99\n  nearly: 1\n")
    with pytest.raises(ConfigError, match=r"tiers\.nearly \(line 4\): unknown threshold"):
        load_case(p)
    p.write_text("job: x\nnoise_floor: maybe\n")
    with pytest.raises(ConfigError, match="noise_floor"):
        load_case(p)
    p.write_text("job: x\ntiers: {near_ssim_y: 0.995}\npreview_hardware: cpu\n")
    c = load_case(p)
    assert c.tiers == {"near_ssim_y": 0.995} and c.preview_hardware == "cpu" and c.noise_floor


def test_floor_result_is_in_the_reports(jobs, tiny_model_dir, tmp_path):
    """results.json, the markdown summary, JUnit and the HTML report all say the verdict came from the floor."""
    from parity.report import ResultsStore, junit_xml, load, markdown_summary, summarize, write_report

    case = _case(tmp_path, jobs["faithful"], tiny_model_dir)
    out = tmp_path / "rep"
    store = ResultsStore(out)
    store.start({"id": "floor"})
    records = list(_run([case], out).values())
    for r in records:
        store.add(r)
    store.finish()
    assert all(r["tier"] == "NEAR" for r in records)
    results = load(out)
    assert all(it["noise_floor"]["applied"] for it in results.items)
    s = summarize(results.items, results.run)
    assert s.noise_floor == {"measured": len(records), "lifted": len(records)}
    assert "lay within it (NEAR)" in markdown_summary(results)
    assert 'name="noise_floor" value="within: within the noise floor of lora_precision' in junit_xml(results)
    paths = write_report(results, out / "report")
    html = Path(paths.html).read_text()
    assert "noise floor: 2 irreducible-only DRIFT item(s) measured, 2 within it" in html
    assert '"noise_floor"' in html  # the item data the report's script renders the section from
