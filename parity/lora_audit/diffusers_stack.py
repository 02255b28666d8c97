"""diffusers' own loader run on the file: `Flux2Pipeline` / `Flux2KleinPipeline.load_lora_weights` into a
`Flux2Transformer2DModel` built to the file's shapes, then the adapted modules counted (PEFT layers) and, on a
model small enough to hold in memory, each module's delta (PEFT's own `get_delta_weight`) compared with the delta
AI Toolkit trained. Full-size shapes are built on the meta device, so nothing of the base model is allocated; there
only the module count and PEFT's scaling are read (the factor values stay on the meta device).

Nothing of diffusers' key conversion is re-implemented: what is counted is what its loader did.
"""

from __future__ import annotations

from parity.lora_audit.adapter_file import AdapterFile, Module
from parity.lora_audit.result import StackResult

ADAPTER = "parity_audit"
MATERIALISE_MAX_WIDTH = 1024   # a transformer this narrow is built for real (a few MB); wider ones on meta
WHERE = ("diffusers/loaders/lora_pipeline.py Flux2LoraLoaderMixin.load_lora_weights -> lora_state_dict -> "
         "lora_conversion_utils._convert_non_diffusers_flux2_lora_to_diffusers; PEFT inject_adapter_in_model")


def version() -> str:
    from importlib.metadata import version as v

    return f"diffusers {v('diffusers')} (installed), peft {v('peft')}"


def _pipeline(cfg: dict, transformer):
    import diffusers

    from parity.family import guess_member

    # The pipeline of the member this config is (a transformer without guidance embedding: [klein], true CFG).
    member = guess_member(None, bool(cfg.get("guidance_embeds", True)), cfg.get("joint_attention_dim"))
    cls = getattr(diffusers, member.pipeline_class)
    return cls(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=transformer)


def _build(cfg: dict, materialise: bool):
    import torch
    from diffusers import Flux2Transformer2DModel

    from parity.engine.fullsize import _known_args, meta_transformer

    if not materialise:
        return meta_transformer(cfg)
    torch.manual_seed(0)
    return Flux2Transformer2DModel(**_known_args(Flux2Transformer2DModel, cfg))


def _targets(bfl: str, m: Module) -> list[list[str]]:
    """Alternative sets of diffusers modules that together carry the BFL module: its split targets, or for a fused
    qkv the fused projection diffusers creates for LoKr (`attn.to_qkv` / `attn.to_added_qkv`)."""
    from parity.engine import keymap

    oi = m.out_in()
    split = [t.module for t in keymap.bfl_module_targets(bfl, oi[0] if oi else 3)]
    if bfl.endswith("img_attn.qkv") or bfl.endswith("txt_attn.qkv"):
        n = bfl.split(".")[1]
        fused = "to_qkv" if "img_attn" in bfl else "to_added_qkv"
        return [split, [f"transformer_blocks.{n}.attn.{fused}"]]
    return [split]


def _reference_delta(m: Module, sd: dict):
    """AI Toolkit's trained delta of one module in fp32 (unscaled product x its scale), BFL row order."""
    import torch

    t = {r: sd[k].float() for r, k in m.keys.items() if r not in ("alpha", "magnitude")}
    if m.kind == "lokr":
        w1 = t["w1"] if "w1" in t else t["w1_a"] @ t["w1_b"]
        w2 = t["w2"] if "w2" in t else t["w2_a"] @ t["w2_b"]
        return torch.kron(w1, w2) * m.aitk_scale()
    return (t["B"] @ t["A"]) * m.aitk_scale()


def _stack_delta(model, names: list[str], bfl: str):
    """The delta diffusers applies to the BFL module, from PEFT's get_delta_weight of each adapted module, in BFL
    row order (the final adaLN halves swapped back)."""
    import torch

    parts = [model.get_submodule(n).get_delta_weight(ADAPTER).float() for n in names]
    delta = torch.cat(parts, dim=0)
    if bfl == "final_layer.adaLN_modulation.1":
        scale, shift = delta.chunk(2, dim=0)
        delta = torch.cat([shift, scale], dim=0)
    return delta


def _factor(stack, ref) -> float:
    den = float((ref * ref).sum().detach())
    return float((stack * ref).sum().detach()) / den if den else 1.0


def _measure(model, f: AdapterFile, res: StackResult, materialised: bool) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = {n: mod for n, mod in model.named_modules() if isinstance(mod, BaseTunerLayer)}
    sd = _file_tensors(f) if materialised else None
    for bfl, m in sorted(f.modules.items()):
        names = next((s for s in _targets(bfl, m) if all(n in adapted for n in s)), None)
        if names is None:
            continue
        res.applied.append(bfl)
        if materialised:
            res.scales[bfl] = _factor(_stack_delta(model, names, bfl), _reference_delta(m, sd))
        else:
            res.scales[bfl] = float(adapted[names[0]].scaling.get(ADAPTER, 1.0)) / m.aitk_scale()
    applied = set(res.applied)
    has_dora = any(getattr(adapted[n], "use_dora", {}).get(ADAPTER, False) for n in adapted)
    res.dropped = [k for b, m in f.modules.items() for r, k in m.keys.items()
                   if b not in applied or (r == "magnitude" and not has_dora)]


def _file_tensors(f: AdapterFile) -> dict:
    from safetensors.torch import load_file

    return load_file(str(f.path))


# On the meta device the result depends on the header alone (names, shapes, alphas): the checkpoints of one job
# share it, so `parity doctor` runs the loader once per job, not once per checkpoint.
_META_RESULTS: dict[tuple, StackResult] = {}


def _signature(f: AdapterFile, family: str) -> tuple:
    return family, tuple(f.order), tuple((b, tuple(sorted(m.shapes.items())), m.alpha)
                                         for b, m in sorted(f.modules.items()))


def audit(f: AdapterFile, arch: str) -> StackResult:
    """Run diffusers' loader on a transformer of the file's shapes and report what it adapted."""
    import copy

    from parity.lora_audit.arch import hidden_size, transformer_config

    family, cfg = transformer_config(f, arch)
    materialise = (hidden_size(f) or 0) <= MATERIALISE_MAX_WIDTH
    key = None if materialise else _signature(f, family)
    if key not in _META_RESULTS:
        res = _load_and_measure(f, family, cfg, materialise)
        if key is None:
            return res
        _META_RESULTS[key] = res
    return copy.deepcopy(_META_RESULTS[key])


def _load_and_measure(f: AdapterFile, family: str, cfg: dict, materialise: bool) -> StackResult:
    import logging

    res = StackResult("diffusers", version(), len(f.modules), where=WHERE)
    model = _build(cfg, materialise)
    pipe = _pipeline(cfg, model)
    quiet = logging.getLogger("diffusers").level
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    try:
        pipe.load_lora_weights(str(f.path), adapter_name=ADAPTER, low_cpu_mem_usage=not materialise)
    except Exception as exc:  # noqa: BLE001 - the loader's refusal is the finding
        res.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        res.dropped = list(f.order)
        return res
    finally:
        logging.getLogger("diffusers").setLevel(quiet)
    _measure(model, f, res, materialise)
    return res
