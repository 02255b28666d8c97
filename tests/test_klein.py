"""FLUX.2 [klein] base (4B/9B architecture): job reader, tiny factory, Qwen3 text encoding, true CFG, oracle.

AI Toolkit references (ostris/ai-toolkit 27a03a91, extensions_built_in/diffusion_models/flux2/):
flux2_klein_model.py L11-15 (qwen text encoder, not guidance-distilled), L41-48 (Qwen3 with qtype_te), L68-91
(arch names, BFL file names, Qwen/Qwen3-4B / Qwen3-8B); src/pipeline.py L148-198 (_get_qwen_prompt_embeds:
layers 9/18/27, add_generation_prompt, enable_thinking=False), L298-302 (CFG only when guidance > 1 and not
distilled), L397-424 (cond call, then uncond call, `uncond + g * (cond - uncond)`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from parity.errors import ConfigError, ModelError
from parity.job import load_job
from parity.spec import RenderSpec

ORACLE = Path(os.environ.get("PARITY_ORACLE", Path(__file__).resolve().parents[2] / "shared" / "oracle"))


@pytest.fixture(scope="module")
def klein_dir(tmp_path_factory):
    from parity.tiny import build_tiny_klein

    root = tmp_path_factory.mktemp("tiny-klein")
    build_tiny_klein(root)
    return root


@pytest.fixture(scope="module")
def engine(klein_dir):
    from parity.engine.render import Engine

    return Engine(klein_dir)


def _spec(**kw) -> RenderSpec:
    base = dict(prompt="a red fox in the snow", width=64, height=80, seed=11, sample_steps=4, guidance_scale=4.0,
                dtype="fp32", arch="flux2_klein_4b", negative_prompt="blurry, watermark")
    base.update(kw)
    return RenderSpec(**base)


# ------------------------------------------------------------------------------------------------ job reader
def _klein_config(tmp_path: Path, model: dict, sample: dict | None = None) -> Path:
    cfg = {"job": "extension", "config": {"name": "k", "process": [{
        "type": "sd_trainer", "training_folder": str(tmp_path), "network": {"type": "lora"},
        "train": {"steps": 10, "dtype": "bf16"}, "model": {"name_or_path": "x", **model},
        "sample": sample or {"samples": [{"prompt": "a", "neg": "ugly"}, {"prompt": "b"}], "neg": ""}}]}}
    p = tmp_path / "k.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("arch", ["flux2_klein_4b", "flux2_klein_9b", "flux2_klein_4b:base"])
def test_klein_arch_is_read_with_its_negative_prompts(tmp_path, arch):
    job = load_job(_klein_config(tmp_path, {"arch": arch}))
    specs = [job.render_spec(s, None, "merged").spec for s in job.resolved_samples()]
    assert {s.arch for s in specs} == {arch.split(":")[0]}
    assert [s.negative_prompt for s in specs] == ["ugly", ""]      # SampleItem.neg falls back to the block's


def test_klein_text_encoder_quantizes_with_qtype_te(tmp_path):
    # flux2_klein_model.py L46-48: quantize(text_encoder, get_qtype(qtype_te)); FLUX.2-dev uses qtype (L108-111)
    model = {"arch": "flux2_klein_4b", "quantize": True, "qtype": "qfloat8", "qtype_te": "qint8"}
    job = load_job(_klein_config(tmp_path, model))
    s = job.render_spec(job.resolved_samples()[0], None, "live").spec
    assert (s.quantize, s.quantize_te) == ("qfloat8", "qint8")
    dev = load_job(_klein_config(tmp_path, {**model, "arch": "flux2"}))
    d = dev.render_spec(dev.resolved_samples()[0], None, "live").spec
    assert (d.quantize, d.quantize_te) == ("qfloat8", "qfloat8")


@pytest.mark.parametrize("model,numerics", [
    ({"arch": "flux2_klein_4b"}, ()),
    ({"arch": "flux2_klein_4b", "low_vram": True}, (("te_cast", "diffusers"),)),
    ({"arch": "flux2_klein_9b", "quantize_te": True}, (("te_cast", "diffusers"),)),
    ({"arch": "flux2", "low_vram": True, "quantize_te": True}, ()),
])
def test_klein_text_encoder_cast_follows_low_vram_and_quantize_te(tmp_path, model, numerics):
    # flux2_klein_model.py L41-53: `.to(device, dtype)` only in the `elif not low_vram` branch after quantize_te;
    # flux2_model.py L98-104: FLUX.2-dev always casts
    job = load_job(_klein_config(tmp_path, model))
    assert job.render_spec(job.resolved_samples()[0], None, "live").spec.numerics == numerics


def test_other_arches_are_still_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a FLUX.2 job"):
        load_job(_klein_config(tmp_path, {"arch": "flux"}))


# ------------------------------------------------------------------------------------------------ base detection
def test_tiny_klein_is_detected_in_both_layouts_and_renders_the_same(klein_dir, engine):
    from parity.engine.render import Engine

    assert engine.layout.arch == "flux2_klein_4b" and engine.layout.transformer_config["guidance_embeds"] is False
    bfl = Engine(klein_dir, layout="bfl")
    assert bfl.layout.kind == "bfl" and bfl.layout.transformer.name == "flux-2-klein-base-4b.safetensors"
    assert np.array_equal(engine.render(_spec()).image, bfl.render(_spec()).image)


def test_a_klein_job_on_a_flux2_dev_base_is_refused(tiny_model_dir, klein_dir):
    from parity.engine.render import Engine

    with pytest.raises(ModelError, match="flux2_klein_4b"):
        Engine(tiny_model_dir).render(_spec(sample_steps=1))
    with pytest.raises(ModelError, match="'flux2'"):
        Engine(klein_dir).render(_spec(arch="flux2", sample_steps=1))


# ------------------------------------------------------------------------------------------------ CFG
def test_cfg_runs_two_passes_per_step_and_the_negative_prompt_changes_the_image(engine):
    a = engine.render(_spec())
    assert a.cfg and a.transformer_calls == 2 * 4
    b = engine.render(_spec(negative_prompt="a red fox"))
    assert np.abs(a.image.astype(int) - b.image.astype(int)).max() > 8
    # guidance 1.0: AI Toolkit skips CFG (guidance_scale > 1.0 is required), so one pass and no negative prompt
    one = engine.render(_spec(guidance_scale=1.0))
    assert not one.cfg and one.transformer_calls == 4
    assert np.array_equal(one.image, engine.render(_spec(guidance_scale=1.0, negative_prompt="x")).image)


def test_flux2_dev_never_reads_the_negative_prompt(tiny_model_dir):
    from parity.engine.render import Engine

    dev = Engine(tiny_model_dir)
    spec = _spec(arch="flux2")
    a, b = dev.render(spec), dev.render(spec.with_(negative_prompt="something else entirely"))
    assert not a.cfg and a.transformer_calls == 4 and np.array_equal(a.image, b.image)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_klein_renders_are_exact_on_rerun(engine, dtype):
    spec = _spec(dtype=dtype)
    assert np.array_equal(engine.render(spec).image, engine.render(spec).image)


def test_klein_lora_merges_and_changes_the_image(engine, klein_dir):
    from parity.tiny.klein import LORA_FILE

    plain = engine.render(_spec())
    r = engine.render(_spec(lora_path=str(klein_dir / LORA_FILE)))
    from safetensors.torch import load_file

    modules = {k.rsplit(".lora_", 1)[0] for k in load_file(klein_dir / LORA_FILE)}
    assert r.lora["modules_matched"] == len(modules) > 0
    assert np.abs(plain.image.astype(int) - r.image.astype(int)).max() > 4


# ------------------------------------------------------------------------------------------------ cross-check
def test_embeddings_and_render_agree_with_diffusers_flux2kleinpipeline(klein_dir, engine):
    """An implementation we did not write: diffusers' Flux2KleinPipeline (Qwen3 layers 9/18/27, true CFG with
    separate cond/uncond calls), driven with AI Toolkit's sigmas through a static-shift scheduler. In fp32 the only
    differences are the timestep path and the Euler dt (one fp32 ulp each), as for FLUX.2-dev."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(str(klein_dir), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    spec = _spec()
    ours = engine.embeddings(spec.prompt, "fp32", None)
    theirs = pipe.encode_prompt(spec.prompt, device="cpu")[0]
    assert torch.equal(ours, theirs)
    r = engine.render(spec)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, use_dynamic_shifting=False,
                                                                 shift=1.0)
    neg = pipe.encode_prompt(spec.negative_prompt, device="cpu")[0]
    ref = pipe(prompt=spec.prompt, negative_prompt_embeds=neg, height=spec.height, width=spec.width,
               num_inference_steps=spec.sample_steps, guidance_scale=spec.guidance_scale, sigmas=r.sigmas[:-1],
               generator=torch.Generator("cpu").manual_seed(spec.seed), output_type="np").images[0]
    assert np.abs(ref - r.image_float).max() < 1e-4
    no_neg = pipe(prompt=spec.prompt, negative_prompt_embeds=pipe.encode_prompt("", device="cpu")[0], height=spec.height, width=spec.width,
                  num_inference_steps=spec.sample_steps, guidance_scale=spec.guidance_scale, sigmas=r.sigmas[:-1],
                  generator=torch.Generator("cpu").manual_seed(spec.seed), output_type="np").images[0]
    assert np.abs(no_neg - r.image_float).max() > 0.02


