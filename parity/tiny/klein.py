"""A tiny, deterministic FLUX.2 [klein] base checkpoint (4B architecture, scaled down) in both on-disk layouts.

    root/model_index.json                         Flux2KleinPipeline (is_distilled false)
    root/transformer/, vae/, scheduler/           diffusers layout; the transformer has no guidance embedding
    root/text_encoder/                            Qwen3ForCausalLM, 28+ layers so hidden_states[27] exists
    root/tokenizer/                               a byte-level BPE Qwen2Tokenizer with Qwen's chat special tokens
    root/flux-2-klein-base-4b.safetensors         the BFL single file AI Toolkit loads (flux2_klein_model.py L72)
    root/ae.safetensors                           the BFL VAE (the same VAE as FLUX.2-dev)
    root/loras/tiny_klein_lora.safetensors        an AI Toolkit LoRA for it

Written import-free like parity.tiny.flux2 (state dicts drawn from specs, per-tensor seeded generators), with the
same sensitising of transformer and VAE so steps, guidance and prompts visibly change the image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from parity import fileio
from parity.engine import keymap
from parity.family import family
from parity.tiny import flux2 as base

QWEN_HIDDEN = 32
QWEN_LAYERS = 28  # hidden_states[27] is the deepest AI Toolkit stacks (OUTPUT_LAYERS_QWEN3 = 9, 18, 27)

TRANSFORMER_CONFIG: dict = {
    **base.TRANSFORMER_CONFIG,
    "joint_attention_dim": 3 * QWEN_HIDDEN,  # stacked hidden states 9/18/27
    "guidance_embeds": False,                # Klein4BParams.use_guidance_embed = False (src/model.py L48)
}

# text_encoder/config.json as Qwen3ForCausalLM.save_pretrained writes it (transformers_version added on write).
TEXT_ENCODER_CONFIG: dict = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": None,
    "dtype": "float32",
    "eos_token_id": 2,
    "head_dim": 8,
    "hidden_act": "silu",
    "hidden_size": QWEN_HIDDEN,
    "initializer_range": 0.3,
    "intermediate_size": 64,
    "layer_types": ["full_attention"] * QWEN_LAYERS,
    "max_position_embeddings": 2048,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 4,
    "num_hidden_layers": QWEN_LAYERS,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
    "rms_norm_eps": 1e-06,
    "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
    "sliding_window": None,
    "tie_word_embeddings": True,
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": base.TOKENIZER_VOCAB,
}
_GENERATION_CONFIG: dict = {"_from_model_config": True, "eos_token_id": 2, "output_attentions": False,
                            "output_hidden_states": False, "pad_token_id": 0, "use_cache": True}

# Qwen's special tokens (ids 0..2 in this order): pad, chat start, chat end.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_TOKENIZER_CONFIG: dict = {
    "add_prefix_space": None,
    "backend": "tokenizers",
    "bos_token": None,
    "eos_token": "<|im_end|>",
    "extra_special_tokens": ["<|im_start|>", "<|im_end|>"],
    "model_max_length": 131072,
    "pad_token": "<|endoftext|>",
    "padding_side": "right",
    "tokenizer_class": "Qwen2Tokenizer",
    "truncation_side": "right",
    "unk_token": None,
}
# Qwen3's chat format for string contents, with the `enable_thinking=False` empty think block.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}{%- endif -%}"
)
_PIPELINE_COMPONENTS: dict = {
    "is_distilled": False,
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen3ForCausalLM"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "Flux2Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLFlux2"],
}
ARCH = "flux2_klein_4b"  # the member whose shapes these are (scaled down); build_tiny_klein(arch=...) renames it
BFL_TRANSFORMER_FILE = family(ARCH).single_file
LORA_FILE = "loras/tiny_klein_lora.safetensors"


@dataclass(frozen=True)
class TinyKleinPaths:
    root: Path
    bfl_transformer: Path
    bfl_vae: Path
    lora: Path
    seconds: float = 0.0


def text_encoder_specs(cfg: dict = TEXT_ENCODER_CONFIG) -> list[base.Spec]:
    """Qwen3ForCausalLM's saved tensors (`model.*`; lm_head is tied to the embedding, so not saved): Linear weights
    N(0, initializer_range), no biases, RMSNorm weights (incl. the per-head q_norm/k_norm) 1."""
    h, ffn, std = cfg["hidden_size"], cfg["intermediate_size"], cfg["initializer_range"]
    hd = cfg["head_dim"]
    q_dim, kv_dim = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    s: list[base.Spec] = [("model.embed_tokens.weight", (cfg["vocab_size"], h), ("normal", std))]
    for n in range(cfg["num_hidden_layers"]):
        b = f"model.layers.{n}"
        for name, shape in (("self_attn.q_proj", (q_dim, h)), ("self_attn.k_proj", (kv_dim, h)),
                            ("self_attn.v_proj", (kv_dim, h)), ("self_attn.o_proj", (h, q_dim)),
                            ("mlp.gate_proj", (ffn, h)), ("mlp.up_proj", (ffn, h)), ("mlp.down_proj", (h, ffn))):
            s.append((f"{b}.{name}.weight", shape, ("normal", std)))
        for norm, dim in (("self_attn.q_norm", hd), ("self_attn.k_norm", hd), ("input_layernorm", h),
                          ("post_attention_layernorm", h)):
            s.append((f"{b}.{norm}.weight", (dim,), ("ones",)))
    s.append(("model.norm.weight", (h,), ("ones",)))
    return s


def text_encoder_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    sd = base.materialise(text_encoder_specs(), seed=seed, component="klein_text_encoder")
    emb = sd["model.embed_tokens.weight"]  # N(0, 1) embeddings: prompts give clearly different conditioning
    emb.copy_(torch.randn(emb.shape, generator=base._tensor_gen(seed, "sensitise/klein_te", "embed")))
    return sd


def transformer_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    sd = base.materialise(base.transformer_specs(TRANSFORMER_CONFIG), seed=seed, component="klein_transformer")
    base._sensitise_transformer(sd, seed)
    return sd


def train_tokenizer():
    """Byte-level BPE with Qwen's special tokens, trained on the tiny corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=base.TOKENIZER_VOCAB, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(base._TOKENIZER_CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    return tok


