"""`parity doctor`: ready on the demo; a full-size FLUX.2-dev case (header-only sparse safetensors files: every
tensor name and shape of the real checkpoints, no data) that does not fit a 24 GB card and does fit an H200;
an incomplete base model and a LoRA whose keys map nowhere."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from parity.cli import main
from parity.engine import fullsize

ROOT = Path(__file__).resolve().parents[1]
DEV = fullsize.TRANSFORMER_CONFIGS["flux2-dev"]


def write_header_only(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """A valid safetensors file of the full size whose data is a hole (sparse): the header is real, the bytes
    are zeros that take no disk space. The doctor reads headers only."""
    size = {"BF16": 2, "F32": 4, "F8_E4M3": 1}
    offsets, pos = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = size[dtype]
        for d in shape:
            n *= d
        offsets[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    header = json.dumps({"__metadata__": {"format": "pt"}, **offsets}).encode()
    header += b" " * (-len(header) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + pos)


def bfl_dev_tensors(cfg: dict = DEV) -> dict[str, tuple[int, ...]]:
    """The BFL flux2-dev.safetensors names and shapes, written from the table of aitk-flux2-previews.md E.5 (not
    from parity's key mapping): 299 tensors, no biases."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    mlp, hd = 3 * d, cfg["attention_head_dim"]
    t = {"img_in.weight": (d, 128), "txt_in.weight": (d, cfg["joint_attention_dim"]),
         "time_in.in_layer.weight": (d, 256), "time_in.out_layer.weight": (d, d),
         "guidance_in.in_layer.weight": (d, 256), "guidance_in.out_layer.weight": (d, d),
         "double_stream_modulation_img.lin.weight": (6 * d, d), "double_stream_modulation_txt.lin.weight": (6 * d, d),
         "single_stream_modulation.lin.weight": (3 * d, d), "final_layer.linear.weight": (128, d),
         "final_layer.adaLN_modulation.1.weight": (2 * d, d)}
    for n in range(cfg["num_layers"]):
        for s in ("img", "txt"):
            t |= {f"double_blocks.{n}.{s}_attn.qkv.weight": (3 * d, d),
                  f"double_blocks.{n}.{s}_attn.proj.weight": (d, d),
                  f"double_blocks.{n}.{s}_attn.norm.query_norm.scale": (hd,),
                  f"double_blocks.{n}.{s}_attn.norm.key_norm.scale": (hd,),
                  f"double_blocks.{n}.{s}_mlp.0.weight": (2 * mlp, d), f"double_blocks.{n}.{s}_mlp.2.weight": (d, mlp)}
    for n in range(cfg["num_single_layers"]):
        t |= {f"single_blocks.{n}.linear1.weight": (3 * d + 2 * mlp, d),
              f"single_blocks.{n}.linear2.weight": (d, d + mlp),
              f"single_blocks.{n}.norm.query_norm.scale": (hd,), f"single_blocks.{n}.norm.key_norm.scale": (hd,)}
    return t


def hub_mistral_names(name: str) -> str:
    """transformers 5 state-dict names -> the 4.x names the hub's Mistral-Small-3.1 shards use."""
    for new, old in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                     ("model.vision_tower.", "vision_tower."),
                     ("model.multi_modal_projector.", "multi_modal_projector.")):
        if name.startswith(new):
            return old + name[len(new):]
    return name


def write_text_encoder(folder: Path) -> None:
    """Mistral-Small-3.1-24B: config.json and two header-only shards with an index, in the hub's names."""
    cfg = fullsize.TEXT_ENCODER_CONFIGS["mistral-small-3.1-24b"]
    sd = fullsize.meta_text_encoder(cfg).state_dict()
    names = [hub_mistral_names(k) for k in sd]
    shapes = {hub_mistral_names(k): ("BF16", tuple(v.shape)) for k, v in sd.items()}
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        write_header_only(folder / shard, {k: shapes[k] for k in keys})
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "tokenizer_config.json").write_text("{}")


def write_lora(path: Path, bfl_shapes: dict, rank: int = 16, extra: dict | None = None) -> None:
    tensors = {}
    for m, (o, i) in bfl_shapes.items():
        tensors[f"diffusion_model.{m}.lora_A.weight"] = ("BF16", (rank, i))
        tensors[f"diffusion_model.{m}.lora_B.weight"] = ("BF16", (o, rank))
    write_header_only(path, {**tensors, **(extra or {})})


