"""The real FLUX.2 configurations, pinned with their sources, and their full-size models built on the meta device.

Nothing here downloads or allocates weights: `meta_transformer` / `meta_text_encoder` build the diffusers /
transformers classes under `torch.device("meta")` (shapes only, ~0.1 s), which is what `parity doctor` and the
full-size tests use to know every tensor name and shape a real checkpoint must hold, its parameter count, its
Linear layers (what qfloat8 quantizes) and the LoRA targets AI Toolkit selects.

Sources (no hub access here; every value was read from a published copy of the file, see SOURCES):
  - FLUX.2-dev transformer: black-forest-labs/FLUX.2-dev transformer/config.json, as quoted by diffusers'
    scripts/convert_flux2_to_diffusers.py and shared/reference/aitk-flux2-previews.md section H (the same values as
    what parity.engine.weights falls back to for a base folder without configs);
  - FLUX.2 [klein] 4B / 9B transformers: black-forest-labs/FLUX.2-klein-4B / -9B (and the -base- repos, same
    architecture) transformer/config.json;
  - text encoders: mistralai/Mistral-Small-3.1-24B-Instruct-2503, Qwen/Qwen3-4B, Qwen/Qwen3-8B config.json.
"""

from __future__ import annotations

from dataclasses import dataclass

_FLUX2_COMMON: dict = {
    "_class_name": "Flux2Transformer2DModel",
    "patch_size": 1,
    "in_channels": 128,
    "out_channels": None,
    "attention_head_dim": 128,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": [32, 32, 32, 32],
    "rope_theta": 2000,
    "eps": 1e-6,
}

TRANSFORMER_CONFIGS: dict[str, dict] = {
    "flux2-dev": {**_FLUX2_COMMON, "num_layers": 8, "num_single_layers": 48, "num_attention_heads": 48,
                  "joint_attention_dim": 15360, "guidance_embeds": True},
    # klein: no guidance embedding (real CFG instead); context dim = 3 x the Qwen3 hidden size (layers 9/18/27).
    "flux2-klein-4b": {**_FLUX2_COMMON, "num_layers": 5, "num_single_layers": 20, "num_attention_heads": 24,
                       "joint_attention_dim": 7680, "guidance_embeds": False},
    "flux2-klein-9b": {**_FLUX2_COMMON, "num_layers": 8, "num_single_layers": 24, "num_attention_heads": 32,
                       "joint_attention_dim": 12288, "guidance_embeds": False},
}

_MISTRAL_SMALL_3_1_24B: dict = {
    "architectures": ["Mistral3ForConditionalGeneration"],
    "model_type": "mistral3",
    "image_token_index": 10,
    "multimodal_projector_bias": False,
    "projector_hidden_act": "gelu",
    "spatial_merge_size": 2,
    "vision_feature_layer": -1,
    "text_config": {
        "model_type": "mistral", "attention_dropout": 0.0, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 5120, "initializer_range": 0.02, "intermediate_size": 32768,
        "max_position_embeddings": 131072, "num_attention_heads": 32, "num_hidden_layers": 40,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000000.0, "sliding_window": None,
        "use_cache": True, "vocab_size": 131072,
    },
    "vision_config": {
        "model_type": "pixtral", "attention_dropout": 0.0, "head_dim": 64, "hidden_act": "silu", "hidden_size": 1024,
        "image_size": 1540, "initializer_range": 0.02, "intermediate_size": 4096, "num_attention_heads": 16,
        "num_channels": 3, "num_hidden_layers": 24, "patch_size": 14, "rope_theta": 10000.0,
    },
    "torch_dtype": "bfloat16",
}

_QWEN3_COMMON: dict = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "initializer_range": 0.02, "max_position_embeddings": 40960, "max_window_layers": 36, "num_attention_heads": 32,
    "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": None, "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936, "torch_dtype": "bfloat16",
}

TEXT_ENCODER_CONFIGS: dict[str, dict] = {
    "mistral-small-3.1-24b": _MISTRAL_SMALL_3_1_24B,
    "qwen3-4b": {**_QWEN3_COMMON, "hidden_size": 2560, "intermediate_size": 9728, "tie_word_embeddings": True},
    "qwen3-8b": {**_QWEN3_COMMON, "hidden_size": 4096, "intermediate_size": 12288, "tie_word_embeddings": False},
}