# ------------------------------------------------------------------------------------------------ the oracle
@pytest.mark.skipif(not (ORACLE / "klein" / "facts.json").is_file(), reason="AI Toolkit oracle renders not present")
def test_klein_oracle_structure_and_loose_image_agreement():
    """shared/oracle/klein: AI Toolkit's own bf16 renders. bf16 CPU kernels differ by ISA (docs/numerics.md), so
    on another CPU the check is structural (calls, passes per step, t values, context shapes and sums, negative
    prompts) plus image agreement: each render is closer to its own preview than to the other prompts' previews."""
    from PIL import Image

    from parity.compare.metrics import ssim
    from parity.engine.render import Engine

    case = ORACLE / "klein"
    facts = {f["file"]: f for f in json.loads((case / "facts.json").read_text())["images"]}
    job = load_job(case / "output" / "public_klein")
    engine = Engine(ORACLE / "tiny-flux2-klein")
    items = job.items(0)
    pngs = [np.asarray(Image.open(case / "lossless_png" / (it.preview.stem + ".png")).convert("RGB")) for it in items]
    for k, it in enumerate(items):
        f = facts[it.preview.name]
        assert (it.spec.prompt, it.spec.negative_prompt, it.spec.seed) == (f["prompt"], f["negative_prompt"], f["seed"])
        r = engine.render(it.spec)
        assert r.cfg == f["cfg_ran"] and r.transformer_calls == f["transformer_calls"]
        assert r.transformer_calls // it.spec.sample_steps == f["forward_passes_per_step"] == 2
        # the t handed to the transformer: `full((B,), t, dtype=bf16)` (src/pipeline.py L385-390)
        assert torch.tensor(r.sigmas[:-1]).to(torch.bfloat16).float().tolist() == f["timesteps"]
        cond = engine.embeddings(it.spec.prompt, it.spec.dtype, it.spec.quantize_te)
        neg = engine.embeddings(it.spec.negative_prompt, it.spec.dtype, it.spec.quantize_te)
        assert list(cond.shape) == f["ctx_shape"] and list(neg.shape) == f["neg_ctx_shape"]
        if "cond_ctx_sum" in f:
            assert cond.double().sum().item() == pytest.approx(f["cond_ctx_sum"], rel=2e-3)
            assert neg.double().sum().item() == pytest.approx(f["uncond_ctx_sum"], rel=2e-3)
        own = ssim(r.image, pngs[k]).ssim
        others = [ssim(r.image, p).ssim for j, p in enumerate(pngs) if j != k and p.shape == r.image.shape]
        assert own > 0.85 and all(own > o + 0.1 for o in others), (own, others)


