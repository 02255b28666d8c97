"""Tiny FLUX.2-dev checkpoint factory: real diffusers/transformers classes, random weights from a fixed seed.

`build_tiny(dir)` writes the same two on-disk layouts as the hub repo `black-forest-labs/FLUX.2-dev`
(shared/reference/aitk-flux2-previews.md section H):
  - diffusers layout: model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/
  - BFL single files at the root: flux2-dev.safetensors (transformer), ae.safetensors (VAE), same weights
plus AI Toolkit-format LoRA files under loras/.

Every size rule of the real model is kept: 128 latent channels (32 VAE channels x 2x2 patch), 16 pixels per
latent token (3 VAE downsamples + 2x2 patch), context dim = 3 x text hidden size (hidden states 10/20/30 of a
Mistral3 text model, so it has >= 31 decoder layers).

Default random initialisation makes a tiny FLUX.2 nearly blind to steps, shift, guidance and prompt (adaLN gates
~0.06). `_sensitise_*` apply the measured fixes of shared/reference/cpu-stack-notes.md section 8 so that every
knob the harness diagnoses visibly changes the picture, while staying non-chaotic.

Everything is fp32 so the two layouts can be compared exactly; a real checkpoint is bf16.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from parity.engine import keymap

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

# Mistral (tekken) special tokens, ids 0..19 in this order.
SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
]  # fmt: skip

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

TOKENIZER_VOCAB = 512

BFL_TRANSFORMER_FILE = "flux2-dev.safetensors"  # hub repo root names
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


# ---------------------------------------------------------------------------------------------- builders


def _gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed * 1000 + salt)


def build_tokenizer():
    """Byte-level BPE with Mistral special tokens and a chat template; trained on a fixed corpus (deterministic).
    Byte-level means any prompt tokenizes and different prompts give different ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

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
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=131072,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_text_encoder(seed: int):
    """Mistral3ForConditionalGeneration: 32-layer Mistral text model of width 32, one-layer Pixtral vision tower.
    Initialiser range 0.3 and N(0,1) token embeddings (cpu-stack-notes section 8) so prompts differ clearly."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    text = {
        "model_type": "mistral",
        "vocab_size": TOKENIZER_VOCAB,
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 2048,
        "sliding_window": None,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1e9,
        "initializer_range": 0.3,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 11,
        "tie_word_embeddings": False,
    }
    vision = {
        "model_type": "pixtral",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "head_dim": 4,
        "image_size": 32,
        "patch_size": 8,
        "num_channels": 3,
    }
    cfg = Mistral3Config(
        text_config=text,
        vision_config=vision,
        image_token_index=10,
        spatial_merge_size=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed * 1000 + 1)
    model = Mistral3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.copy_(torch.randn(emb.shape, generator=_gen(seed, 11)))
    return model


def build_transformer(seed: int):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed * 1000 + 2)
    model = Flux2Transformer2DModel(**TRANSFORMER_CONFIG).eval()
    _sensitise_transformer(model, _gen(seed, 12))
    return model


def _sensitise_transformer(model, g: torch.Generator) -> None:
    """cpu-stack-notes section 8: time/guidance embedder output layers x6, every modulation x3, QK RMSNorm
    scales (1 +- 0.25) x 4. Without this the adaLN gates sit near 0.06 and the velocity ignores t, guidance, text."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("time_guidance_embed.") and ".linear_2." in name:
                p.mul_(6.0)
            elif "modulation" in name or name.startswith("norm_out.linear"):
                p.mul_(3.0)
            elif any(f".{n}.weight" in name for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")):
                u = torch.rand(p.shape, generator=g) * 2 - 1
                p.copy_(4.0 * (1.0 + 0.25 * u))


def build_vae(seed: int):
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed * 1000 + 3)
    model = AutoencoderKLFlux2(**VAE_CONFIG).eval()
    _sensitise_vae(model, _gen(seed, 13))
    return model


def _sensitise_vae(model, g: torch.Generator) -> None:
    """Decoder 3x3 convs become a random channel mix times a 1-2-1 blur (cpu-stack-notes section 8): images are
    smooth colour fields, so JPEG q75 costs ~0.03 SSIM as on real previews instead of destroying pixel noise.
    BN running stats get non-trivial values so (de)normalisation is exercised."""
    blur1 = torch.tensor([1.0, 2.0, 1.0])
    blur = torch.outer(blur1, blur1) / 16.0  # [3, 3], sums to 1
    with torch.no_grad():
        for name, mod in model.decoder.named_modules():
            if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3):
                out_c, in_c = mod.weight.shape[:2]
                mix = torch.randn((out_c, in_c), generator=g) * math.sqrt(2.0 / in_c)
                mod.weight.copy_(mix[:, :, None, None] * blur)
        # Default init saturates ~20 % of pixels at 0/255; flat clipped areas hide differences between renders.
        model.decoder.conv_out.weight.mul_(0.6)
        bn = model.bn
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) * 1.5 + 0.5)


