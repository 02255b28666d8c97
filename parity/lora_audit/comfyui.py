"""ComfyUI's treatment of an AI Toolkit FLUX.2 adapter file, as rules (torch-free).

Taken from Comfy-Org/ComfyUI at commit a125cd84b054a57729b5eecab930ca9408719832 (the snapshot whose code
tests/data/lora_audit/comfyui-a125cd84.json was produced by running), and read again in the newest stored versions
of the same files (comfy/lora.py 17358c8f, comfy/weight_adapter/lora.py 6f98b150, comfy/weight_adapter/lokr.py
2bffe2f4, comfy/utils.py 09708eae), which decide these key forms the same way. The path a file takes there:
comfy/sd.py L65-73 `load_lora_for_models`: key map from the model, `lora_convert.convert_lora` (no conversion
applies to AI Toolkit's FLUX.2 keys), `lora.load_lora`, then `ModelPatcher.add_patches` (model_patcher.py L552:
only keys the model has).
"""

from __future__ import annotations

from parity.lora_audit.adapter_file import AdapterFile, Module
from parity.lora_audit.result import StackResult

COMMIT = "a125cd84b054a57729b5eecab930ca9408719832"
VERSION = f"Comfy-Org/ComfyUI@{COMMIT[:8]}"
WHERE = ("comfy/lora.py L175-184 model_lora_keys_unet (generic `diffusion_model.<name>` and `lora_unet_<name_>` "
         "keys; `lycoris_` only for diffusers names, L255-261), L37-93 load_lora; comfy/weight_adapter/lora.py L93-95, "
         "L175; lokr.py L208")


def lora_key_bases(bfl: str) -> set[str]:
    """The key bases ComfyUI maps onto the FLUX.2 weight `diffusion_model.<bfl>.weight` (lora.py L178-184: the
    generic loop over the model's state dict). The Flux branch (L255-263) and the unet loop (L186-194) add
    `transformer.` / `lycoris_` / `lora_transformer_` forms of the *diffusers* names only (utils.flux_to_diffusers,
    utils.unet_to_diffusers returns {} without num_res_blocks, L265-267), which AI Toolkit's BFL names never are."""
    return {f"diffusion_model.{bfl}", "lora_unet_" + bfl.replace(".", "_")}


def _base(m: Module) -> str:
    key = next(iter(m.keys.values()))
    suffix = next(s for s in (".lora_A.weight", ".lora_B.weight", ".lora_down.weight", ".lora_up.weight",
                              ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_w1", ".lokr_w2",
                              ".lokr_t2", ".magnitude", ".dora_scale", ".alpha") if key.endswith(s))
    return key[: -len(suffix)]


def _consumed(m: Module) -> set[str]:
    """Keys load_lora reads for a mapped module: alpha and dora_scale by name (lora.py L41-51), the LoRA factors
    (weight_adapter/lora.py L93-130: lora_up/lora_down or lora_B/lora_A) or every lokr_* factor (lokr.py)."""
    roles = {"A", "B", "alpha", "w1", "w2", "w1_a", "w1_b", "w2_a", "w2_b", "t2"}
    keys = {k for r, k in m.keys.items() if r in roles}
    if "magnitude" in m.keys and m.keys["magnitude"].endswith(".dora_scale"):
        keys.add(m.keys["magnitude"])  # only the `dora_scale` name; AI Toolkit's `.magnitude` is left over
    return keys


def _scale(m: Module) -> float:
    """ComfyUI's scale: LoRA alpha / its own rank (weight_adapter/lora.py L172-177, 1 without alpha); LoKr alpha /
    the decomposed factor's inner size, 1 when both factors are full (lokr.py L190-210)."""
    if m.kind == "lokr":
        dim = m.shapes["w2_b"][0] if "w2_b" in m.shapes else m.shapes["w1_b"][0] if "w1_b" in m.shapes else None
        return m.alpha / dim if m.alpha is not None and dim is not None else 1.0
    return m.alpha / m.shapes["A"][0] if m.alpha is not None else 1.0


def audit(f: AdapterFile) -> StackResult:
    """Which of the file's modules ComfyUI patches, at which scale, and which keys it logs as not loaded."""
    res = StackResult("comfyui", VERSION, len(f.modules), where=WHERE)
    consumed: set[str] = set()
    for bfl, m in sorted(f.modules.items()):
        if _base(m) not in lora_key_bases(bfl):
            continue
        res.applied.append(bfl)
        consumed |= _consumed(m)
        res.scales[bfl] = _scale(m) / m.aitk_scale()
    res.dropped = [k for k in f.order if k not in consumed]
    return res
