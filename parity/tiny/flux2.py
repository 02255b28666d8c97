"""Tiny FLUX.2-dev checkpoint factory: the files diffusers/transformers would save, written without importing them.

`build_tiny(dir)` writes the same two on-disk layouts as the hub repo `black-forest-labs/FLUX.2-dev`
(shared/reference/aitk-flux2-previews.md section H):
  - diffusers layout: model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/
  - BFL single files at the root: flux2-dev.safetensors (transformer), ae.safetensors (VAE), same weights
plus AI Toolkit-format LoRA files under loras/.

Every size rule of the real model is kept: 128 latent channels (32 VAE channels x 2x2 patch), 16 pixels per
latent token (3 VAE downsamples + 2x2 patch), context dim = 3 x text hidden size (hidden states 10/20/30 of a
Mistral3 text model, so it has >= 31 decoder layers).

Why no diffusers/transformers here: importing them costs ~8 s of CPU on a 2-core box, building the weights 0.5 s
(issue 2 asks for `parity make-tiny` in under 10 s). So each component's state dict is listed straight from its
config - (name, shape, initialiser) per tensor, mirroring the classes' own default initialisation - and the
config JSONs are the ones their save_pretrained/save_config write. tests/test_tiny.py holds this to the real
classes: same keys/shapes/dtypes as their state_dict(), from_pretrained loads every tensor unchanged, the JSON
files equal what save_pretrained writes, the tokenizer gives the same ids and chat template.

Every tensor is drawn from its own generator seeded by (seed, crc32 of component/name), so the weights do not
depend on the order tensors are listed in, and two builds are byte-identical.

Default random initialisation makes a tiny FLUX.2 nearly blind to steps, shift, guidance and prompt (adaLN gates
~0.06). `_sensitise_*` apply the measured fixes of shared/reference/cpu-stack-notes.md section 8 so that every
knob the harness diagnoses visibly changes the picture, while staying non-chaotic.

Everything is fp32 so the two layouts can be compared exactly; a real checkpoint is bf16.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch

from parity import fileio
from parity.engine import keymap
from parity.engine.fullsize import lora_target_shapes
from parity.family import DEFAULT_ARCH, family
from parity.jsonio import parse_json

# ---------------------------------------------------------------------------------------------- configs

TEXT_HIDDEN = 32
TEXT_LAYERS = 32  # >= 31 so hidden_states[30] exists (Flux2Pipeline text_encoder_out_layers=(10, 20, 30))

TRANSFORMER_CONFIG: dict = {
    "patch_size": 1,
    "in_channels": 128,  # real latent channels: 32 VAE channels x 2x2 patch
    "out_channels": None,
    "num_layers": 2,
    "num_single_layers": 3,
    "attention_head_dim": 16,
    "num_attention_heads": 4,  # inner dim 64
    "joint_attention_dim": 3 * TEXT_HIDDEN,  # stacked hidden states 10/20/30
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (4, 4, 4, 4),  # sums to the head dim, like (32, 32, 32, 32) for head dim 128
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": True,
}

VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,  # 3 downsamples -> 8 px per latent pixel
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (32, 32, 32, 32),
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 32,  # real value; the 2x2 patch makes 128 transformer channels
    "norm_num_groups": 32,  # BFL's AutoEncoder hard-codes 32 groups, so the BFL file stays loadable there
    "sample_size": 128,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "batch_norm_eps": 1e-4,
    "batch_norm_momentum": 0.1,
    "patch_size": (2, 2),
}
# AutoencoderKLFlux2 arguments left at their defaults, which save_config writes too.
_VAE_CLASS_DEFAULTS: dict = {"decoder_block_out_channels": None}

# FLUX.1-dev scheduler config, which diffusers' convert_flux2_to_diffusers.py copies for FLUX.2-dev.
SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
# FlowMatchEulerDiscreteScheduler arguments left at their defaults, which save_config writes too.
_SCHEDULER_CLASS_DEFAULTS: dict = {
    "invert_sigmas": False,
    "shift_terminal": None,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

TOKENIZER_VOCAB = 512

# text_encoder/config.json as Mistral3ForConditionalGeneration.save_pretrained writes it (without
# transformers_version): a 32-layer Mistral text model of width 32 and a one-layer Pixtral vision tower.
# Initialiser range 0.3 (cpu-stack-notes section 8) so different prompts give clearly different conditioning.
TEXT_ENCODER_CONFIG: dict = {
    "architectures": ["Mistral3ForConditionalGeneration"],
    "dtype": "float32",
    "image_token_index": 10,
    "model_type": "mistral3",
    "multimodal_projector_bias": False,
    "projector_hidden_act": "gelu",
    "spatial_merge_size": 2,
    "text_config": {
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": 8,
        "hidden_act": "silu",
        "hidden_size": TEXT_HIDDEN,
        "initializer_range": 0.3,
        "intermediate_size": 64,
        "max_position_embeddings": 2048,
        "model_type": "mistral",
        "num_attention_heads": 4,
        "num_hidden_layers": TEXT_LAYERS,
        "num_key_value_heads": 2,
        "pad_token_id": 11,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {"rope_theta": 1e9, "rope_type": "default"},
        "sliding_window": None,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": TOKENIZER_VOCAB,
    },
    "tie_word_embeddings": False,
    "vision_config": {
        "attention_dropout": 0.0,
        "head_dim": 4,
        "hidden_act": "gelu",
        "hidden_size": 16,
        "image_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 32,
        "model_type": "pixtral",
        "num_attention_heads": 4,
        "num_channels": 3,
        "num_hidden_layers": 1,
        "patch_size": 8,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"},
    },
    "vision_feature_layer": -1,
}

# text_encoder/generation_config.json: GenerationConfig.from_model_config of the above.
_GENERATION_CONFIG: dict = {
    "_from_model_config": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "output_attentions": False,
    "output_hidden_states": False,
    "pad_token_id": 11,
    "use_cache": True,
}

# Mistral (tekken) special tokens, ids 0..19 in this order.
SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
]  # fmt: skip

# tokenizer/tokenizer_config.json as transformers 5's PreTrainedTokenizerFast (saved as its TokenizersBackend)
# writes it for bos <s>, eos </s>, unk <unk>, pad <pad>, left padding, 131072 max length.
_TOKENIZER_CONFIG: dict = {
    "backend": "tokenizers",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "model_max_length": 131072,
    "pad_token": "<pad>",
    "padding_side": "left",
    "tokenizer_class": "TokenizersBackend",
    "unk_token": "<unk>",
}

# Mistral-style chat template; message content may be a string or a list of {"type": "text"|"image"} blocks
# (Flux2Pipeline sends the list form).
CHAT_TEMPLATE = (
    "{{- bos_token -}}{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set ns = namespace(t='') -%}{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'text' -%}{%- set ns.t = ns.t + block['text'] -%}"
    "{%- elif block['type'] in ['image', 'image_url'] -%}{%- set ns.t = ns.t + '[IMG]' -%}{%- endif -%}"
    "{%- endfor -%}{%- set text = ns.t -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '[INST]' + text + '[/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- text + eos_token -}}{%- endif -%}{%- endfor -%}"
)

_TOKENIZER_CORPUS = [
    "You are an AI that reasons about image descriptions. You give structured responses focusing on object "
    "relationships, object attribution and actions without speculation.",
    "a photo of a red fox sitting in the snow at sunrise",
    "a watercolor painting of a lighthouse on a rocky coast, dramatic clouds",
    "portrait of a woman with curly hair, studio lighting, 85mm",
    "a cozy cabin in the forest, warm light from the windows, night",
    "macro shot of a blue beetle on a green leaf, shallow depth of field",
    "an astronaut riding a horse on the moon, digital art, highly detailed",
    "sks dog wearing a tiny hat, 1girl, ohwx man, trigger word, style of [trigger]",
]

# model_index.json component entries, as Flux2Pipeline.save_pretrained writes them.
_PIPELINE_COMPONENTS: dict = {
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Mistral3ForConditionalGeneration"],
    "tokenizer": ["transformers", "TokenizersBackend"],
    "transformer": ["diffusers", "Flux2Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLFlux2"],
}

BFL_TRANSFORMER_FILE = family(DEFAULT_ARCH).single_file  # hub repo root names
BFL_VAE_FILE = "ae.safetensors"
LORA_FILE = "loras/tiny_lora.safetensors"
LOKR_FILE = "loras/tiny_lokr.safetensors"


# ---------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class TinyPaths:
    """Where `build_tiny` wrote each part. `diffusers_dir` is the root (loadable by Flux2Pipeline.from_pretrained)."""

    root: Path
    diffusers_dir: Path
    transformer_dir: Path
    vae_dir: Path
    text_encoder_dir: Path
    tokenizer_dir: Path
    scheduler_dir: Path
    bfl_transformer: Path  # flux2-dev.safetensors
    bfl_vae: Path  # ae.safetensors
    lora: Path  # AI Toolkit plain LoRA (lora_A/lora_B, no alpha)
    lokr: Path  # AI Toolkit LoKr (lokr_w1/lokr_w2/alpha)
    files: tuple[Path, ...] = field(default=())
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------- tensor specs

# One tensor: (name, shape, init). init is ("uniform", bound) | ("normal", std) | ("ones",) | ("zeros",) |
# ("count",) (an int64 zero: BatchNorm's num_batches_tracked).
Spec = tuple[str, tuple[int, ...], tuple]


def _linear(specs: list, name: str, out_f: int, in_f: int, *, bias: bool) -> None:
    """torch.nn.Linear's own init, which diffusers keeps: kaiming_uniform_(a=sqrt(5)) is U(+-1/sqrt(fan_in));
    the bias uses the same bound."""
    bound = 1.0 / math.sqrt(in_f)
    specs.append((f"{name}.weight", (out_f, in_f), ("uniform", bound)))
    if bias:
        specs.append((f"{name}.bias", (out_f,), ("uniform", bound)))


def _conv(specs: list, name: str, out_c: int, in_c: int, k: int) -> None:
    """torch.nn.Conv2d's own init (with bias): U(+-1/sqrt(fan_in)), fan_in = in_c * k * k."""
    bound = 1.0 / math.sqrt(in_c * k * k)
    specs.append((f"{name}.weight", (out_c, in_c, k, k), ("uniform", bound)))
    specs.append((f"{name}.bias", (out_c,), ("uniform", bound)))