def write_dev_job(tmp: Path, base: Path, lora_extra: dict | None = None) -> Path:
    """An AI Toolkit FLUX.2-dev job (bf16, 1024x1024, 28 steps, LoRA merged) with a full-size rank-16 LoRA."""
    from PIL import Image

    from parity.job.layout import write_config_copy, write_preview
    from parity.tiny import bfl_lora_target_shapes

    job = tmp / "output" / "dev-lora"
    write_config_copy(job, {"job": "extension", "config": {"name": "dev-lora", "process": [{
        "type": "sd_trainer", "training_folder": str(tmp / "output"), "device": "cuda:0",
        "network": {"type": "lora", "linear": 16, "linear_alpha": 16}, "save": {"dtype": "bf16"},
        "train": {"steps": 1000, "dtype": "bf16"}, "model": {"name_or_path": str(base), "arch": "flux2"},
        "sample": {"sample_every": 1000, "width": 1024, "height": 1024, "prompts": ["a cat", "a dog"], "seed": 42,
                   "walk_seed": True, "sample_steps": 28, "guidance_scale": 4}}]}, "meta": {"name": "[name]"}})
    write_lora(job / "dev-lora.safetensors", bfl_lora_target_shapes(DEV), extra=lora_extra)
    for i in range(2):
        write_preview(job / "samples", Image.new("RGB", (64, 64)), ms=1764100000000 + i, step=1000, index=i)
    return job


@pytest.fixture(scope="module")
def dev_base(tmp_path_factory) -> Path:
    """FLUX.2-dev in the diffusers layout (names from diffusers' own classes), header-only."""
    from parity.engine.weights import FLUX2_DEV_VAE_CONFIG

    base = tmp_path_factory.mktemp("flux2-dev")
    (base / "transformer").mkdir()
    (base / "transformer" / "config.json").write_text(json.dumps(DEV))
    sd = fullsize.meta_transformer(DEV).state_dict()
    write_header_only(base / "transformer" / "diffusion_pytorch_model.safetensors",
                      {k: ("BF16", tuple(v.shape)) for k, v in sd.items()})
    (base / "vae").mkdir()
    (base / "vae" / "config.json").write_text(json.dumps(FLUX2_DEV_VAE_CONFIG))
    vae = fullsize.meta_vae(FLUX2_DEV_VAE_CONFIG).state_dict()
    write_header_only(base / "vae" / "diffusion_pytorch_model.safetensors",
                      {k: ("F32", tuple(v.shape)) for k, v in vae.items()})
    write_text_encoder(base / "text_encoder")
    return base


def doctor(capsys, *args) -> tuple[int, str]:
    code = main(["doctor", *args])
    return code, capsys.readouterr().out


def test_demo_is_ready_and_gets_a_plan(capsys):
    from parity.demo import build_demo

    build_demo(ROOT / "demo")
    code, out = doctor(capsys, str(ROOT / "cases"))
    assert code == 0, out
    assert "offload plan: none" in out and "-> fits" in out and "time:" in out and "verdict: READY" in out
    assert "all 22 modules map onto the base model" in out


def test_full_size_dev_on_24_gb_explains_what_does_not_fit_and_what_would(dev_base, tmp_path, capsys):
    job = write_dev_job(tmp_path, dev_base)
    code, out = doctor(capsys, str(job), "--gpu-memory", "24")
    assert code == 1, out
    # Inputs are complete: the failure is the plan's.
    assert "FAIL" not in out.split("case dev-lora:")[0], out
    assert "all 331 tensors present" in out and "all 160 modules map onto the base model" in out
    assert "ok    dev-lora: architecture" in out
    te = dev_base / "text_encoder"
    assert f"{dev_base} (diffusers layout, from job); text encoder {te} (from base model folder)" in out
    assert "DOES NOT FIT: denoise needs 61." in out  # 64.45 GB bf16 transformer + activations, in GiB
    # A merged LoRA keeps ~58 GiB of pristine copies beside the transformer, so even 141 GB needs sequential.
    assert "bf16: sequential on a100-80gb 80 GB, h100 80 GB, h200 141 GB" in out
    assert "bf16+qfloat8 (changes the quantization knob vs the previews): sequential on a100-40gb 40 GB, l40s 48 GB" \
        in out
    assert "verdict: NOT READY (will not fit: dev-lora)" in out
    code, js = doctor(capsys, str(job), "--gpu-memory", "24", "--json")
    report = json.loads(js)
    assert code == 1 and report["ready"] is False
    (case,) = report["cases"]
    assert case["plan"]["fits"] is False and case["plan"]["mode"] == "sequential"
    assert case["components"][0]["params"] == 32_223_281_152
    assert case["time"]["diagnosis_renders_worst"] > 0 and case["time"]["s_per_item"] > 0


def test_full_size_dev_is_ready_on_an_h200(dev_base, tmp_path, capsys):
    job = write_dev_job(tmp_path, dev_base)
    code, out = doctor(capsys, str(job), "--card", "h200")
    assert code == 0, out
    assert "-> fits" in out and "verdict: READY" in out


