"""Prompt embeddings of one base model: from memory, else the disk cache, else the text encoder (loaded then)."""

from __future__ import annotations

import json

import torch

from parity.engine import weights
from parity.engine.components import Components
from parity.engine.text import CacheKey, EmbeddingCache, encode
from parity.family import family


class Embedder:
    """When the disk cache has a prompt, the text encoder is never constructed."""

    def __init__(self, parts: Components, cache: EmbeddingCache, max_length: int):
        self.parts, self.cache, self.max_length = parts, cache, max_length
        self.memory: dict[tuple, torch.Tensor] = {}  # in-process cache: cache-key digest -> embedding
        layout = parts.layout
        self.member = family(layout.arch)  # the prompt formatting and hidden layers of the base model's pipeline
        self.te_identity = json.dumps(weights.file_identity(layout.text_encoder))
        self.tok_identity = weights.tokenizer_identity(layout.tokenizer)

    def key(self, prompt: str, dtype_name: str, quantize_te: str | None, te_cast: str) -> CacheKey:
        return CacheKey(text_encoder=self.te_identity, tokenizer=self.tok_identity, prompt=prompt,
                        max_length=self.max_length, layers=self.member.hidden_layers, dtype=dtype_name,
                        quantize_te=quantize_te, te_cast=te_cast)

    def get(self, prompt: str, dtype_name: str, quantize_te: str | None, te_cast: str):
        """(1, L, 3*hidden) text embedding in the text encoder's dtype."""
        key = self.key(prompt, dtype_name, quantize_te, te_cast)
        mem_key = (key.digest(),)
        if mem_key in self.memory:
            return self.memory[mem_key]
        stats = self.parts.stats
        emb = self.cache.get(key)
        if emb is None:
            stats.embedding_cache_misses += 1
            te, tok = self.parts.text_encoder(dtype_name, quantize_te, te_cast)
            emb = encode(te, tok, prompt, self.member, max_length=self.max_length, device=self.parts.device)
            self.cache.put(key, emb)
        else:
            stats.embedding_cache_hits += 1
        self.memory[mem_key] = emb
        return emb