def _norm(specs: list, name: str, c: int, *, bias: bool) -> None:
    """GroupNorm / RMSNorm affine parameters: weight 1 (bias 0)."""
    specs.append((f"{name}.weight", (c,), ("ones",)))
    if bias:
        specs.append((f"{name}.bias", (c,), ("zeros",)))


def transformer_specs(cfg: dict = TRANSFORMER_CONFIG) -> list[Spec]:
    """Flux2Transformer2DModel's state dict (diffusers names) for `cfg`. Every Linear is bias-free and every norm
    weight-only, as in BFL's FLUX.2 (diffusers transformer_flux2.py); no buffers are persisted."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]  # inner dim
    mlp = int(d * cfg["mlp_ratio"])  # SwiGLU hidden; linear_in emits gate and up (2 x mlp)
    head = cfg["attention_head_dim"]
    out_c = (cfg["out_channels"] or cfg["in_channels"]) * cfg["patch_size"] ** 2
    s: list[Spec] = []
    _linear(s, "x_embedder", d, cfg["in_channels"], bias=False)
    _linear(s, "context_embedder", d, cfg["joint_attention_dim"], bias=False)
    embedders = ("timestep_embedder", "guidance_embedder") if cfg["guidance_embeds"] else ("timestep_embedder",)
    for e in embedders:
        _linear(s, f"time_guidance_embed.{e}.linear_1", d, cfg["timestep_guidance_channels"], bias=False)
        _linear(s, f"time_guidance_embed.{e}.linear_2", d, d, bias=False)
    # Shared adaLN modulations: shift/scale/gate for attention and MLP (6 x d) per double stream, 3 x d single.
    _linear(s, "double_stream_modulation_img.linear", 6 * d, d, bias=False)
    _linear(s, "double_stream_modulation_txt.linear", 6 * d, d, bias=False)
    _linear(s, "single_stream_modulation.linear", 3 * d, d, bias=False)
    for n in range(cfg["num_layers"]):
        b = f"transformer_blocks.{n}"
        for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            _linear(s, f"{b}.attn.{p}", d, d, bias=False)
        for p in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            _norm(s, f"{b}.attn.{p}", head, bias=False)
        for ff in ("ff", "ff_context"):
            _linear(s, f"{b}.{ff}.linear_in", 2 * mlp, d, bias=False)
            _linear(s, f"{b}.{ff}.linear_out", d, mlp, bias=False)
    for n in range(cfg["num_single_layers"]):
        b = f"single_transformer_blocks.{n}.attn"
        _linear(s, f"{b}.to_qkv_mlp_proj", 3 * d + 2 * mlp, d, bias=False)  # fused q, k, v, gate, up
        _linear(s, f"{b}.to_out", d, d + mlp, bias=False)  # fused attention out + MLP down
        _norm(s, f"{b}.norm_q", head, bias=False)
        _norm(s, f"{b}.norm_k", head, bias=False)
    _linear(s, "norm_out.linear", 2 * d, d, bias=False)  # final adaLN: shift, scale
    _linear(s, "proj_out", out_c, d, bias=False)
    return s


def _vae_resnet(s: list, name: str, in_c: int, out_c: int) -> None:
    _norm(s, f"{name}.norm1", in_c, bias=True)
    _conv(s, f"{name}.conv1", out_c, in_c, 3)
    _norm(s, f"{name}.norm2", out_c, bias=True)
    _conv(s, f"{name}.conv2", out_c, out_c, 3)
    if in_c != out_c:
        _conv(s, f"{name}.conv_shortcut", out_c, in_c, 1)


def _vae_mid_block(s: list, name: str, c: int, attention: bool) -> None:
    _vae_resnet(s, f"{name}.resnets.0", c, c)
    if attention:  # one head of width c, biased projections (diffusers Attention)
        _norm(s, f"{name}.attentions.0.group_norm", c, bias=True)
        for p in ("to_q", "to_k", "to_v", "to_out.0"):
            _linear(s, f"{name}.attentions.0.{p}", c, c, bias=True)
    _vae_resnet(s, f"{name}.resnets.1", c, c)


def vae_specs(cfg: dict = VAE_CONFIG) -> list[Spec]:
    """AutoencoderKLFlux2's state dict (diffusers names) for `cfg`: diffusers' Encoder/Decoder (down blocks with
    layers_per_block resnets, up blocks with one more), 1x1 quant convs, and the latent BatchNorm over the
    2x2-patched latents (no affine parameters; running stats and an int64 counter)."""
    ch = list(cfg["block_out_channels"])
    lat = cfg["latent_channels"]
    s: list[Spec] = []
    _conv(s, "encoder.conv_in", ch[0], cfg["in_channels"], 3)
    for i, out_c in enumerate(ch):
        in_c = ch[max(i - 1, 0)]
        for j in range(cfg["layers_per_block"]):
            _vae_resnet(s, f"encoder.down_blocks.{i}.resnets.{j}", in_c if j == 0 else out_c, out_c)
        if i < len(ch) - 1:
            _conv(s, f"encoder.down_blocks.{i}.downsamplers.0.conv", out_c, out_c, 3)
    _vae_mid_block(s, "encoder.mid_block", ch[-1], cfg["mid_block_add_attention"])
    _norm(s, "encoder.conv_norm_out", ch[-1], bias=True)
    _conv(s, "encoder.conv_out", 2 * lat, ch[-1], 3)  # mean and log-variance
    if cfg["use_quant_conv"]:
        _conv(s, "quant_conv", 2 * lat, 2 * lat, 1)
    if cfg["use_post_quant_conv"]:
        _conv(s, "post_quant_conv", lat, lat, 1)
    rev = ch[::-1]
    _conv(s, "decoder.conv_in", rev[0], lat, 3)
    _vae_mid_block(s, "decoder.mid_block", rev[0], cfg["mid_block_add_attention"])
    for i, out_c in enumerate(rev):
        in_c = rev[max(i - 1, 0)]
        for j in range(cfg["layers_per_block"] + 1):
            _vae_resnet(s, f"decoder.up_blocks.{i}.resnets.{j}", in_c if j == 0 else out_c, out_c)
        if i < len(rev) - 1:
            _conv(s, f"decoder.up_blocks.{i}.upsamplers.0.conv", out_c, out_c, 3)
    _norm(s, "decoder.conv_norm_out", ch[0], bias=True)
    _conv(s, "decoder.conv_out", cfg["out_channels"], ch[0], 3)
    bn_c = lat * cfg["patch_size"][0] * cfg["patch_size"][1]
    s.append(("bn.running_mean", (bn_c,), ("zeros",)))
    s.append(("bn.running_var", (bn_c,), ("ones",)))
    s.append(("bn.num_batches_tracked", (), ("count",)))
    return s


def text_encoder_specs(cfg: dict = TEXT_ENCODER_CONFIG) -> list[Spec]:
    """Mistral3ForConditionalGeneration's tensors, named as its save_pretrained writes them
    (`language_model.model.*`, `language_model.lm_head`, `vision_tower.*`, `multi_modal_projector.*`).
    transformers' _init_weights: every Linear/Conv2d weight N(0, initializer_range) of its own sub-config (text
    0.3 also for the projector, vision 0.02), no biases here, RMSNorm weights 1; the embedding is N(0, range) too
    (transformers also zeroes the padding row, but `_sensitise_text_encoder` replaces the whole table)."""
    t, v = cfg["text_config"], cfg["vision_config"]
    h, ffn, std = t["hidden_size"], t["intermediate_size"], t["initializer_range"]
    q_dim, kv_dim = t["num_attention_heads"] * t["head_dim"], t["num_key_value_heads"] * t["head_dim"]
    vh, vffn, vstd = v["hidden_size"], v["intermediate_size"], v["initializer_range"]
    merge = cfg["spatial_merge_size"]

    def normal(name: str, shape: tuple[int, ...], sd: float) -> None:
        s.append((name, shape, ("normal", sd)))

    s: list[Spec] = []
    normal("language_model.model.embed_tokens.weight", (t["vocab_size"], h), std)
    for n in range(t["num_hidden_layers"]):
        b = f"language_model.model.layers.{n}"
        normal(f"{b}.self_attn.q_proj.weight", (q_dim, h), std)
        normal(f"{b}.self_attn.k_proj.weight", (kv_dim, h), std)
        normal(f"{b}.self_attn.v_proj.weight", (kv_dim, h), std)
        normal(f"{b}.self_attn.o_proj.weight", (h, q_dim), std)
        normal(f"{b}.mlp.gate_proj.weight", (ffn, h), std)
        normal(f"{b}.mlp.up_proj.weight", (ffn, h), std)
        normal(f"{b}.mlp.down_proj.weight", (h, ffn), std)
        _norm(s, f"{b}.input_layernorm", h, bias=False)
        _norm(s, f"{b}.post_attention_layernorm", h, bias=False)
    _norm(s, "language_model.model.norm", h, bias=False)
    normal("language_model.lm_head.weight", (t["vocab_size"], h), std)

    p = v["patch_size"]
    normal("vision_tower.patch_conv.weight", (vh, v["num_channels"], p, p), vstd)
    _norm(s, "vision_tower.ln_pre", vh, bias=False)
    for n in range(v["num_hidden_layers"]):
        b = f"vision_tower.transformer.layers.{n}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            normal(f"{b}.attention.{proj}.weight", (vh, vh), vstd)
        normal(f"{b}.feed_forward.gate_proj.weight", (vffn, vh), vstd)
        normal(f"{b}.feed_forward.up_proj.weight", (vffn, vh), vstd)
        normal(f"{b}.feed_forward.down_proj.weight", (vh, vffn), vstd)
        _norm(s, f"{b}.attention_norm", vh, bias=False)
        _norm(s, f"{b}.ffn_norm", vh, bias=False)

    _norm(s, "multi_modal_projector.norm", vh, bias=False)
    normal("multi_modal_projector.patch_merger.merging_layer.weight", (vh, vh * merge * merge), std)
    normal("multi_modal_projector.linear_1.weight", (h, vh), std)
    normal("multi_modal_projector.linear_2.weight", (h, h), std)
    return s


# ---------------------------------------------------------------------------------------------- drawing


def _tensor_gen(seed: int, component: str, name: str) -> torch.Generator:
    """A generator of its own for one tensor: (seed, crc32 of "component/name"), independent of listing order."""
    crc = zlib.crc32(f"{component}/{name}".encode())
    return torch.Generator("cpu").manual_seed(((seed & 0xFFFFFFFF) << 32) | crc)


def _draw(seed: int, component: str, spec: Spec) -> torch.Tensor:
    name, shape, init = spec
    kind = init[0]
    if kind == "ones":
        return torch.ones(shape)
    if kind == "zeros":
        return torch.zeros(shape)
    if kind == "count":
        return torch.zeros(shape, dtype=torch.int64)
    g = _tensor_gen(seed, component, name)
    if kind == "uniform":
        return (torch.rand(shape, generator=g) * 2 - 1) * init[1]
    if kind == "normal":
        return torch.randn(shape, generator=g) * init[1]
    raise ValueError(f"unknown initialiser {init!r} for {name}")


def materialise(specs: list[Spec], *, seed: int, component: str) -> dict[str, torch.Tensor]:
    """{name: tensor} drawn from the specs (fp32; int64 counters)."""
    return {spec[0]: _draw(seed, component, spec) for spec in specs}


def transformer_state_dict(seed: int = 0, *, smooth: bool = False) -> dict[str, torch.Tensor]:
    sd = materialise(transformer_specs(), seed=seed, component="transformer")
    _sensitise_transformer(sd, seed)
    if smooth:
        _smooth_transformer(sd)
    return sd


def vae_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    sd = materialise(vae_specs(), seed=seed, component="vae")
    _sensitise_vae(sd, seed)
    return sd


def text_encoder_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Keyed as text_encoder/model.safetensors is (see `text_encoder_specs`)."""
    sd = materialise(text_encoder_specs(), seed=seed, component="text_encoder")
    _sensitise_text_encoder(sd, seed)
    return sd


