"""Parameter diff, knob alignment, schedule numbers and hash checks. Schedule numbers are checked against the
published tables (aitk-flux2-previews.md section C.1) and against diffusers' own compute_empirical_mu."""

from __future__ import annotations

import pytest

from parity.diagnose.checks import check_hashes
from parity.diagnose.paramdiff import align, differing_knobs, param_diff
from parity.diagnose.settings import InferenceSettings, inference_spec
from parity.knobs import KNOBS_TABLE, SETTINGS, irreducible_names, knob_names
from parity.sigmas import aitk_mu, empirical_mu, image_tokens, nominal_sigmas
from parity.spec import SPEC_FIELDS, RenderSpec, ResolvedSpec


def spec(**kw) -> RenderSpec:
    base = dict(prompt="ohwx a cat", width=512, height=512, seed=3, sample_steps=20, guidance_scale=7.0,
                lora_path="/job/lora_000001000.safetensors")
    base.update(kw)
    return RenderSpec(**base)


# C.1 table: size -> (aitk mu, diffusers mu at 20/25/28/30/50 steps)
C1 = {
    (512, 512): (0.630, {20: 1.916, 25: 1.881, 28: 1.859, 30: 1.845, 50: 1.702}),
    (768, 768): (0.847, {20: 2.034, 25: 2.001, 28: 1.981, 30: 1.968, 50: 1.836}),
    (832, 1216): (1.126, {20: 2.185, 25: 2.155, 28: 2.138, 30: 2.126, 50: 2.008}),
    (1024, 1024): (1.150, {20: 2.198, 25: 2.169, 28: 2.151, 30: 2.140, 50: 2.023}),
}


@pytest.mark.parametrize("size", sorted(C1))
def test_mu_matches_the_published_table(size):
    tokens = image_tokens(*size)
    aitk, emp = C1[size]
    assert aitk_mu(tokens) == pytest.approx(aitk, abs=6e-4)
    for n, mu in emp.items():
        assert empirical_mu(tokens, n) == pytest.approx(mu, abs=6e-4)


@pytest.mark.parametrize("size, mu", [((1024, 1536), 1.497), ((1536, 1536), 2.017), ((2048, 2048), 3.230)])
def test_large_sizes_both_lines_agree(size, mu):
    t = image_tokens(*size)
    for n in (10, 30, 50):
        assert empirical_mu(t, n) == pytest.approx(mu, abs=6e-4)
    assert aitk_mu(t) == pytest.approx(mu, abs=6e-4)


def test_empirical_mu_equals_diffusers_own_function():
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    for tokens in (16, 256, 1024, 4096, 4300, 4301, 9216):
        for n in (1, 4, 20, 50, 150):
            assert empirical_mu(tokens, n) == pytest.approx(compute_empirical_mu(tokens, n), rel=1e-12, abs=1e-12)


def test_sigma_tables_match_the_published_first_and_last_values():
    # C.1: 1024^2, 30 steps
    s = nominal_sigmas(aitk_mu(image_tokens(1024, 1024)), 30)
    assert [round(x, 4) for x in s[:5]] == [1.0, 0.9892, 0.9779, 0.9660, 0.9535]
    assert [round(x, 4) for x in s[-5:]] == [0.3270, 0.2598, 0.1841, 0.0982, 0.0]
    d = nominal_sigmas(empirical_mu(image_tokens(1024, 1024), 30), 30)
    assert [round(x, 4) for x in d[:5]] == [1.0, 0.9960, 0.9917, 0.9871, 0.9822]
    assert [round(x, 4) for x in d[-5:]] == [0.5666, 0.4856, 0.3777, 0.2266, 0.0]


def test_knob_fields_cover_the_vocabulary_and_align_sets_only_that_knob():
    # every RenderSpec field is a registered setting, and every knob covers registered settings
    assert set(SPEC_FIELDS) <= set(SETTINGS)
    assert all(f in SETTINGS for k in KNOBS_TABLE.values() for f in k.settings)
    prev = spec()
    inf = spec(sample_steps=25, guidance_scale=4.0, seed=44, width=1024, height=1024, schedule="empirical",
               semantics="diffusers", network_multiplier=0.5)
    a = align(inf, prev, "guidance")
    assert a.guidance_scale == 7.0 and a.sample_steps == 25 and a.seed == 44
    a = align(inf, prev, "schedule")
    assert (a.schedule, a.semantics) == ("aitk", "aitk") and a.guidance_scale == 4.0
    a = align(inf, prev, "resolution")
    assert (a.width, a.height) == (512, 512)
    with pytest.raises(ValueError):
        align(inf, prev, "text_encoder")
    with pytest.raises(KeyError):
        align(inf, prev, "nope")