def test_incomplete_base_model_and_lora_keys_that_map_nowhere(tmp_path, capsys):
    """BFL layout with one transformer tensor missing from the header, and a LoRA with a module the model does
    not have (block 8 of 8) and a key that is no adapter key at all."""
    from parity.engine.weights import FLUX2_DEV_VAE_CONFIG
    from parity.engine import keymap

    base = tmp_path / "FLUX.2-dev"
    tensors = {k: ("BF16", s) for k, s in bfl_dev_tensors().items()}
    assert len(tensors) == 299
    del tensors["single_blocks.47.linear2.weight"]
    write_header_only(base / "flux2-dev.safetensors", tensors)
    vae = keymap.diffusers_to_bfl_vae(fullsize.meta_vae(FLUX2_DEV_VAE_CONFIG).state_dict())
    write_header_only(base / "ae.safetensors", {k: ("F32", tuple(v.shape)) for k, v in vae.items()})
    write_text_encoder(base / "text_encoder")
    d = 6144
    job = write_dev_job(tmp_path, base, lora_extra={
        "diffusion_model.double_blocks.8.img_attn.proj.lora_A.weight": ("BF16", (16, d)),
        "diffusion_model.double_blocks.8.img_attn.proj.lora_B.weight": ("BF16", (d, 16)),
        "lora_unet_single_blocks_0_linear1.lora_down.weight": ("BF16", (16, d))})
    code, out = doctor(capsys, str(job), "--card", "h200")
    assert code == 1, out
    assert "FAIL  dev-lora: transformer weights" in out
    assert "1 of 299 tensors missing, e.g. single_blocks.47.linear2.weight" in out
    assert "flux2-dev.safetensors" in out
    lora_line = next(line for line in out.splitlines() if "LoRA keys" in line)
    assert "FAIL" in lora_line and "2 of 162 modules/keys map nowhere" in lora_line
    assert "lora_unet_single_blocks_0_linear1" in lora_line or "double_blocks.8.img_attn.proj" in lora_line


def test_truncated_file_is_named(tmp_path):
    from parity.doctor.headers import read_header
    from parity.errors import InputFileError

    path = tmp_path / "x.safetensors"
    write_header_only(path, {"a": ("BF16", (1024, 1024))})
    read_header(path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 1)
    with pytest.raises(InputFileError, match=r"x\.safetensors.*truncated"):
        read_header(path)


def test_bad_usage_exits_2(tmp_path, capsys):
    assert main(["doctor", str(tmp_path / "nowhere")]) == 2
    assert "no such case file, folder or job" in capsys.readouterr().err
    assert main(["doctor", str(ROOT / "cases"), "--card", "tpu-v9"]) == 2
    assert "unknown card 'tpu-v9'" in capsys.readouterr().err


def test_architecture_check_names_the_model_the_job_trained_on():
    """A FLUX.2-dev base for a klein 4B job fails with both names; a tiny config only warns. (Klein jobs reach the
    doctor once the job reader accepts them: issue 18.)"""
    from parity.doctor import architecture_check
    from parity.tiny import TRANSFORMER_CONFIG

    bad = architecture_check(DEV, "flux2_klein_4b")
    assert bad.status == "fail" and "flux2-dev but the job trained on flux2-klein-4b" in bad.detail
    assert architecture_check(fullsize.TRANSFORMER_CONFIGS["flux2-klein-9b"], "flux2_klein_9b").status == "ok"
    assert architecture_check(dict(TRANSFORMER_CONFIG), "flux2").status == "warn"


def test_text_encoder_names_for_klein_encoders_and_card_names():
    """Qwen3-4B ties lm_head to the embeddings (the checkpoint need not store it); Qwen3-8B does not. Device names
    as torch reports them find their card (closest memory among the same model)."""
    from parity.doctor.environment import card_by_name
    from parity.doctor.inputs import expected_text_encoder

    small = expected_text_encoder(fullsize.TEXT_ENCODER_CONFIGS["qwen3-4b"])
    large = expected_text_encoder(fullsize.TEXT_ENCODER_CONFIGS["qwen3-8b"])
    assert "lm_head.weight" not in small and large["lm_head.weight"] == (151936, 4096)
    assert len(small) == 36 * 11 + 2 and len(large) == len(small) + 1  # 11 tensors per Qwen3 layer, embed, norm
    assert card_by_name("NVIDIA H100 80GB HBM3").key == "h100"
    assert card_by_name("NVIDIA A100-SXM4-80GB", 85_899_345_920).key == "a100-80gb"
    assert card_by_name("NVIDIA A100-SXM4-40GB", 42_949_672_960).key == "a100-40gb"
    assert card_by_name("NVIDIA H200 NVL").key == "h200" and card_by_name("Tesla T4") is None


def test_hub_text_encoder_names_load_onto_the_full_size_model_as_transformers_renames_them():
    """Loading the real Mistral-Small-3.1 configuration: transformers' own checkpoint renaming (what
    from_pretrained applies) maps every hub-format name onto the full-size meta model, and the doctor's
    canonical names agree with it."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    from parity.doctor.inputs import canonical_te_name

    model = fullsize.meta_text_encoder("mistral-small-3.1-24b")
    sd = model.state_dict()
    conv = get_model_conversion_mapping(model)
    renamings = [c for c in conv if isinstance(c, WeightRenaming)]
    converters = [c for c in conv if isinstance(c, WeightConverter)]
    for key in sd:
        hub = hub_mistral_names(key)
        loaded, _ = rename_source_key(hub, renamings, converters, model.base_model_prefix, sd)
        assert loaded == key, (hub, loaded)
        assert canonical_te_name(hub) == canonical_te_name(key)
    assert sum(hub_mistral_names(k) != k for k in sd) == len(sd)  # every name differs between the two formats