# ---------------------------------------------------------------------------------------------- section 8


def _sensitise_transformer(sd: dict[str, torch.Tensor], seed: int) -> None:
    """cpu-stack-notes section 8: time/guidance embedder output layers x6, every modulation x3, QK RMSNorm
    scales (1 +- 0.25) x 4. Without this the adaLN gates sit near 0.06 and the velocity ignores t, guidance, text."""
    for name, p in sd.items():
        if name.startswith("time_guidance_embed.") and ".linear_2." in name:
            p.mul_(6.0)
        elif "modulation" in name or name.startswith("norm_out.linear"):
            p.mul_(3.0)
        elif any(f".{n}.weight" in name for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")):
            u = torch.rand(p.shape, generator=_tensor_gen(seed, "sensitise/transformer", name)) * 2 - 1
            p.copy_(4.0 * (1.0 + 0.25 * u))


# The smooth response (`build_tiny(smooth=True)`): a trained FLUX.2 responds smoothly to its sampling knobs (guidance
# 5.4 renders close to 5.5, 13 steps close to 12), which is what lets a search recover a knob's value from a
# preview. A random tiny one does not, for two reasons measured with notes in docs/parameter-recovery.md:
#  - t and guidance enter as sinusoids of 1000 * value at up to 1 rad per 0.001: any change scrambles the
#    modulation. Band-limiting the embedders' inputs (Gaussian in frequency) keeps the slow channels only.
#  - QK-norm scales of 4 make attention so sharp that the sampling ODE is chaotic (a 0.1 change of guidance gives
#    another picture); 1.5 keeps it smooth, while the larger time/guidance gains and output projection keep every
#    knob clearly visible (the recorded-vs-true renders of the recovery tests are all DRIFT, not NEAR).
SMOOTH_TIME_BAND = 6.0        # rad per unit t kept by the timestep embedder's input (e^-1 at this frequency)
SMOOTH_GUIDANCE_BAND = 2.0    # rad per unit guidance kept by the guidance embedder's input
SMOOTH_TIME_GAIN = 8.0
SMOOTH_GUIDANCE_GAIN = 2.0
SMOOTH_QK_SCALE = 1.5
SMOOTH_PROJ_OUT_GAIN = 1.5


def _band_limit(weight: torch.Tensor, band: float, gain: float) -> torch.Tensor:
    """Scale the input columns of an embedder's linear_1 ([out, 2*half]: cos half, then sin half, as diffusers'
    Timesteps(flip_sin_to_cos=True) lays them out) by exp(-(w / band)^2), w = 1000 * 10000^(-j/half) rad per unit."""
    half = weight.shape[1] // 2
    rad_per_unit = 1000.0 * torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    damp = torch.exp(-((rad_per_unit / band) ** 2)).to(weight.dtype)
    return weight * torch.cat([damp, damp])[None, :] * gain


def _smooth_transformer(sd: dict[str, torch.Tensor]) -> None:
    """Applied after `_sensitise_transformer`: see the block comment above."""
    e = "time_guidance_embed.{}_embedder.linear_1.weight"
    sd[e.format("timestep")] = _band_limit(sd[e.format("timestep")], SMOOTH_TIME_BAND, SMOOTH_TIME_GAIN)
    sd[e.format("guidance")] = _band_limit(sd[e.format("guidance")], SMOOTH_GUIDANCE_BAND, SMOOTH_GUIDANCE_GAIN)
    for name, p in sd.items():
        if any(f".{n}.weight" in name for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")):
            p.mul_(SMOOTH_QK_SCALE / 4.0)
        elif name.startswith("proj_out."):
            p.mul_(SMOOTH_PROJ_OUT_GAIN)


def _sensitise_vae(sd: dict[str, torch.Tensor], seed: int) -> None:
    """Decoder 3x3 convs become a random channel mix times a 1-2-1 blur (cpu-stack-notes section 8): images are
    smooth colour fields, so JPEG q75 costs ~0.03 SSIM as on real previews instead of destroying pixel noise.
    BN running stats get non-trivial values so (de)normalisation is exercised."""
    blur1 = torch.tensor([1.0, 2.0, 1.0])
    blur = torch.outer(blur1, blur1) / 16.0  # [3, 3], sums to 1

    def gen(name: str) -> torch.Generator:
        return _tensor_gen(seed, "sensitise/vae", name)

    for name, w in sd.items():
        if name.startswith("decoder.") and name.endswith(".weight") and w.dim() == 4 and w.shape[2:] == (3, 3):
            out_c, in_c = w.shape[:2]
            mix = torch.randn((out_c, in_c), generator=gen(name)) * math.sqrt(2.0 / in_c)
            w.copy_(mix[:, :, None, None] * blur)
    # Default init saturates ~20 % of pixels at 0/255; flat clipped areas hide differences between renders.
    sd["decoder.conv_out.weight"].mul_(0.6)
    mean, var = sd["bn.running_mean"], sd["bn.running_var"]
    mean.copy_(torch.randn(mean.shape, generator=gen("bn.running_mean")) * 0.5)
    var.copy_(torch.rand(var.shape, generator=gen("bn.running_var")) * 1.5 + 0.5)


def _sensitise_text_encoder(sd: dict[str, torch.Tensor], seed: int) -> None:
    """N(0, 1) token embeddings (cpu-stack-notes section 8) so different prompts give clearly different
    conditioning (with the 0.3 initialiser range of TEXT_ENCODER_CONFIG)."""
    name = "language_model.model.embed_tokens.weight"
    emb = sd[name]
    emb.copy_(torch.randn(emb.shape, generator=_tensor_gen(seed, "sensitise/text_encoder", name)))


# ---------------------------------------------------------------------------------------------- tokenizer


def train_tokenizer():
    """A `tokenizers.Tokenizer`: byte-level BPE with Mistral special tokens, trained on a fixed corpus
    (deterministic). Byte-level means any prompt tokenizes and different prompts give different ids.
    The post-processor is the identity template transformers 5 installs when neither BOS nor EOS is added
    (the chat template adds <s> itself); it is part of tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    return tok


# ---------------------------------------------------------------------------------------------- writing


def _save_safetensors(path: Path, sd: dict, metadata: dict | None = None) -> None:
    """safetensors file with a canonical header (keys sorted). safetensors itself serialises `__metadata__`
    from a Rust HashMap, so a file with several metadata entries differs from run to run; re-dumping the
    header with sorted keys makes the bytes reproducible. The data section is untouched (offsets are relative
    to the end of the header); the header is space-padded to 8 bytes as safetensors does."""
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous() for k, v in sd.items()}, metadata=metadata or {"format": "pt"})
    n = int.from_bytes(blob[:8], "little")
    header = parse_json(blob[8 : 8 + n], "safetensors header")
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_bytes(path, len(text).to_bytes(8, "little") + text + blob[8 + n :])


def _write_json(path: Path, obj: dict) -> None:
    """As diffusers' save_config and transformers' save_pretrained write configs: sorted keys, indent 2, final
    newline (tuples become lists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _write_configs(root: Path, arch: str) -> None:
    dv, tv = version("diffusers"), version("transformers")  # metadata only: neither package is imported

    def diffusers_cfg(class_name: str, cfg: dict) -> dict:
        return {"_class_name": class_name, "_diffusers_version": dv, **cfg}

    _write_json(root / "model_index.json", diffusers_cfg(family(arch).pipeline_class, _PIPELINE_COMPONENTS))
    _write_json(root / "transformer/config.json", diffusers_cfg("Flux2Transformer2DModel", TRANSFORMER_CONFIG))
    _write_json(root / "vae/config.json", diffusers_cfg("AutoencoderKLFlux2", {**VAE_CONFIG, **_VAE_CLASS_DEFAULTS}))
    _write_json(
        root / "scheduler/scheduler_config.json",
        diffusers_cfg("FlowMatchEulerDiscreteScheduler", {**SCHEDULER_CONFIG, **_SCHEDULER_CLASS_DEFAULTS}),
    )
    _write_json(root / "text_encoder/config.json", {**TEXT_ENCODER_CONFIG, "transformers_version": tv})
    _write_json(root / "text_encoder/generation_config.json", {**_GENERATION_CONFIG, "transformers_version": tv})


def _write_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fileio.write_text(folder / "tokenizer.json", train_tokenizer().to_str(pretty=True))
    _write_json(folder / "tokenizer_config.json", _TOKENIZER_CONFIG)
    fileio.write_text(folder / "chat_template.jinja", CHAT_TEMPLATE)


def build_tiny(out_dir: str | Path, *, seed: int = 0, smooth: bool = False, arch: str = DEFAULT_ARCH) -> TinyPaths:
    """Write the tiny FLUX.2-dev checkpoint (both layouts + LoRA files) into `out_dir`. Deterministic.
    `smooth`: the transformer responds smoothly to guidance and multiplier like a trained model (the
    parameter-recovery tests and benchmark; see `_smooth_transformer`); with the LoRA applied its renders still
    jump from one step count or shift to the next (docs/parameter-recovery.md, "Why the steps and the shift are
    rough there"). `arch`: the guidance-distilled family member it stands for (its pipeline class and single-file
    name; the shapes are these)."""
    if family(arch).true_cfg:
        raise ValueError(f"{arch!r} runs true CFG: its tiny model is parity.tiny.klein's")
    t0 = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)

    _write_configs(root, arch)
    _write_tokenizer(root / "tokenizer")
    transformer, vae = transformer_state_dict(seed, smooth=smooth), vae_state_dict(seed)
    _save_safetensors(root / "transformer/diffusion_pytorch_model.safetensors", transformer)
    _save_safetensors(root / "vae/diffusion_pytorch_model.safetensors", vae)
    _save_safetensors(root / "text_encoder/model.safetensors", text_encoder_state_dict(seed))

    # Root single files as in the hub repo (AI Toolkit loads these: flux2_model.py L50-51).
    _save_safetensors(root / family(arch).single_file, keymap.diffusers_to_bfl_transformer(transformer))
    _save_safetensors(root / BFL_VAE_FILE, keymap.diffusers_to_bfl_vae(vae))

    shapes = bfl_lora_target_shapes(TRANSFORMER_CONFIG)
    save_aitk_lora(root / LORA_FILE, make_lora(shapes, seed=seed + 1, rank=4), step=100, name="tiny_lora")
    save_aitk_lora(root / LOKR_FILE, make_lora(shapes, seed=seed + 2, kind="lokr"), step=100, name="tiny_lokr")
    return tiny_paths(root, seconds=time.perf_counter() - t0, arch=arch)


def tiny_paths(root: str | Path, *, seconds: float = 0.0, arch: str = DEFAULT_ARCH) -> TinyPaths:
    """The paths of a tiny checkpoint written by `build_tiny` into `root` (files: every file found there)."""
    root = Path(root)
    return TinyPaths(
        root=root,
        diffusers_dir=root,
        transformer_dir=root / "transformer",
        vae_dir=root / "vae",
        text_encoder_dir=root / "text_encoder",
        tokenizer_dir=root / "tokenizer",
        scheduler_dir=root / "scheduler",
        bfl_transformer=root / family(arch).single_file,
        bfl_vae=root / BFL_VAE_FILE,
        lora=root / LORA_FILE,
        lokr=root / LOKR_FILE,
        files=tuple(sorted(p for p in root.rglob("*") if p.is_file())),
        seconds=seconds,
    )


# ---------------------------------------------------------------------------------------------- LoRA files


def bfl_lora_target_shapes(transformer_config: dict) -> dict[str, tuple[int, int]]:
    """AI Toolkit's default LoRA targets (parity.engine.fullsize.lora_target_shapes) of a transformer config, the
    tiny model's values filling what `transformer_config` leaves out."""
    return lora_target_shapes({**TRANSFORMER_CONFIG, **transformer_config})


def lokr_factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split `dimension` into (m, n), m <= n, m*n = dimension, as AI Toolkit's LoKr does (toolkit/models/lokr.py
    `factorization`, from LyCORIS). The sum bound there is the initial m + n = dimension + 1 and never tightens,
    so the loop walks divisors up to `factor`: with factor -1 the result is the most balanced pair (250 ->
    (10, 25), 360 -> (18, 20)), not what that function's stale docstring table shows."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


# AI Toolkit full-rank LoKr sets linear = linear_alpha = 9999999999 (toolkit/config_modules.py, lokr_full_rank);
# with both factors full, the module forces alpha = rank, i.e. scale 1 (toolkit/models/lokr.py).
LOKR_FULL_RANK_ALPHA = 9999999999.0


def make_lora(
    transformer_config_or_bfl_shapes: dict,
    *,
    seed: int,
    rank: int = 4,
    strength: float = 1.0,
    kind: str = "lora",
    dtype: torch.dtype = torch.bfloat16,
    factor: int = -1,
) -> dict[str, torch.Tensor]:
    """Random AI Toolkit-format FLUX.2 adapter weights, keyed `diffusion_model.<BFL module>.<param>`.

    `transformer_config_or_bfl_shapes`: a Flux2Transformer2DModel config dict, or {BFL module: (out, in)}.
    kind "lora": `lora_A` [rank, in] ~ N(0, 1/in), `lora_B` [out, rank] ~ N(0, 1.5^2) x strength, no alpha
    (AI Toolkit drops it; scale 1). kind "lokr": full-rank `lokr_w1` [out_l, in_m], `lokr_w2` [out_k, in_n]
    with delta W = kron(w1, w2) x strength, and `alpha` as AI Toolkit stores it.
    The weights are large on purpose (cpu-stack-notes section 8) so the adapter visibly changes the image: B @ A
    is about five times the base weights, which also makes the tiny transformer's response to t (so to the steps
    and the shift) jagged (docs/parameter-recovery.md, "Why the steps and the shift are rough there").
    Same seed -> same base factors, so `strength` scales one fixed direction (a checkpoint "training" over steps).
    """
    if kind not in ("lora", "lokr"):
        raise ValueError(f"kind must be 'lora' or 'lokr', not {kind!r}")
    sample = next(iter(transformer_config_or_bfl_shapes.values()), None)
    if isinstance(sample, (tuple, list)) and len(sample) == 2:
        shapes = {k: (int(v[0]), int(v[1])) for k, v in transformer_config_or_bfl_shapes.items()}
    else:
        shapes = bfl_lora_target_shapes(transformer_config_or_bfl_shapes)
    g = torch.Generator("cpu").manual_seed(int(seed))
    sd: dict[str, torch.Tensor] = {}
    for module in sorted(shapes):
        out_f, in_f = shapes[module]
        key = f"diffusion_model.{module}"
        if kind == "lora":
            a = torch.randn((rank, in_f), generator=g) / math.sqrt(in_f)
            b = torch.randn((out_f, rank), generator=g) * 1.5
            sd[f"{key}.lora_A.weight"] = a.to(dtype)
            sd[f"{key}.lora_B.weight"] = (b * strength).to(dtype)
        else:
            out_l, out_k = lokr_factorization(out_f, factor)
            in_m, in_n = lokr_factorization(in_f, factor)
            # kron(w1, w2) has entries w1*w2; pick stds so delta W ~ B@A of the plain LoRA in size:
            # std(B@A) ~ 1.5 * sqrt(rank / in).
            target = 1.5 * math.sqrt(rank / in_f)
            w1 = torch.randn((out_l, in_m), generator=g)
            w2 = torch.randn((out_k, in_n), generator=g) * target
            sd[f"{key}.lokr_w1"] = w1.to(dtype)
            sd[f"{key}.lokr_w2"] = (w2 * strength).to(dtype)
            sd[f"{key}.alpha"] = torch.tensor(LOKR_FULL_RANK_ALPHA).to(dtype)
    return sd


def aitk_metadata(*, step: int, name: str, epoch: int = 0) -> dict[str, str]:
    """safetensors metadata as AI Toolkit writes it (BaseSDTrainProcess.update_training_metadata +
    toolkit/metadata.py get_meta_for_safetensors: non-strings JSON-encoded, format pt)."""
    meta = {
        "training_info": json.dumps({"step": int(step), "epoch": int(epoch)}),
        "ss_base_model_version": "flux2",
        "ss_output_name": name,
        "software": json.dumps({"name": "ai-toolkit", "repo": "https://github.com/ostris/ai-toolkit"}),
        "format": "pt",
    }
    return meta


def save_aitk_lora(path: str | Path, state_dict: dict, *, step: int, name: str, epoch: int = 0) -> Path:
    """Write an AI Toolkit-style LoRA/LoKr safetensors file (with its training metadata)."""
    path = Path(path)
    _save_safetensors(path, state_dict, aitk_metadata(step=step, name=name, epoch=epoch))
    return path