def _write_configs(root: Path, arch: str) -> None:
    dv, tv = version("diffusers"), version("transformers")

    def dcfg(class_name: str, cfg: dict) -> dict:
        return {"_class_name": class_name, "_diffusers_version": dv, **cfg}

    base._write_json(root / "model_index.json", dcfg(family(arch).pipeline_class, _PIPELINE_COMPONENTS))
    base._write_json(root / "transformer/config.json", dcfg("Flux2Transformer2DModel", TRANSFORMER_CONFIG))
    base._write_json(root / "vae/config.json",
                     dcfg("AutoencoderKLFlux2", {**base.VAE_CONFIG, **base._VAE_CLASS_DEFAULTS}))
    base._write_json(root / "scheduler/scheduler_config.json", dcfg(
        "FlowMatchEulerDiscreteScheduler", {**base.SCHEDULER_CONFIG, **base._SCHEDULER_CLASS_DEFAULTS}))
    base._write_json(root / "text_encoder/config.json", {**TEXT_ENCODER_CONFIG, "transformers_version": tv})
    base._write_json(root / "text_encoder/generation_config.json", {**_GENERATION_CONFIG, "transformers_version": tv})
    tok = root / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    fileio.write_text(tok / "tokenizer.json", train_tokenizer().to_str(pretty=True))
    base._write_json(tok / "tokenizer_config.json", _TOKENIZER_CONFIG)
    fileio.write_text(tok / "chat_template.jinja", CHAT_TEMPLATE)


def build_tiny_klein(out_dir: str | Path, *, seed: int = 0, arch: str = ARCH) -> TinyKleinPaths:
    """Write the tiny FLUX.2 [klein] base checkpoint (both layouts + an AI Toolkit LoRA) into `out_dir`, as the
    family member `arch` (a [klein] member: its pipeline class and single-file name; the shapes are these)."""
    if not family(arch).klein:
        raise ValueError(f"{arch!r} is no [klein] member: its tiny model is parity.tiny.flux2's")
    t0 = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    single_file = family(arch).single_file
    _write_configs(root, arch)
    transformer, vae = transformer_state_dict(seed), base.vae_state_dict(seed)
    base._save_safetensors(root / "transformer/diffusion_pytorch_model.safetensors", transformer)
    base._save_safetensors(root / "vae/diffusion_pytorch_model.safetensors", vae)
    base._save_safetensors(root / "text_encoder/model.safetensors", text_encoder_state_dict(seed))
    base._save_safetensors(root / single_file, keymap.diffusers_to_bfl_transformer(transformer))
    base._save_safetensors(root / base.BFL_VAE_FILE, keymap.diffusers_to_bfl_vae(vae))
    shapes = base.bfl_lora_target_shapes(TRANSFORMER_CONFIG)
    base.save_aitk_lora(root / LORA_FILE, base.make_lora(shapes, seed=seed + 1, rank=4), step=100,
                        name="tiny_klein_lora")
    return TinyKleinPaths(root=root, bfl_transformer=root / single_file, bfl_vae=root / base.BFL_VAE_FILE,
                          lora=root / LORA_FILE, seconds=time.perf_counter() - t0)


__all__ = ["TinyKleinPaths", "build_tiny_klein", "TRANSFORMER_CONFIG", "TEXT_ENCODER_CONFIG"]
