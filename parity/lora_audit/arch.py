"""Which FLUX.2 transformer an adapter file was trained on, from its tensor shapes (torch-free).

The hidden size is the input width of the double blocks' attention projections: 6144 FLUX.2-dev, 3072 klein 4B,
4096 klein 9B (parity.engine.fullsize, heads x 128). Any other size is a custom (e.g. tiny) model, whose
configuration is rebuilt from the shapes: block counts from the highest block numbers, the MLP ratio from the
MLP input projection (SwiGLU: 2 x hidden x ratio rows).
"""

from __future__ import annotations

import re

from parity.engine.fullsize import TRANSFORMER_CONFIGS
from parity.family import DEFAULT_ARCH, FAMILIES, arches, family
from parity.lora_audit.adapter_file import AdapterFile

ARCHES = arches()


def _width(cfg: dict) -> int:
    return cfg["num_attention_heads"] * cfg["attention_head_dim"]


# Each published member's transformer width (heads x head dim of its pinned configuration).
HIDDEN_TO_ARCH = {_width(TRANSFORMER_CONFIGS[f.transformer_config]): f.arch for f in FAMILIES.values()}


def hidden_size(f: AdapterFile) -> int | None:
    """The transformer width: the input size of any double-block attention or MLP-in projection, else of a single
    block's linear1."""
    for bfl, m in sorted(f.modules.items()):
        if re.search(r"(attn\.(qkv|proj)|mlp\.0|linear1)$", bfl):
            oi = m.out_in()
            if oi:
                return oi[1]
    return None


def _block_count(f: AdapterFile, kind: str) -> int:
    found = [int(m.group(1)) for b in f.modules for m in [re.match(rf"{kind}_blocks\.(\d+)\.", b)] if m]
    return max(found) + 1 if found else 0


def _mlp_ratio(f: AdapterFile, d: int) -> float:
    for bfl, m in f.modules.items():
        if bfl.endswith("mlp.0") and m.out_in():
            return m.out_in()[0] / 2 / d
    return 3.0


def infer_arch(f: AdapterFile) -> str:
    """An AI Toolkit arch name for the published sizes, else "custom"."""
    return HIDDEN_TO_ARCH.get(hidden_size(f) or 0, "custom")


def transformer_config(f: AdapterFile, arch: str | None) -> tuple[str, dict]:
    """(arch, Flux2Transformer2DModel config) fitting the file: the published configuration when the file's width
    is a published model's, else one rebuilt from the shapes (its family from `arch` when given: dev has the
    guidance embedding, klein not)."""
    from parity.tiny import flux2 as tiny

    inferred = infer_arch(f)
    member = family(arch or (inferred if inferred != "custom" else DEFAULT_ARCH))
    if inferred != "custom" and (arch is None or arch == inferred):
        return inferred, dict(TRANSFORMER_CONFIGS[member.transformer_config])
    d = hidden_size(f) or 64
    head = 128 if d % 128 == 0 else tiny.TRANSFORMER_CONFIG["attention_head_dim"]
    cfg = {**tiny.TRANSFORMER_CONFIG, "num_layers": max(_block_count(f, "double"), 1),
           "num_single_layers": max(_block_count(f, "single"), 1), "attention_head_dim": head,
           "num_attention_heads": d // head, "axes_dims_rope": (head // 4,) * 4, "mlp_ratio": _mlp_ratio(f, d),
           "guidance_embeds": member.guidance_embeds}
    return member.arch if arch else "custom", cfg