# ------------------------------------------------------------------------------------------------ reference server
def _request(tmp_path: Path, model: str, **prompt) -> Path:
    p = tmp_path / "req.json"
    p.write_text(json.dumps({"model": model, "loras": [], "prompts": [{"prompt": "a fox", "seed": 3, **prompt}]}))
    return p


def test_reference_server_klein_model_ids_carry_arch_and_negative_prompt(tmp_path):
    """runcomfy-com/ai-toolkit-inference: ModelType flux2_klein_4b / flux2_klein_9b (src/schemas/models.py), whose
    pipelines subclass its FLUX.2 pipeline without guidance distillation; the call passes negative_prompt=neg or ""."""
    from parity.diagnose.settings import InferenceSettings, inference_spec
    from parity.spec import ResolvedSpec

    prev = ResolvedSpec(_spec(prompt="a fox", negative_prompt="job neg"))
    for model in ("flux2_klein_4b", "flux2_klein_9b"):
        s = inference_spec(prev, 0, InferenceSettings.from_case_value(str(_request(tmp_path, model, neg="ugly"))))
        assert (s.spec.arch, s.spec.negative_prompt) == (model, "ugly")
    s = inference_spec(prev, 0, InferenceSettings.from_case_value(str(_request(tmp_path, "flux2_klein_4b"))))
    assert s.spec.negative_prompt == ""
    prof = inference_spec(prev, 0, InferenceSettings.profile("reference-server"), raw_prompt="a fox").spec
    assert (prof.arch, prof.negative_prompt, prof.sample_steps) == ("flux2_klein_4b", "job neg", 25)
    with pytest.raises(ConfigError, match="flux2_klein_4b"):
        InferenceSettings.from_case_value(str(_request(tmp_path, "flux2_klein_base")))
    with pytest.raises(ConfigError, match="ctrl_img"):
        InferenceSettings.from_case_value(str(_request(tmp_path, "flux2", ctrl_img="a.png")))


