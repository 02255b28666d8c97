"""The loaded model parts of one base model: the transformer (with the LoRA state of its weights), the VAE and
the text encoder, each loaded from disk only when the precision it is wanted in changes."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from parity.engine import numerics, weights
from parity.engine.lora import LoraApplier


@dataclass
class EngineStats:
    transformer_loads: int = 0
    text_encoder_loads: int = 0
    vae_loads: int = 0
    lora_applies: int = 0
    base_restores: int = 0
    embedding_cache_hits: int = 0
    embedding_cache_misses: int = 0


class Components:
    """`offload` 'none' moves each part to `device` when loaded; otherwise parts stay on the CPU and the render
    moves them while they run (the text encoder is always on `device`: it runs once per prompt)."""

    def __init__(self, layout: weights.BaseLayout, device: torch.device, offload: str, stats: EngineStats):
        self.layout, self.device, self.offload, self.stats = layout, device, offload, stats
        self.transformer_model = None
        self.transformer_key: tuple | None = None
        self.lora: LoraApplier | None = None  # the LoRA state of transformer_model's weights
        self.vae_model = None
        self.vae_key: str | None = None
        self.te_model = None
        self.te_key: tuple | None = None
        self.tokenizer = None

    def transformer(self, dtype_name: str, quantize: str | None):
        """The transformer for (dtype, quantization), loaded from disk only when that pair changes."""
        key = (dtype_name, quantize)
        if self.transformer_key != key:
            self.transformer_model = None
            self.lora = None
            gc.collect()
            model = weights.load_transformer(self.layout, weights.torch_dtype(dtype_name)).eval()
            if quantize:
                from parity.engine.quant import quantize_module

                quantize_module(model, quantize)
            numerics.install_transformer_numerics(model)  # QK norm + RoPE switches (after quantization)
            if self.offload == "none":
                model.to(self.device)
            self.transformer_model, self.transformer_key = model, key
            self.lora = LoraApplier(model)
            self.stats.transformer_loads += 1
        return self.transformer_model

    def vae(self, dtype_name: str):
        if self.vae_key != dtype_name:
            self.vae_model = weights.load_vae(self.layout, weights.torch_dtype(dtype_name))
            numerics.install_vae_numerics(self.vae_model)  # activation + attention switches
            if self.offload == "none":
                self.vae_model.to(self.device)
            self.vae_key = dtype_name
            self.stats.vae_loads += 1
        return self.vae_model

    def text_encoder(self, dtype_name: str, quantize_te: str | None, te_cast: str):
        """(text encoder, tokenizer) for (dtype, quantization, cast)."""
        key = (dtype_name, quantize_te, te_cast)
        if self.te_key != key:
            self.te_model = None
            gc.collect()
            te = weights.load_text_encoder(self.layout, weights.torch_dtype(dtype_name), te_cast)
            if quantize_te:
                from parity.engine.quant import quantize_module

                quantize_module(te, quantize_te)
            self.te_model, self.te_key = te.to(self.device), key
            self.stats.text_encoder_loads += 1
        if self.tokenizer is None:
            self.tokenizer = weights.load_tokenizer(self.layout)
        return self.te_model, self.tokenizer

    def free_text_encoder(self) -> None:
        self.te_model, self.te_key = None, None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