SOURCES: dict[str, str] = {
    "flux2-dev": "black-forest-labs/FLUX.2-dev transformer/config.json (gated). Values from diffusers "
                 "scripts/convert_flux2_to_diffusers.py L387-405 and shared/reference/aitk-flux2-previews.md H; "
                 "parameter count 32,223,281,152 there (ai-toolkit's Flux2 on the meta device)",
    "flux2-klein-4b": "black-forest-labs/FLUX.2-klein-4B (and -base-4B) transformer/config.json; values read from "
                      "the published copy huggingface.co/YuCollection/FLUX.2-klein-base-4B-Diffusers "
                      "transformer/config.json (_diffusers_version 0.37.0.dev0)",
    "flux2-klein-9b": "black-forest-labs/FLUX.2-klein-9B (and -base-9B) transformer/config.json; the architecture "
                      "values (8 double, 24 single, 32 heads, joint dim 12288, guidance_embeds false) agree in three "
                      "independent public copies found by code search; not read from the hub file itself",
    "mistral-small-3.1-24b": "mistralai/Mistral-Small-3.1-24B-Instruct-2503 config.json (transformers_version "
                             "4.50.0.dev0), text_config from the hub page; vision_config from published copies of "
                             "the same file (two agree). The hub file has no top-level tie_word_embeddings "
                             "(transformers 5 defaults Mistral3Config to True; the checkpoint stores lm_head)",
    "qwen3-4b": "Qwen/Qwen3-4B config.json (transformers_version 4.51.0; copies agree)",
    "qwen3-8b": "Qwen/Qwen3-8B config.json (transformers_version 4.51.0; 'Copy config.json from Qwen/Qwen3-8B')",
}


def lora_target_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """BFL module name -> (out_features, in_features) for every Linear AI Toolkit puts a LoRA on by default
    (`transformer_only: true`: double_blocks / single_blocks only; cpu-stack-notes section 3), for a
    Flux2Transformer2DModel config (the fused BFL shapes: qkv, the SwiGLU input projection emitting gate and up)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    mlp = int(d * cfg["mlp_ratio"])
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


def _kwargs(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _known_args(cls, cfg: dict) -> dict:
    """The config keys the class accepts: config.json files carry extras (`force_upcast`, `_diffusers_version`)
    that from_pretrained ignores too."""
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in cfg.items() if k in accepted}


def meta_transformer(cfg: dict | str):
    """Flux2Transformer2DModel on the meta device from a config dict or a TRANSFORMER_CONFIGS name."""
    import torch
    from diffusers import Flux2Transformer2DModel

    cfg = TRANSFORMER_CONFIGS[cfg] if isinstance(cfg, str) else cfg
    with torch.device("meta"):
        return Flux2Transformer2DModel(**_known_args(Flux2Transformer2DModel, cfg))


def text_encoder_class(cfg: dict):
    """The transformers class AI Toolkit loads for this config (Mistral3ForConditionalGeneration / Qwen3ForCausalLM)."""
    import transformers

    arch = (cfg.get("architectures") or ["Mistral3ForConditionalGeneration"])[0]
    return getattr(transformers, arch)


def text_encoder_config(cfg: dict | str):
    """A transformers config object from a config.json dict (or a TEXT_ENCODER_CONFIGS name)."""
    from transformers import AutoConfig

    cfg = TEXT_ENCODER_CONFIGS[cfg] if isinstance(cfg, str) else cfg
    kwargs = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "torch_dtype", "dtype")}
    conf = AutoConfig.for_model(cfg["model_type"], **kwargs)
    if cfg["model_type"] == "mistral3" and "tie_word_embeddings" not in cfg:
        # The hub file predates transformers 5's Mistral3Config default (True); its checkpoint stores lm_head.
        conf.tie_word_embeddings = False
    conf.architectures = cfg.get("architectures")
    return conf


def meta_text_encoder(cfg: dict | str):
    """The text encoder on the meta device from a config.json dict or a TEXT_ENCODER_CONFIGS name."""
    import torch

    cfg = TEXT_ENCODER_CONFIGS[cfg] if isinstance(cfg, str) else cfg
    conf = text_encoder_config(cfg)
    with torch.device("meta"):
        return text_encoder_class(cfg)(conf)


def meta_vae(cfg: dict):
    """AutoencoderKLFlux2 on the meta device from a vae/config.json dict."""
    import torch
    from diffusers import AutoencoderKLFlux2

    with torch.device("meta"):
        return AutoencoderKLFlux2(**_known_args(AutoencoderKLFlux2, cfg))