def build_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)


# ---------------------------------------------------------------------------------------------- writing


def _save_safetensors(path: Path, sd: dict, metadata: dict | None = None) -> None:
    """safetensors file with a canonical header (keys sorted). safetensors itself serialises `__metadata__`
    from a Rust HashMap, so a file with several metadata entries differs from run to run; re-dumping the
    header with sorted keys makes the bytes reproducible. The data section is untouched (offsets are relative
    to the end of the header); the header is space-padded to 8 bytes as safetensors does."""
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous() for k, v in sd.items()}, metadata=metadata or {"format": "pt"})
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + n :])


def _quiet_save(pipe, root: Path) -> None:
    """save_pretrained without transformers' "Writing model shards" progress bar on stderr."""
    from transformers.utils import logging as tf_logging

    was_on = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        pipe.save_pretrained(root, safe_serialization=True)
    finally:
        if was_on:
            tf_logging.enable_progress_bar()


def build_tiny(out_dir: str | Path, *, seed: int = 0) -> TinyPaths:
    """Write the tiny FLUX.2-dev checkpoint (both layouts + LoRA files) into `out_dir`. Deterministic."""
    from diffusers import Flux2Pipeline

    t0 = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(seed)
    transformer = build_transformer(seed)
    vae = build_vae(seed)
    scheduler = build_scheduler()
    pipe = Flux2Pipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    _quiet_save(pipe, root)

    # Root single files as in the hub repo (AI Toolkit loads these: flux2_model.py L50-51).
    _save_safetensors(root / BFL_TRANSFORMER_FILE, keymap.diffusers_to_bfl_transformer(transformer.state_dict()))
    _save_safetensors(root / BFL_VAE_FILE, keymap.diffusers_to_bfl_vae(vae.state_dict()))

    shapes = bfl_lora_target_shapes(TRANSFORMER_CONFIG)
    save_aitk_lora(root / LORA_FILE, make_lora(shapes, seed=seed + 1, rank=4), step=100, name="tiny_lora")
    save_aitk_lora(root / LOKR_FILE, make_lora(shapes, seed=seed + 2, kind="lokr"), step=100, name="tiny_lokr")
    return tiny_paths(root, seconds=time.perf_counter() - t0)


def tiny_paths(root: str | Path, *, seconds: float = 0.0) -> TinyPaths:
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
        bfl_transformer=root / BFL_TRANSFORMER_FILE,
        bfl_vae=root / BFL_VAE_FILE,
        lora=root / LORA_FILE,
        lokr=root / LOKR_FILE,
        files=tuple(sorted(p for p in root.rglob("*") if p.is_file())),
        seconds=seconds,
    )


# ---------------------------------------------------------------------------------------------- LoRA files


def bfl_lora_target_shapes(transformer_config: dict) -> dict[str, tuple[int, int]]:
    """BFL module name -> (out_features, in_features) for every Linear AI Toolkit puts a LoRA on by default
    (`transformer_only: true`: double_blocks / single_blocks only; cpu-stack-notes section 3)."""
    cfg = {**TRANSFORMER_CONFIG, **transformer_config}
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    mlp = int(d * cfg["mlp_ratio"])  # SwiGLU hidden; the input projection emits gate and up (2 x mlp)
    shapes: dict[str, tuple[int, int]] = {}
    for n in range(cfg["num_layers"]):
        for s in ("img", "txt"):
            shapes[f"double_blocks.{n}.{s}_attn.qkv"] = (3 * d, d)
            shapes[f"double_blocks.{n}.{s}_attn.proj"] = (d, d)
            shapes[f"double_blocks.{n}.{s}_mlp.0"] = (2 * mlp, d)
            shapes[f"double_blocks.{n}.{s}_mlp.2"] = (d, mlp)
    for n in range(cfg["num_single_layers"]):
        shapes[f"single_blocks.{n}.linear1"] = (3 * d + 2 * mlp, d)
        shapes[f"single_blocks.{n}.linear2"] = (d, d + mlp)
    return shapes


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
    The weights are large on purpose (cpu-stack-notes section 8) so the adapter visibly changes the image.
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
