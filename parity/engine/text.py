"""Prompt -> FLUX.2 text embedding (1, 512, 3*hidden), exactly as AI Toolkit / Flux2Pipeline, plus a disk cache.

Encoding (aitk-flux2-previews.md section C step 5; AI Toolkit src/pipeline.py L93-146 = diffusers
Flux2Pipeline._get_mistral_3_small_prompt_embeds): `[IMG]` removed, BFL system message, chat template with
`add_generation_prompt=False, padding="max_length", truncation=True, max_length=512`, Mistral3 forward with
`output_hidden_states=True, use_cache=False`, hidden states 10/20/30 stacked per token (layer10 || layer20 ||
layer30). FLUX.2 [klein] formats the prompt for Qwen3 instead (`tokenize_qwen`) and stacks 9/18/27. Which
formatting and layers a base model uses is its family member's (parity.family: `text_encoder`, `hidden_layers`).
The attention mask is not passed to the DiT; all 512 positions are.

The cache stores the embedding as the text encoder produced it (its dtype) in safetensors, keyed by
text-encoder identity, tokenizer identity, processed prompt, max length, layers, dtype and TE quantization; when
every prompt of a run is cached, the text encoder is never constructed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from parity.family import Family

log = logging.getLogger("parity")

MAX_LENGTH = 512


def system_message() -> str:
    """BFL's FLUX.2 system message, taken from diffusers (same text as AI Toolkit src/pipeline.py L36-37)."""
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

    return SYSTEM_MESSAGE


def format_messages(prompt: str, system: str) -> list[dict]:
    """One conversation: system + user, content as text blocks; `[IMG]` stripped from the prompt."""
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": [{"type": "text", "text": prompt.replace("[IMG]", "")}]},
    ]


def tokenize(tokenizer, prompt: str, max_length: int = MAX_LENGTH) -> dict:
    """input_ids / attention_mask (1, max_length) from the processor's or tokenizer's chat template."""
    return tokenizer.apply_chat_template(
        [format_messages(prompt, system_message())],
        add_generation_prompt=False, tokenize=True, return_dict=True, return_tensors="pt",
        padding="max_length", truncation=True, max_length=max_length,
    )


def tokenize_qwen(tokenizer, prompt: str, max_length: int = MAX_LENGTH) -> dict:
    """FLUX.2 [klein]: one user message, no system message, the chat template rendered as text with
    `add_generation_prompt=True, enable_thinking=False`, then tokenized padded/truncated to max_length
    (src/pipeline.py `_get_qwen_prompt_embeds` L148-198)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)
    return tokenizer(text, return_tensors="pt", padding="max_length", truncation=True, max_length=max_length)


@torch.no_grad()
def encode(text_encoder, tokenizer, prompt: str, member: Family, *, max_length: int = MAX_LENGTH,
           device="cpu") -> torch.Tensor:
    """(1, max_length, len(layers)*hidden) in the text encoder's dtype, formatted and stacked as `member`'s
    pipeline does ([klein]: the Qwen3 template)."""
    inputs = tokenize_qwen(tokenizer, prompt, max_length) if member.klein else tokenize(tokenizer, prompt, max_length)
    out = text_encoder(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device),
                       output_hidden_states=True, use_cache=False)
    hs = torch.stack([out.hidden_states[k] for k in member.hidden_layers], dim=1)  # (B, 3, L, D)
    b, c, l, d = hs.shape
    return hs.permute(0, 2, 1, 3).reshape(b, l, c * d).cpu()


@dataclass(frozen=True)
class CacheKey:
    """Everything the embedding depends on."""

    text_encoder: str     # identity of the weights (file names + sizes + mtimes, as JSON)
    tokenizer: str        # sha256 of the tokenizer files
    prompt: str
    max_length: int
    layers: tuple[int, ...]
    dtype: str
    quantize_te: str | None
    te_cast: str

    def digest(self) -> str:
        blob = json.dumps(self.__dict__ | {"layers": list(self.layers)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


class EmbeddingCache:
    """Embeddings on disk as `<digest>.safetensors` (tensor `prompt_embeds`, key JSON in the metadata)."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None
        self.hits = 0
        self.misses = 0

    def _path(self, key: CacheKey) -> Path | None:
        return None if self.folder is None else self.folder / f"{key.digest()}.safetensors"

    def get(self, key: CacheKey) -> torch.Tensor | None:
        path = self._path(key)
        if path is None or not path.is_file():
            self.misses += 1
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            t = load_file(str(path))["prompt_embeds"]
        except (SafetensorError, OSError, KeyError):
            self.misses += 1  # a broken entry is recomputed and overwritten
            return None
        self.hits += 1
        return t

    def put(self, key: CacheKey, embeds: torch.Tensor) -> bool:
        """Write the entry atomically: a private temporary file in the same folder, then `os.replace`, so any
        number of processes (two runs on one PARITY_CACHE_DIR, pytest -n) can write and read the same key at once
        and a reader sees either no file or a whole one. The cache is an accelerator: a failed write (disk full,
        read-only folder) is logged and returns False, never fails the render."""
        path = self._path(key)
        if path is None:
            return False
        import tempfile

        from safetensors.torch import save_file

        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}-", suffix=".tmp", dir=path.parent)
            os.close(fd)
            save_file({"prompt_embeds": embeds.contiguous()}, tmp,
                      metadata={"key": json.dumps(key.__dict__ | {"layers": list(key.layers)})})
            os.replace(tmp, path)
            return True
        except OSError as exc:
            log.warning("embedding cache: could not write %s (%s); continuing without caching it", path, exc)
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            return False
