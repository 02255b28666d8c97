"""The engine's offload policy, explicit: what sits on the device in each stage of a render, and whether it fits.

The engine renders in three stages (render.py): encode (text encoder), denoise (transformer, plus the LoRA:
live fp32 factors on the device, or for a merged LoRA the pristine copies of the target weights, kept where the
transformer was when the LoRA was applied), decode (VAE). Two modes:
  - `none`: all three stay on the device for the whole run (fastest; CPU tests, or a card with room for all);
  - `sequential`: one stage's weights at a time: the text encoder is freed after the run's prompts are encoded,
    the transformer is moved in for denoising and out for decoding (a 64 GB bf16 transformer on an 80 GB card).
`plan_offload` picks the first mode that fits the usable memory (total minus a reserve for the CUDA context and
allocator slack); when none does it says which stage overflows and by how much. `check_fits` raises before any
weight is loaded. parity doctor prints the same plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from parity.engine.resources import GIB, gib
from parity.family import family

RESERVE_BYTES = int(1.5 * GIB)   # CUDA context, cuBLAS workspace, kernels
RESERVE_FRACTION = 0.05          # allocator fragmentation


@dataclass(frozen=True)
class Needs:
    """Bytes per component on the device, and the transient activation estimate per stage."""

    transformer: int
    text_encoder: int
    vae: int
    lora_device: int = 0        # live LoRA factors (fp32) on the device while denoising
    lora_pristine: int = 0      # merged LoRA: pristine copies of the target weights (where the transformer is)
    act_encode: int = 0
    act_denoise: int = 0
    act_decode: int = 0
    encode: bool = True         # False: every prompt's embedding is cached, the text encoder is never loaded


@dataclass(frozen=True)
class OffloadPlan:
    """What goes where: `stages` maps encode/denoise/decode to the components on the device and the stage's peak
    bytes; `fits` whether the largest stage is within `usable` bytes."""

    mode: str
    usable: int
    peak: int
    fits: bool
    stages: dict[str, tuple[tuple[str, ...], int]] = field(default_factory=dict)
    overflow: str = ""          # the stage that does not fit, and by how much

    def describe(self) -> str:
        parts = [f"{s}: {'+'.join(c) or '-'} {gib(b)}" for s, (c, b) in self.stages.items()]
        return f"{self.mode} ({'; '.join(parts)}); peak {gib(self.peak)} of {gib(self.usable)} usable"


def usable_bytes(device_bytes: int) -> int:
    return max(0, int(device_bytes * (1 - RESERVE_FRACTION)) - RESERVE_BYTES)


def _stages_none(n: Needs) -> dict[str, tuple[tuple[str, ...], int]]:
    resident = ("text_encoder",) * n.encode + ("transformer", "vae")
    weights = n.text_encoder * n.encode + n.transformer + n.vae + n.lora_device + n.lora_pristine
    out = {}
    for stage, act in (("encode", n.act_encode), ("denoise", n.act_denoise), ("decode", n.act_decode)):
        if stage == "encode" and not n.encode:
            continue
        out[stage] = (resident + (("lora",) if n.lora_device or n.lora_pristine else ()), weights + act)
    return out


def _stages_sequential(n: Needs) -> dict[str, tuple[tuple[str, ...], int]]:
    out = {}
    if n.encode:
        out["encode"] = (("text_encoder",), n.text_encoder + n.act_encode)
    # The merged LoRA's pristine copies stay on the host: the LoRA is applied before the transformer moves in.
    out["denoise"] = (("transformer",) + (("lora",) if n.lora_device else ()),
                      n.transformer + n.lora_device + n.act_denoise)
    out["decode"] = (("vae",), n.vae + n.act_decode)
    return out


def _plan(mode: str, n: Needs, usable: int) -> OffloadPlan:
    stages = _stages_none(n) if mode == "none" else _stages_sequential(n)
    stage, (comps, peak) = max(stages.items(), key=lambda kv: kv[1][1])
    fits = peak <= usable
    overflow = "" if fits else f"{stage} needs {gib(peak)} ({'+'.join(comps)}), {gib(peak - usable)} over"
    return OffloadPlan(mode, usable, peak, fits, stages, overflow)


def plan_offload(needs: Needs, device_bytes: int, *, mode: str = "auto") -> OffloadPlan:
    """`none` when everything fits at once, else `sequential`; `mode` other than auto plans that mode only."""
    usable = usable_bytes(device_bytes)
    if mode != "auto":
        return _plan(mode, needs, usable)
    first = _plan("none", needs, usable)
    return first if first.fits else _plan("sequential", needs, usable)


def host_bytes(needs: Needs, plan: OffloadPlan) -> int:
    """Host memory the plan needs at its peak: offloaded weights wait in host RAM (sequential), and a merged
    LoRA's pristine copies live there too; the text encoder is read into host memory before it moves."""
    if plan.mode == "none":
        return max(needs.text_encoder * needs.encode, needs.transformer)  # the largest component while loading
    # The text encoder is loaded, used and freed before the transformer is loaded (render.py).
    return max(needs.text_encoder * needs.encode, needs.transformer + needs.vae + needs.lora_pristine)


