"""Parameter names of the FLUX.2 transformer: BFL / AI Toolkit  <->  diffusers `Flux2Transformer2DModel`.

AI Toolkit trains on BFL's module names (`double_blocks.N.img_attn.qkv`, ...) and saves LoRA keys as
`diffusion_model.<BFL module>.lora_A/B.weight`; diffusers splits the fused qkv projections of the double
blocks into q/k/v and stores the final adaLN modulation as (scale, shift) where BFL stores (shift, scale).
Facts: shared/reference/aitk-flux2-previews.md section E.5 (same table as diffusers' single-file converter).

`bfl_module_targets(name, dims)` is what LoRA application needs: for one BFL module, the diffusers modules it
becomes and which output rows of the BFL weight each receives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Modules renamed 1:1 (BFL name -> diffusers name).
_GLOBAL_RENAMES: dict[str, str] = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
    "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
    "single_stream_modulation.lin": "single_stream_modulation.linear",
    "final_layer.linear": "proj_out",
}
# BFL stores the final modulation rows as [shift; scale]; diffusers as [scale; shift].
FINAL_ADALN_BFL = "final_layer.adaLN_modulation.1"
FINAL_ADALN_DIFFUSERS = "norm_out.linear"

_DOUBLE_RENAMES: dict[str, str] = {
    "img_attn.proj": "attn.to_out.0",
    "img_mlp.0": "ff.linear_in",
    "img_mlp.2": "ff.linear_out",
    "txt_attn.proj": "attn.to_add_out",
    "txt_mlp.0": "ff_context.linear_in",
    "txt_mlp.2": "ff_context.linear_out",
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
}
# Fused qkv (BFL) -> three projections (diffusers), rows in q, k, v order.
_DOUBLE_QKV: dict[str, tuple[str, str, str]] = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE_RENAMES: dict[str, str] = {
    "linear1": "attn.to_qkv_mlp_proj",
    "linear2": "attn.to_out",
    "norm.query_norm": "attn.norm_q",
    "norm.key_norm": "attn.norm_k",
}

_DOUBLE_RE = re.compile(r"^double_blocks\.(\d+)\.(.+)$")
_SINGLE_RE = re.compile(r"^single_blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Target:
    """One diffusers module that receives rows [row_start, row_stop) of a BFL module's weight.
    `swap_halves` marks the final adaLN modulation, whose two output halves trade places."""

    module: str
    row_start: int | None = None
    row_stop: int | None = None
    swap_halves: bool = False


def bfl_module_targets(bfl_module: str, out_features: int) -> list[Target]:
    """The diffusers modules a BFL module maps to. `out_features` is the BFL weight's row count (needed to
    split fused qkv). Raises KeyError for a name that is not a FLUX.2 transformer module."""
    if bfl_module in _GLOBAL_RENAMES:
        return [Target(_GLOBAL_RENAMES[bfl_module])]
    if bfl_module == FINAL_ADALN_BFL:
        return [Target(FINAL_ADALN_DIFFUSERS, swap_halves=True)]
    m = _DOUBLE_RE.match(bfl_module)
    if m:
        n, rest = m.groups()
        if rest in _DOUBLE_QKV:
            third = out_features // 3
            return [
                Target(f"transformer_blocks.{n}.{name}", i * third, (i + 1) * third)
                for i, name in enumerate(_DOUBLE_QKV[rest])
            ]
        if rest in _DOUBLE_RENAMES:
            return [Target(f"transformer_blocks.{n}.{_DOUBLE_RENAMES[rest]}")]
    m = _SINGLE_RE.match(bfl_module)
    if m:
        n, rest = m.groups()
        if rest in _SINGLE_RENAMES:
            return [Target(f"single_transformer_blocks.{n}.{_SINGLE_RENAMES[rest]}")]
    raise KeyError(bfl_module)


def _split_param(key: str) -> tuple[str, str]:
    module, param = key.rsplit(".", 1)
    return module, param


def bfl_to_diffusers_transformer(state_dict: dict) -> dict:
    """Convert a BFL-named transformer state dict (`flux2-dev.safetensors`) to diffusers names.
    Norm `.scale` becomes `.weight`. Raises KeyError on an unknown key."""
    import torch

    out: dict = {}
    for key, value in state_dict.items():
        module, param = _split_param(key)
        param = "weight" if param == "scale" else param
        targets = bfl_module_targets(module, value.shape[0])
        for t in targets:
            v = value
            if t.row_start is not None:
                v = value[t.row_start : t.row_stop]
            if t.swap_halves:
                shift, scale = v.chunk(2, dim=0)
                v = torch.cat([scale, shift], dim=0)
            out[f"{t.module}.{param}"] = v.contiguous()
    return out


def _diffusers_to_bfl_names() -> list[tuple[re.Pattern, str]]:
    rules: list[tuple[re.Pattern, str]] = []
    for bfl, dif in _GLOBAL_RENAMES.items():
        rules.append((re.compile("^" + re.escape(dif) + "$"), bfl))
    for bfl, dif in _DOUBLE_RENAMES.items():
        rules.append((re.compile(r"^transformer_blocks\.(\d+)\." + re.escape(dif) + "$"), rf"double_blocks.\1.{bfl}"))
    for bfl, dif in _SINGLE_RENAMES.items():
        rules.append(
            (re.compile(r"^single_transformer_blocks\.(\d+)\." + re.escape(dif) + "$"), rf"single_blocks.\1.{bfl}")
        )
    return rules


def diffusers_to_bfl_transformer(state_dict: dict) -> dict:
    """Inverse of `bfl_to_diffusers_transformer`: re-fuse q/k/v, swap the final modulation back, and name
    norm weights `.scale` as BFL does. Raises KeyError on an unknown key."""
    import torch

    rules = _diffusers_to_bfl_names()
    out: dict = {}
    pending_qkv: dict[tuple[str, str], dict[str, object]] = {}
    for key, value in state_dict.items():
        module, param = _split_param(key)
        if module == FINAL_ADALN_DIFFUSERS:
            scale, shift = value.chunk(2, dim=0)
            out[f"{FINAL_ADALN_BFL}.{param}"] = torch.cat([shift, scale], dim=0).contiguous()
            continue
        m = re.match(r"^transformer_blocks\.(\d+)\.(.+)$", module)
        if m:
            n, rest = m.groups()
            for bfl_qkv, parts in _DOUBLE_QKV.items():
                if rest in parts:
                    pending_qkv.setdefault((f"double_blocks.{n}.{bfl_qkv}", param), {})[rest] = value
                    break
            else:
                m = None
            if m is not None:
                continue
        for pattern, repl in rules:
            if pattern.match(module):
                bfl = pattern.sub(repl, module)
                is_norm = bfl.endswith("_norm")
                out[f"{bfl}.{'scale' if is_norm and param == 'weight' else param}"] = value
                break
        else:
            raise KeyError(key)
    for (bfl_module, param), parts in pending_qkv.items():
        names = _DOUBLE_QKV[bfl_module.split(".", 2)[2]]
        missing = [p for p in names if p not in parts]
        if missing:
            raise KeyError(f"{bfl_module}: missing {missing}")
        out[f"{bfl_module}.{param}"] = torch.cat([parts[p] for p in names], dim=0).contiguous()
    return out


# ---------------------------------------------------------------------------------------------------------- VAE
# BFL `AutoEncoder` (ae.safetensors; AI Toolkit extensions_built_in/diffusion_models/flux2/src/autoencoder.py)
# <-> diffusers `AutoencoderKLFlux2`. Facts from diffusers' scripts/convert_flux2_to_diffusers.py
# (`DIFFUSERS_VAE_TO_FLUX2_MAPPING`, `convert_flux2_vae_checkpoint_to_diffusers`):
#  - quant_conv / post_quant_conv live inside BFL's encoder / decoder; the BN (affine=False) is top-level `bn`;
#  - BFL numbers decoder `up.N` from the lowest resolution level, i.e. reversed: up.N = up_blocks[n-1-N];
#  - mid blocks are `mid.block_1`, `mid.attn_1`, `mid.block_2`; the attention uses 1x1 convs ([C, C, 1, 1])
#    named norm/q/k/v/proj_out where diffusers has Linear group_norm/to_q/to_k/to_v/to_out.0 ([C, C]);
#  - resnet shortcut `nin_shortcut` is diffusers' `conv_shortcut`; the outer GroupNorm `norm_out` is `conv_norm_out`.

_VAE_TOP_RENAMES: dict[str, str] = {  # diffusers -> BFL
    "quant_conv": "encoder.quant_conv",
    "post_quant_conv": "decoder.post_quant_conv",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_norm_out": "decoder.norm_out",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _count_blocks(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = [int(m.group(1)) for k in keys for m in [rx.match(k)] if m]
    return max(found) + 1 if found else 0


def diffusers_to_bfl_vae(state_dict: dict) -> dict:
    """diffusers `AutoencoderKLFlux2` state dict -> BFL `ae.safetensors` names. Attention Linear weights become
    1x1 conv weights. Raises KeyError on an unknown key."""
    n_up = _count_blocks(state_dict, r"^decoder\.up_blocks\.(\d+)\.")
    out: dict = {}
    for key, value in state_dict.items():
        module, param = _split_param(key)
        if module in _VAE_TOP_RENAMES:
            out[f"{_VAE_TOP_RENAMES[module]}.{param}"] = value
            continue
        if module in ("bn", "encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out"):
            out[key] = value
            continue
        m = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", module)
        if m and m.group(2) in _VAE_ATTN:
            if value.ndim == 2:  # Linear [C, C] -> 1x1 conv [C, C, 1, 1]
                value = value[:, :, None, None]
            out[f"{m.group(1)}.mid.attn_1.{_VAE_ATTN[m.group(2)]}.{param}"] = value.contiguous()
            continue
        m = re.match(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", module)
        if m:
            sub = m.group(3).replace("conv_shortcut", "nin_shortcut")
            out[f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{sub}.{param}"] = value
            continue
        m = re.match(r"^encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)\.(.+)|downsamplers\.0\.conv)$", module)
        if m:
            i = m.group(1)
            if m.group(3) is not None:
                sub = m.group(4).replace("conv_shortcut", "nin_shortcut")
                out[f"encoder.down.{i}.block.{m.group(3)}.{sub}.{param}"] = value
            else:
                out[f"encoder.down.{i}.downsample.conv.{param}"] = value
            continue
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)\.(.+)|upsamplers\.0\.conv)$", module)
        if m:
            level = n_up - 1 - int(m.group(1))  # BFL counts decoder levels from the bottom
            if m.group(3) is not None:
                sub = m.group(4).replace("conv_shortcut", "nin_shortcut")
                out[f"decoder.up.{level}.block.{m.group(3)}.{sub}.{param}"] = value
            else:
                out[f"decoder.up.{level}.upsample.conv.{param}"] = value
            continue
        raise KeyError(key)
    return out


def bfl_to_diffusers_vae(state_dict: dict) -> dict:
    """BFL `ae.safetensors` names -> diffusers `AutoencoderKLFlux2` state dict (inverse of
    `diffusers_to_bfl_vae`). 1x1 attention conv weights become Linear weights. Raises KeyError on an unknown key."""
    n_up = _count_blocks(state_dict, r"^decoder\.up\.(\d+)\.")
    top = {bfl: dif for dif, bfl in _VAE_TOP_RENAMES.items()}
    attn = {bfl: dif for dif, bfl in _VAE_ATTN.items()}
    out: dict = {}
    for key, value in state_dict.items():
        module, param = _split_param(key)
        if module in top:
            out[f"{top[module]}.{param}"] = value
            continue
        if module in ("bn", "encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out"):
            out[key] = value
            continue
        m = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(\w+)$", module)
        if m and m.group(2) in attn:
            if value.ndim == 4:  # 1x1 conv [C, C, 1, 1] -> Linear [C, C]
                value = value[:, :, 0, 0]
            out[f"{m.group(1)}.mid_block.attentions.0.{attn[m.group(2)]}.{param}"] = value.contiguous()
            continue
        m = re.match(r"^(encoder|decoder)\.mid\.block_([12])\.(.+)$", module)
        if m:
            sub = m.group(3).replace("nin_shortcut", "conv_shortcut")
            out[f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}.{sub}.{param}"] = value
            continue
        m = re.match(r"^encoder\.down\.(\d+)\.(block\.(\d+)\.(.+)|downsample\.conv)$", module)
        if m:
            i = m.group(1)
            if m.group(3) is not None:
                sub = m.group(4).replace("nin_shortcut", "conv_shortcut")
                out[f"encoder.down_blocks.{i}.resnets.{m.group(3)}.{sub}.{param}"] = value
            else:
                out[f"encoder.down_blocks.{i}.downsamplers.0.conv.{param}"] = value
            continue
        m = re.match(r"^decoder\.up\.(\d+)\.(block\.(\d+)\.(.+)|upsample\.conv)$", module)
        if m:
            i = n_up - 1 - int(m.group(1))
            if m.group(3) is not None:
                sub = m.group(4).replace("nin_shortcut", "conv_shortcut")
                out[f"decoder.up_blocks.{i}.resnets.{m.group(3)}.{sub}.{param}"] = value
            else:
                out[f"decoder.up_blocks.{i}.upsamplers.0.conv.{param}"] = value
            continue
        raise KeyError(key)
    return out