def test_differs_rules():
    prev = spec()
    # 1000 and 992 render at the same effective size (floor to 16): not a mismatch
    assert differing_knobs(spec(width=1000, height=1000), spec(width=992, height=992)) == []
    assert differing_knobs(spec(width=1008), spec(width=992)) == ["resolution"]
    # multiplier and application only matter when both sides apply a LoRA
    assert differing_knobs(spec(lora_path=None, network_multiplier=1.0),
                           spec(lora_path=None, network_multiplier=0.5, lora_application="live")) == []
    assert differing_knobs(prev, spec(lora_path=None)) == ["checkpoint"]
    assert differing_knobs(prev, spec(lora_path="/job/./lora_000001000.safetensors")) == []
    assert differing_knobs(prev, spec(quantize_te="qfloat8")) == ["quantization"]
    assert differing_knobs(prev, spec(numerics=(("timestep_path", "diffusers"),))) == ["schedule"]
    assert differing_knobs(prev, prev) == []


def test_param_diff_against_the_reference_server():
    prev = ResolvedSpec(spec(), {"seed": "walk", "sample_steps": "default", "guidance_scale": "default",
                                 "width": "default", "height": "default"})
    inf = inference_spec(prev, 2, InferenceSettings.profile("reference-server"), raw_prompt="[trigger] a cat",
                         trigger_word="ohwx")
    d = param_diff(prev, inf, preview_extra={"text_encoder": "Mistral-Small-3.1-24B-Instruct-2503"},
                   inference_extra={"text_encoder": "Mistral-Small-3.1-24B-Instruct-2503"},
                   lora_save_dtype="bf16", earlier_merges=3, inference_hardware="cpu")
    # preview: 20 steps, guidance 7, 512^2, seed 3; server: 25, 4.0, 1024^2, 42 + 2 = 44
    assert d.mismatches == ["steps", "guidance", "resolution", "seed"]
    out = d.to_dict()
    assert [r["knob"] for r in out["table"]] == list(knob_names())
    row = {r["knob"]: r for r in out["table"]}
    assert row["steps"]["preview"] == {"value": 20, "source": "default"}
    assert row["steps"]["inference"] == {"value": 25, "source": "profile"}
    assert row["seed"]["inference"]["source"] == "walk"
    assert row["resolution"]["preview"]["value"] == {"requested": [512, 512], "effective": [512, 512]}
    sched = row["schedule"]["preview"]["value"]
    assert sched["name"] == "aitk" and sched["mu"] == pytest.approx(0.630, abs=6e-4) and len(sched["sigmas"]) == 21
    assert row["schedule"]["inference"]["value"]["mu"] == pytest.approx(1.150, abs=6e-4)
    assert row["schedule"]["differs"] is False  # same schedule; size and steps are their own knobs
    assert row["prompt"]["differs"] is False
    assert out["params"]["preview"]["guidance"] == 7.0 and out["params"]["inference"]["guidance"] == 4.0
    irr = {r["knob"] for r in out["irreducible"]}
    assert irr == {"lora_precision", "merge_history", "hardware"} and irr <= set(irreducible_names())


def test_requested_size_shown_when_the_divisor_floors():
    prev = ResolvedSpec(spec(width=1008, height=1008))
    s = InferenceSettings.profile("reference-server").with_overrides({"width": 1016, "height": 1008,
                                                                       "resolution_divisor": 32})
    inf = inference_spec(prev, 0, s)
    d = param_diff(prev, inf).to_dict()
    row = {r["knob"]: r for r in d["table"]}["resolution"]
    assert row["inference"]["value"] == {"requested": [1016, 1008], "effective": [992, 992]}
    assert row["differs"] is True


def test_irreducible_only_when_it_applies():
    prev = ResolvedSpec(spec(lora_application="live"))
    d = param_diff(prev, prev, lora_save_dtype="fp32", earlier_merges=4)
    assert d.irreducible == [] and d.mismatches == []


def test_text_encoder_identity_row():
    prev = ResolvedSpec(spec())
    d = param_diff(prev, prev, preview_extra={"text_encoder": "Mistral-Small-3.1"},
                   inference_extra={"text_encoder": "Mistral-Small-3.2"})
    assert d.mismatches == ["text_encoder"]


def test_hash_checks():
    h = check_hashes("n1", "n1", "e1", "e1", mismatches=["prompt"])
    assert set(h.ruled_out) == {"seed", "generator", "resolution", "prompt", "text_encoder"}
    assert "dtype" not in h.ruled_out and "quantization" not in h.ruled_out
    assert any("prompt" in n for n in h.notes)
    h = check_hashes("n1", "n2", "e1", "e1")
    assert "seed" in h.suspects and "prompt" in h.ruled_out and "prompt" not in h.suspects
    h = check_hashes(None, "n2", None, None)
    assert h.ruled_out == [] and h.suspects == []
