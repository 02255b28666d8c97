"""A plausible full-precision original of a LoRA file saved in bf16/fp16 (noise-floor twin for `lora_precision`).

AI Toolkit samples previews with the live fp32 LoRA weights (toolkit/network_mixins.py L274-348) but saves the
checkpoint in `save.dtype` (bf16 by default), so every value a re-render loads is the rounding q of an unknown fp32
value w that lay somewhere in q's rounding cell. Drawing one w' uniformly from that cell gives a twin file whose
render differs from the file's render by a sample of exactly the difference no re-render can remove; its size is
the item's noise floor (parity.compare.tiers.decide_floor_tier).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from parity.engine.weights import load_safetensors

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def rounding_cell(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) fp32 bounds of the reals that round to each value of the bf16/fp16 tensor `q` (round to nearest:
    halfway to each neighbour). Infinite neighbours (at the dtype's max) give a cell as wide as the finite side."""
    qf = q.float()
    up = torch.nextafter(q, torch.full_like(q, float("inf"))).float() - qf
    down = qf - torch.nextafter(q, torch.full_like(q, float("-inf"))).float()
    up = torch.where(torch.isfinite(up), up, down)
    down = torch.where(torch.isfinite(down), down, up)
    return qf - down / 2, qf + up / 2


def dither(q: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """fp32 values drawn uniformly from the rounding cells of `q` (fp32 input is returned unchanged, as fp32)."""
    if q.dtype not in _LOW_PRECISION:
        return q.float()
    low, high = rounding_cell(q)
    u = torch.rand(q.shape, generator=generator, dtype=torch.float32)
    w = low + (high - low) * u
    # fp32 has only 13 (fp16) or 16 (bf16) bits more: a draw can land exactly on a midpoint, which ties-to-even may
    # round to the neighbour. One fp32 step towards q keeps it in q's cell.
    return torch.where(w.to(q.dtype) == q, w, torch.nextafter(w, q.float()))


def dither_lora_file(src: str | Path, dst: str | Path, *, seed: int = 0) -> dict[str, object]:
    """Write to `dst` an fp32 copy of the LoRA `src` with every bf16/fp16 value moved to a random point of its
    rounding cell (deterministic for a seed). Keys and metadata are kept. Returns what was done, for the record."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = load_safetensors(src)
    with safe_open(str(src), "pt") as f:
        metadata = dict(f.metadata() or {})
    g = torch.Generator("cpu").manual_seed(int(seed))
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    out = {k: dither(tensors[k], g).contiguous() for k in sorted(tensors)}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    metadata["parity_dither"] = json.dumps({"source": str(src), "seed": int(seed), "source_dtypes": dtypes})
    save_file(out, str(dst), metadata=metadata)
    return {"file": str(dst), "source_dtypes": dtypes, "tensors": len(out), "seed": int(seed)}
