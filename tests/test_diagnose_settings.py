"""Inference settings: request files, profiles, overrides. Expected values come from the reference's description of
the reference inference server (aitk-flux2-previews.md section D) and of diffusers' Flux2Pipeline, not from the code."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from parity.diagnose.settings import (
    InferenceSettings, inference_spec, parse_override_mapping, parse_overrides,
)
from parity.errors import ConfigError, ParityError
from parity.knobs import valid_keys
from parity.spec import RenderSpec, ResolvedSpec


def preview_item(**kw) -> ResolvedSpec:
    """A preview spec like the job reader gives for an AI Toolkit code-default job (section A.2)."""
    base = dict(prompt="ohwx a cat", width=512, height=512, seed=3, sample_steps=20, guidance_scale=7.0,
                lora_path="/job/out/my_lora_000001000.safetensors", network_multiplier=1.0,
                lora_application="live", dtype="bf16", quantize="qfloat8", quantize_te="qfloat8")
    base.update(kw)
    return ResolvedSpec(RenderSpec(**base), {"seed": "walk", "sample_steps": "default", "guidance_scale": "default"})


def write_request(tmp_path, data, name="req.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


# ---------------------------------------------------------------------------------------------------------------
# Request files


def test_request_defaults_follow_the_server(tmp_path):
    p = write_request(tmp_path, {"model": "flux2", "prompts": [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}],
                                 "loras": [{"path": "lora.safetensors"}]})
    s = InferenceSettings.from_case_value(str(p))
    assert s.kind == "request"
    r = inference_spec(preview_item(), 2, s)
    spec = r.spec
    # D.1: 25 steps, guidance 4.0, 1024x1024, multiplier 1.0; D.2: seed 42 + prompt index; CPU generator.
    assert (spec.sample_steps, spec.guidance_scale, spec.width, spec.height) == (25, 4.0, 1024, 1024)
    assert spec.seed == 44
    assert spec.network_multiplier == 1.0
    assert spec.prompt == "c"
    # D.1/D.3: ai-toolkit's own sampler, LoRA merged into bf16, nothing quantized (TE quantization commented out).
    assert (spec.semantics, spec.schedule, spec.lora_application, spec.dtype) == ("aitk", "aitk", "merged", "bf16")
    assert spec.quantize is None and spec.quantize_te is None
    assert spec.generator == "cpu"
    assert spec.lora_path == str(tmp_path / "lora.safetensors")
    assert r.sources["seed"] == "walk"
    assert r.sources["prompt"] == "request"
    assert r.sources["sample_steps"] == "profile"


def test_request_explicit_fields_and_sources(tmp_path):
    p = write_request(tmp_path, {
        "model": "flux2", "trigger_word": "ohwx",
        "prompts": [{"prompt": "[trigger] a cat", "width": 768, "height": 512, "seed": 7, "sample_steps": 30,
                     "guidance_scale": 3.5, "neg": "blurry"}],
        "loras": [{"path": "/abs/lora.safetensors", "network_multiplier": 0.8}]})
    r = inference_spec(preview_item(), 0, InferenceSettings.from_case_value(str(p)))
    s = r.spec
    assert (s.width, s.height, s.seed, s.sample_steps, s.guidance_scale) == (768, 512, 7, 30, 3.5)
    assert s.network_multiplier == 0.8 and s.lora_path == "/abs/lora.safetensors"
    assert s.prompt == "ohwx a cat"
    for k in ("width", "height", "seed", "sample_steps", "guidance_scale", "network_multiplier"):
        assert r.sources[k] == "request", k


def test_request_prompt_processing_is_the_servers(tmp_path):
    # D.5: only the literal [trigger] is replaced; [name] stays; --flags are not parsed; no strip.
    raw = "  [trigger] and [name] in the rain --seed 5 --w 256  "
    p = write_request(tmp_path, {"model": "flux2", "trigger_word": "ohwx", "prompts": [{"prompt": raw}], "loras": []})
    spec = inference_spec(preview_item(), 0, InferenceSettings.from_case_value(str(p))).spec
    assert spec.prompt == "  ohwx and [name] in the rain --seed 5 --w 256  "
    assert spec.seed == 42 and spec.width == 1024  # the flags had no effect
    assert spec.lora_path is None  # empty loras list: no LoRA


def test_request_per_prompt_trigger_wins_and_absent_trigger_leaves_literal(tmp_path):
    p = write_request(tmp_path, {"model": "flux2", "trigger_word": "aaa",
                                 "prompts": [{"prompt": "[trigger] x", "trigger_word": "bbb"}, {"prompt": "[trigger] y"}],
                                 "loras": []})
    s = InferenceSettings.from_case_value(str(p))
    assert inference_spec(preview_item(), 0, s).spec.prompt == "bbb x"
    assert inference_spec(preview_item(), 1, s).spec.prompt == "aaa y"
    p2 = write_request(tmp_path, {"model": "flux2", "prompts": [{"prompt": "[trigger] z"}], "loras": []}, "b.json")
    assert inference_spec(preview_item(), 0, InferenceSettings.from_case_value(str(p2))).spec.prompt == "[trigger] z"


def test_request_size_floor_divisor_16_by_default_and_settable(tmp_path):
    p = write_request(tmp_path, {"model": "flux2", "prompts": [{"prompt": "a", "width": 1016, "height": 1000}], "loras": []})
    s = InferenceSettings.from_case_value(str(p))
    r = inference_spec(preview_item(), 0, s)
    # 1016 // 16 * 16 = 1008; 1000 // 16 * 16 = 992 (executor.py L599-629, divisor 16 since 2026-01-29)
    assert (r.spec.width, r.spec.height) == (1008, 992)
    assert r.requested_size == (1016, 1000)
    assert r.sources["width"] == "floor"
    r32 = inference_spec(preview_item(), 0, s.with_overrides(parse_overrides(["resolution_divisor=32"])))
    assert (r32.spec.width, r32.spec.height) == (992, 992)


@pytest.mark.parametrize("data, field", [
    ({"model": "flux2", "prompts": [{"prompt": "a", "sample_steps": 0}], "loras": []}, "prompts[0].sample_steps"),
    ({"model": "flux2", "prompts": [{"prompt": "a", "sample_steps": 151}], "loras": []}, "prompts[0].sample_steps"),
    ({"model": "flux2", "prompts": [{"prompt": "a"}, {"prompt": "b", "guidance_scale": 25}], "loras": []},
     "prompts[1].guidance_scale"),
    ({"model": "flux2", "prompts": [{"prompt": "a", "width": 32}], "loras": []}, "prompts[0].width"),
    ({"model": "flux2", "prompts": [{"prompt": "a", "width": "512"}], "loras": []}, "prompts[0].width"),
    ({"model": "flux2", "prompts": [{"prompt": "a", "seed": -1}], "loras": []}, "prompts[0].seed"),
    ({"model": "flux2", "prompts": [{"width": 512}], "loras": []}, "prompts[0].prompt"),
    ({"model": "flux2", "prompts": [], "loras": []}, "prompts"),
    ({"model": "flux2", "prompts": [{"prompt": "a"}]}, "loras"),
    ({"model": "sdxl", "prompts": [{"prompt": "a"}], "loras": []}, "model"),
    ({"prompts": [{"prompt": "a"}], "loras": []}, "model"),
    ({"model": "flux2", "prompts": [{"prompt": "a"}], "loras": [{"path": "x", "network_multiplier": 3}]},
     "loras[0].network_multiplier"),
    ({"model": "flux2", "prompts": [{"prompt": "a"}], "loras": [{"network_multiplier": 1}]}, "loras[0].path"),
    ([1, 2], "request"),
])
def test_request_validation_names_file_and_field(tmp_path, data, field):
    p = write_request(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        InferenceSettings.from_case_value(str(p))
    assert str(p) in str(e.value)
    assert field in str(e.value)


def test_request_bad_json_and_missing_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{nope")
    with pytest.raises(ConfigError, match="bad.json.*invalid JSON"):
        InferenceSettings.from_case_value(str(p))
    with pytest.raises(ConfigError, match="missing.json"):
        InferenceSettings.from_case_value(str(tmp_path / "missing.json"))


def test_request_has_fewer_prompts_than_the_job(tmp_path):
    p = write_request(tmp_path, {"model": "flux2", "prompts": [{"prompt": "a"}], "loras": []})
    s = InferenceSettings.from_case_value(str(p))
    with pytest.raises(ConfigError) as e:
        inference_spec(preview_item(), 1, s)
    assert str(p) in str(e.value) and "prompts[1]" in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# Profiles and the case value


def test_preview_is_the_preview_spec():
    item = preview_item()
    r = inference_spec(item, 0, InferenceSettings.from_case_value("preview"))
    assert r.spec == item.spec and r.sources == item.sources
    assert InferenceSettings.from_case_value(None).kind == "preview"


def test_reference_server_profile_on_the_jobs_prompts():
    item = preview_item()
    s = InferenceSettings.from_case_value("reference-server")
    r = inference_spec(item, 1, s, raw_prompt=" [trigger] and [name] --cfg 2 ", trigger_word="ohwx")
    spec = r.spec
    assert spec.prompt == " ohwx and [name] --cfg 2 "
    assert (spec.sample_steps, spec.guidance_scale, spec.seed, spec.width, spec.height) == (25, 4.0, 43, 1024, 1024)
    assert (spec.lora_application, spec.dtype, spec.quantize, spec.quantize_te) == ("merged", "bf16", None, None)
    assert spec.lora_path == item.spec.lora_path  # same LoRA file
    assert r.sources["sample_steps"] == "profile"


def test_diffusers_profile_is_stock_flux2pipeline():
    item = preview_item()
    r = inference_spec(item, 0, InferenceSettings.from_case_value("diffusers"))
    s = r.spec
    assert (s.sample_steps, s.guidance_scale) == (50, 4.0)
    assert (s.semantics, s.schedule, s.generator) == ("diffusers", "empirical", "cpu")
    assert s.lora_application == "live" and s.quantize is None
    # the caller passes the job's prompt, size and seed
    assert (s.prompt, s.width, s.height, s.seed) == (item.spec.prompt, 512, 512, 3)
    r2 = inference_spec(item, 0, InferenceSettings.from_case_value({"profile": "diffusers", "set": {"steps": 28}}))
    assert r2.spec.sample_steps == 28 and r2.sources["sample_steps"] == "override"


def test_case_value_mapping_with_request_and_set(tmp_path):
    write_request(tmp_path, {"model": "flux2", "prompts": [{"prompt": "a", "sample_steps": 30}], "loras": []})
    s = InferenceSettings.from_case_value({"request": "req.json", "set": {"cfg": 7, "sample_steps": "20"}}, tmp_path)
    r = inference_spec(preview_item(), 0, s)
    assert r.spec.guidance_scale == 7.0 and r.spec.sample_steps == 20
    assert r.sources["guidance_scale"] == "override"
    s2 = InferenceSettings.from_case_value("req.json", tmp_path)
    assert inference_spec(preview_item(), 0, s2).spec.sample_steps == 30


@pytest.mark.parametrize("value", ["comfyui", 5, {"profile": "nope"}, {"profile": "diffusers", "bogus": 1},
                                   {"profile": "diffusers", "request": "a.json"}, {"set": {"stepz": 3}}])
def test_case_value_errors(value):
    with pytest.raises(ConfigError):
        InferenceSettings.from_case_value(value)


# ---------------------------------------------------------------------------------------------------------------
# Overrides


def test_override_aliases_and_types():
    got = parse_overrides(["steps=25", "cfg=4", "lora_scale=0.5", "seed=42", "width=768", "height=512",
                           "dtype=bfloat16", "quantize=true", "quantize_te=none", "schedule=static:3",
                           "semantics=diffusers", "lora_application=live", "generator=cuda:0",
                           "numerics=timestep_path:diffusers", "resolution_divisor=32"])
    assert got == {"sample_steps": 25, "guidance_scale": 4.0, "network_multiplier": 0.5, "seed": 42, "width": 768,
                   "height": 512, "dtype": "bf16", "quantize": "qfloat8", "quantize_te": None,
                   "schedule": "static:3", "semantics": "diffusers", "lora_application": "live",
                   "generator": "cuda:0", "numerics": (("timestep_path", "diffusers"),), "resolution_divisor": 32}
    assert parse_overrides(["guidance_scale=7", "guidance=3.5"]) == {"guidance_scale": 3.5}  # later wins
    assert parse_overrides(["sample_steps=30", "network_multiplier=1"]) == {"sample_steps": 30, "network_multiplier": 1.0}


@pytest.mark.parametrize("pair", ["steps=2.5", "steps=abc", "steps=0", "seed=-1", "cfg=inf", "cfg=x", "dtype=int8",
                                  "schedule=karras", "schedule=static:-1", "semantics=comfy", "quantize=fp4",
                                  "generator=tpu", "lora_application=fused", "numerics=oops", "steps",
                                  "width=true"])
def test_override_bad_values(pair):
    with pytest.raises(ConfigError):
        parse_overrides([pair])


def test_unknown_override_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        parse_overrides(["stepz=25"])
    msg = str(e.value)
    assert "stepz" in msg
    for k in ("sample_steps", "steps", "guidance", "cfg", "lora_scale", "resolution_divisor", "seed"):
        assert k in msg


def test_override_mapping_typed_values():
    assert parse_override_mapping({"steps": 25, "cfg": 4, "quantize": False}) == {
        "sample_steps": 25, "guidance_scale": 4.0, "quantize": None}
    with pytest.raises(ConfigError):
        parse_override_mapping({"steps": True})


_INT_KEYS = {"steps": "sample_steps", "sample_steps": "sample_steps", "seed": "seed", "width": "width",
             "height": "height", "resolution_divisor": "resolution_divisor"}
_FLOAT_KEYS = {"guidance": "guidance_scale", "guidance_scale": "guidance_scale", "cfg": "guidance_scale",
               "lora_scale": "network_multiplier", "network_multiplier": "network_multiplier"}


@hsettings(max_examples=150, deadline=None)
@given(key=st.sampled_from(sorted(_INT_KEYS)), n=st.integers(min_value=1, max_value=10**9))
def test_hyp_int_overrides_round_trip(key, n):
    canon = _INT_KEYS[key]
    if canon in ("width", "height") and not 16 <= n <= 4096 or canon == "sample_steps" and n > 1000:
        with pytest.raises(ConfigError, match="a value parity can render"):
            parse_overrides([f"{key}={n}"])
    else:
        assert parse_overrides([f"{key}={n}"]) == {canon: n}


@hsettings(max_examples=150, deadline=None)
@given(key=st.sampled_from(sorted(_FLOAT_KEYS)), x=st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_hyp_float_overrides_round_trip(key, x):
    if abs(x) > 100:
        with pytest.raises(ConfigError, match="a value parity can render"):
            parse_overrides([f"{key}={x!r}"])
    else:
        assert parse_overrides([f"{key}={x!r}"]) == {_FLOAT_KEYS[key]: x}


@hsettings(max_examples=200, deadline=None)
@given(key=st.text(alphabet=string.ascii_letters + "_-", min_size=1, max_size=20))
def test_hyp_unknown_keys_are_config_errors(key):
    canon = key.strip().lower().replace("-", "_")
    if canon in valid_keys():
        return
    with pytest.raises(ConfigError, match="valid keys"):
        parse_overrides([f"{key}=1"])


@hsettings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40))
def test_hyp_any_string_parses_or_raises_a_parity_error(text):
    try:
        out = parse_overrides([text])
    except ParityError:
        return
    assert len(out) == 1
    (k, v), = out.items()
    assert k in valid_keys()


@pytest.mark.parametrize("pair,fragment", [
    ("sample_steps=1000000000", "sample_steps 1000000000 is outside 1..1000"),
    ("width=100000000", "width 100000000 is outside 16..4096"),
    ("guidance_scale=inf", "expected a finite number"),
    ("network_multiplier=1e300", "network_multiplier 1e+300 is outside"),
])
def test_set_values_beyond_parity_limits_are_usage_errors(pair, fragment):
    from parity.diagnose.settings import parse_overrides
    from parity.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment.replace("+", r"\+")):
        parse_overrides([pair])