def check_fits(plan: OffloadPlan, what: str) -> None:
    """ModelError before any weight is loaded when the plan does not fit."""
    from parity.errors import ModelError

    if not plan.fits:
        raise ModelError(f"does not fit on this device: {plan.overflow} (offload {plan.mode}); "
                         "run `parity doctor` for what would fit (qfloat8, a larger card)", what)


# ------------------------------------------------------------------------------------------ needs of a render
@dataclass(frozen=True)
class RenderShape:
    """The precision and size facts a render's memory depends on."""

    dtype: str = "bf16"
    quantize: str | None = None
    quantize_te: str | None = None
    width: int = 1024
    height: int = 1024
    max_length: int = 512
    cfg_batch: int = 1                  # 2 when the model runs real CFG in one batch (klein)
    lora_params: int = 0                # parameters in the LoRA file (0: none)
    lora_application: str = "merged"
    encode: bool = True


def _json_key(d: dict | None) -> str:
    import json

    return json.dumps(d, sort_keys=True, default=str)


_FOOTPRINTS: dict[tuple, object] = {}


def component_footprint(kind: str, cfg: dict, dtype: str, qtype: str | None):
    """Footprint of 'transformer' | 'text_encoder' | 'vae' for a config, built on the meta device (memoised)."""
    from parity.engine import fullsize
    from parity.engine.resources import footprint

    key = (kind, _json_key(cfg), dtype, qtype)
    if key not in _FOOTPRINTS:
        if kind == "transformer":
            model = fullsize.meta_transformer(cfg)
        elif kind == "text_encoder":
            model = fullsize.meta_text_encoder(cfg)
        else:
            model = fullsize.meta_vae(cfg)
        _FOOTPRINTS[key] = footprint(kind, model, dtype, qtype)
    return _FOOTPRINTS[key]


def lora_target_bytes(cfg: dict, dtype: str) -> int:
    """Bytes of the transformer weights AI Toolkit's default LoRA targets (what a merge keeps pristine copies of)."""
    from parity.engine.fullsize import lora_target_shapes
    from parity.engine.resources import DTYPE_BYTES

    return sum(o * i for o, i in lora_target_shapes(cfg).values()) * DTYPE_BYTES[dtype]


def render_needs(transformer_cfg: dict, te_cfg: dict | None, vae_cfg: dict, shape: RenderShape) -> Needs:
    """Needs of one render configuration (see RenderShape); a missing text-encoder config counts as 0 bytes."""
    from parity.engine import resources as r

    t = component_footprint("transformer", transformer_cfg, shape.dtype, shape.quantize)
    te = component_footprint("text_encoder", te_cfg, shape.dtype, shape.quantize_te) if te_cfg else None
    v = component_footprint("vae", vae_cfg, shape.dtype, None)
    n_img = r.image_tokens(shape.width, shape.height)
    live = shape.lora_params and (shape.lora_application == "live" or shape.quantize)
    return Needs(
        transformer=t.weight_bytes, text_encoder=te.weight_bytes if te else 0, vae=v.weight_bytes,
        lora_device=shape.lora_params * 4 if live else 0,
        lora_pristine=lora_target_bytes(transformer_cfg, shape.dtype) if shape.lora_params and not live else 0,
        act_encode=r.encode_activation_bytes(te_cfg or {}, shape.max_length, shape.dtype),
        act_denoise=r.denoise_activation_bytes(transformer_cfg, n_img, shape.max_length, shape.dtype,
                                               shape.cfg_batch),
        act_decode=r.decode_activation_bytes(vae_cfg, shape.width, shape.height, shape.dtype),
        encode=shape.encode,
    )


def lora_file_params(path) -> int:
    """Parameters in a LoRA file, from its safetensors header only (0 without a file or a readable header: the
    LoRA loader reports a broken file with its own message)."""
    if not path:
        return 0
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except (SafetensorError, OSError, ValueError):
        return 0


def check_engine(engine, spec) -> None:
    """Before the engine loads weights for `spec` on a CUDA device: ModelError when its offload mode cannot fit."""
    if engine.device.type != "cuda":
        return
    import torch

    from parity.jsonio import read_json

    te_cfg = None
    if engine.layout.text_encoder is not None and (engine.layout.text_encoder / "config.json").is_file():
        te_cfg = read_json(engine.layout.text_encoder / "config.json")
    shape = RenderShape(dtype=spec.dtype, quantize=spec.quantize, quantize_te=spec.quantize_te, width=spec.width,
                        height=spec.height, max_length=engine.max_length, lora_params=lora_file_params(spec.lora_path),
                        lora_application=spec.lora_application,
                        cfg_batch=family(spec.arch).forwards_per_step)
    needs = render_needs(engine.layout.transformer_config, te_cfg, engine.layout.vae_config, shape)
    total = torch.cuda.get_device_properties(engine.device).total_memory
    check_fits(plan_offload(needs, total, mode=engine.offload), str(engine.layout.root))
