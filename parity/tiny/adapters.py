"""Every kind of AI Toolkit FLUX.2 adapter file, for the tiny models: what `parity lora-check` and its tests audit.

Key names follow what AI Toolkit writes (ostris/ai-toolkit 27a03a91; the real files in shared/oracle/*/output/ are
`diffusion_model.<BFL module>.lora_A/lora_B.weight`, fp16, no alpha):

  flux2_lora       FLUX.2-dev LoRA, rank 4, peft format, no alpha (lora_special.py L422-433)
  klein_lora       the same for the tiny klein base (its own seed)
  lokr_full        LoKr with full w1 and w2 and alpha 9999999999 (lokr_full_rank, the default; scale 1)
  lokr_factorised  LoKr with a full w1 and w2 split into w2_a/w2_b (rank 2; `lokr_full_rank: false`), alpha = rank
                   as peft format stores it (scale 1)
  dora             `network.type: dora`: lora_A/lora_B plus the DoRA `magnitude` per output row (DoRA.py)
  mixed_rank       rank 4 on the double blocks, rank 8 on the single blocks, each with an `alpha` of 4 (a file
                   another trainer or a rank-resizing tool writes; AI Toolkit itself drops alpha, and without alpha
                   a per-file rank cancels out: scale 1 everywhere). Trained scales: 1 (rank 4), 0.5 (rank 8)
  lycoris_lokr     FLUX.2-dev LoKr with `network.old_lokr_format: true`: keys `lycoris_<BFL module, dots as
                   underscores>.lokr_w1/.lokr_w2/.alpha` (network_mixins.py L627-634)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from parity.tiny import flux2 as base
from parity.tiny import klein

KINDS = ("flux2_lora", "klein_lora", "lokr_full", "lokr_factorised", "dora", "mixed_rank", "lycoris_lokr")


def _shapes() -> dict[str, tuple[int, int]]:
    return base.bfl_lora_target_shapes(base.TRANSFORMER_CONFIG)


def _lora(seed: int, rank_of) -> dict[str, torch.Tensor]:
    g = torch.Generator("cpu").manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for module, (out_f, in_f) in sorted(_shapes().items()):
        r = rank_of(module)
        sd[f"diffusion_model.{module}.lora_A.weight"] = (torch.randn((r, in_f), generator=g) / math.sqrt(in_f)).half()
        sd[f"diffusion_model.{module}.lora_B.weight"] = (torch.randn((out_f, r), generator=g) * 0.2).half()
    return sd


def _lokr_factorised(seed: int, rank: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator("cpu").manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for module, (out_f, in_f) in sorted(_shapes().items()):
        out_l, out_k = base.lokr_factorization(out_f)
        in_m, in_n = base.lokr_factorization(in_f)
        key = f"diffusion_model.{module}"
        sd[f"{key}.lokr_w1"] = torch.randn((out_l, in_m), generator=g).half()
        sd[f"{key}.lokr_w2_a"] = (torch.randn((out_k, rank), generator=g) * 0.1).half()
        sd[f"{key}.lokr_w2_b"] = (torch.randn((rank, in_n), generator=g) * 0.1).half()
        sd[f"{key}.alpha"] = torch.tensor(float(rank)).half()
    return sd


def _dora(seed: int) -> dict[str, torch.Tensor]:
    sd = _lora(seed, lambda m: 4)
    g = torch.Generator("cpu").manual_seed(seed + 1000)
    for module, (out_f, _) in sorted(_shapes().items()):
        sd[f"diffusion_model.{module}.magnitude"] = (1.0 + 0.1 * torch.rand((out_f,), generator=g)).half()
    return sd


def _mixed_rank(seed: int) -> dict[str, torch.Tensor]:
    sd = _lora(seed, lambda m: 4 if m.startswith("double_blocks") else 8)
    for module in _shapes():
        sd[f"diffusion_model.{module}.alpha"] = torch.tensor(4.0).half()
    return sd


def _lycoris(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`diffusion_model.double_blocks.0.img_attn.qkv.lokr_w1` -> `lycoris_double_blocks_0_img_attn_qkv.lokr_w1`."""
    out = {}
    for key, value in sd.items():
        module, param = key[len("diffusion_model."):].rsplit(".", 1)
        out[f"lycoris_{module.replace('.', '_')}.{param}"] = value
    return out


def adapter_state_dict(kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    shapes = _shapes()
    makers = {
        "flux2_lora": lambda: base.make_lora(shapes, seed=seed + 11, rank=4, dtype=torch.float16),
        "klein_lora": lambda: base.make_lora(base.bfl_lora_target_shapes(klein.TRANSFORMER_CONFIG), seed=seed + 12,
                                             rank=4, dtype=torch.float16),
        "lokr_full": lambda: base.make_lora(shapes, seed=seed + 13, kind="lokr", dtype=torch.float16),
        "lokr_factorised": lambda: _lokr_factorised(seed + 14),
        "dora": lambda: _dora(seed + 15),
        "mixed_rank": lambda: _mixed_rank(seed + 16),
        "lycoris_lokr": lambda: _lycoris(base.make_lora(shapes, seed=seed + 17, kind="lokr", dtype=torch.float16)),
    }
    if kind not in makers:
        raise ValueError(f"unknown adapter kind {kind!r}; one of {', '.join(KINDS)}")
    return makers[kind]()


def write_adapter_kinds(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write every kind as `<out_dir>/<kind>.safetensors` (deterministic bytes); {kind: path}."""
    out = {}
    for kind in KINDS:
        out[kind] = base.save_aitk_lora(Path(out_dir) / f"{kind}.safetensors", adapter_state_dict(kind, seed),
                                        step=100, name=kind)
    return out