# ------------------------------------------------------------------------------------------------ tiny factory
def test_tiny_klein_files_fit_the_real_classes(klein_dir):
    """The import-free writer against transformers' / diffusers' own classes: same tensor names and shapes."""
    from diffusers import Flux2Transformer2DModel
    from safetensors.torch import load_file
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from parity.tiny.klein import TEXT_ENCODER_CONFIG, TRANSFORMER_CONFIG

    te_file = load_file(klein_dir / "text_encoder" / "model.safetensors")
    cfg = Qwen3Config(**{k: v for k, v in TEXT_ENCODER_CONFIG.items() if k not in ("architectures", "dtype")})
    real = {k: tuple(v.shape) for k, v in Qwen3ForCausalLM(cfg).state_dict().items() if k != "lm_head.weight"}
    assert {k: tuple(v.shape) for k, v in te_file.items()} == real
    tr_file = load_file(klein_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    model = Flux2Transformer2DModel(**{k: v for k, v in TRANSFORMER_CONFIG.items()})
    assert {k: tuple(v.shape) for k, v in tr_file.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert not any("guidance_embedder" in k for k in tr_file)


def test_make_tiny_klein_cli(tmp_path):
    import subprocess
    import sys

    from parity.engine import weights

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-m", "parity.cli", "make-tiny", str(tmp_path / "k"), "--klein"], check=True,
                   env=env, capture_output=True)
    for layout in ("diffusers", "bfl"):
        lay = weights.resolve_base(tmp_path / "k", layout=layout)
        assert lay.arch == "flux2_klein_4b" and lay.klein


def test_ui_klein_preset_job_plans_as_ai_toolkit_renders_it(tmp_path):
    """The UI's FLUX.2-klein-base-4B preset (ui/src/app/jobs/new/options.tsx `flux2_klein_4b`: quantize,
    quantize_te, low_vram, qfloat8) in the UI's job JSON: quantized transformer with qtype, Qwen3 with qtype_te and no
    second cast, LoRA live (quantized), true CFG with the block's negative prompt, walk seeds."""
    job_json = {
        "job": "extension",
        "config": {"name": "klein_ui", "process": [{
            "type": "ui_trainer", "training_folder": str(tmp_path), "trigger_word": None,
            "network": {"type": "lora", "linear": 32, "linear_alpha": 32},
            "save": {"dtype": "bf16", "save_every": 250},
            "train": {"steps": 3000, "dtype": "bf16", "unload_text_encoder": False},
            "model": {"name_or_path": "black-forest-labs/FLUX.2-klein-base-4B", "arch": "flux2_klein_4b",
                      "quantize": True, "qtype": "qfloat8", "quantize_te": True, "qtype_te": "qfloat8",
                      "low_vram": True, "model_kwargs": {"match_target_res": False}},
            "sample": {"sampler": "flowmatch", "sample_every": 250, "width": 1024, "height": 1024, "neg": "",
                       "seed": 42, "walk_seed": True, "guidance_scale": 4, "sample_steps": 25,
                       "samples": [{"prompt": "woman with red hair"}, {"prompt": "a bear", "ctrl_img_1": "/r/a.png"}]},
        }]},
        "meta": {"name": "[name]", "version": "1.0"},
    }
    folder = tmp_path / "klein_ui"
    (folder / "samples").mkdir(parents=True)
    (folder / ".job_config.json").write_text(json.dumps(job_json))
    job = load_job(folder)
    assert job.expected_steps()[:3] == [0, 250, 500] and job.expected_steps()[-1] == 3000
    items = job.items(250, expected=True)
    specs = [i.spec for i in items]
    assert [s.seed for s in specs] == [42, 43]
    assert {(s.arch, s.quantize, s.quantize_te, s.lora_application, s.negative_prompt, s.numerics) for s in specs} \
        == {("flux2_klein_4b", "qfloat8", "qfloat8", "live", "", (("te_cast", "diffusers"),))}
    assert specs[1].control_images == ("/r/a.png",) and specs[0].control_images == ()
