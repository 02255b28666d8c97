"""The resource plan of one case on one device: components at the job's precision, the engine's offload plan,
what would fit otherwise (offload mode, qfloat8, a larger card) and an estimated time per item and per run."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from parity.doctor.environment import Device
from parity.engine import offload, resources
from parity.engine.resources import CARDS
from parity.family import family


@dataclass
class CasePlan:
    """Everything the doctor says about one case's resources (JSON: `to_dict`)."""

    case: str
    base_model: str
    items: int
    shape: offload.RenderShape
    components: list[resources.Footprint]
    plan: offload.OffloadPlan
    host_bytes: int
    alternatives: list[dict] = field(default_factory=list)
    time: dict = field(default_factory=dict)
    planned_from: str | None = None  # set when the weights are absent: parity.doctor.published.PUBLISHED_NOTE

    def to_dict(self) -> dict:
        p = self.plan
        return {
            "case": self.case, "base_model": self.base_model, "items": self.items, "shape": dict(self.shape.__dict__),
            "components": [dict(c.__dict__) for c in self.components],
            "plan": {"mode": p.mode, "fits": p.fits, "peak_bytes": p.peak, "usable_bytes": p.usable,
                     "overflow": p.overflow,
                     "stages": {s: {"on_device": list(c), "bytes": b} for s, (c, b) in p.stages.items()}},
            "host_bytes": self.host_bytes, "alternatives": self.alternatives, "time": self.time,
            **({"planned_from": self.planned_from} if self.planned_from else {}),
        }


def render_shape(items, lora_params: int) -> offload.RenderShape:
    """The heaviest render of a case's items (largest image; their shared precision is the first item's).
    A member that runs true CFG ([klein]) makes two forwards a step: counted as a batch of two."""
    specs = [it.inference.spec for it in items]
    s = specs[0]
    width = max(sp.width for sp in specs)
    height = max(sp.height for sp in specs)
    return offload.RenderShape(dtype=s.dtype, quantize=s.quantize, quantize_te=s.quantize_te, width=width,
                               height=height, lora_params=lora_params if any(sp.lora_path for sp in specs) else 0,
                               lora_application=s.lora_application,
                               cfg_batch=family(s.arch).forwards_per_step)


def alternatives(tcfg: dict, te_cfg, vae_cfg: dict, shape: offload.RenderShape, qtypes=(None, "qfloat8")) -> list[dict]:
    """For each precision: the smallest named card it fits on and with which offload mode."""
    out = []
    for q in qtypes:
        alt = offload.RenderShape(**{**shape.__dict__, "quantize": q, "quantize_te": q,
                                     "lora_application": "live" if q else shape.lora_application})
        needs = offload.render_needs(tcfg, te_cfg, vae_cfg, alt)
        fits = []
        for card in sorted(CARDS.values(), key=lambda c: c.memory_gb):
            p = offload.plan_offload(needs, int(card.memory_gb * 1e9))
            if p.fits:
                fits.append({"card": card.key, "memory_gb": card.memory_gb, "mode": p.mode})
        out.append({"precision": shape.dtype + (f"+{q}" if q else ""), "quantize": q,
                    "changes_quantization_knob": q != shape.quantize, "fits_on": fits})
    return out


def cpu_matmul_tflops(n: int = 384, iters: int = 3) -> float:
    """A quick fp32 matmul peak of this CPU (the time estimate's reference when no GPU is planned for)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(iters):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


def diagnosis_renders(items) -> int:
    """Worst-case extra renders: attribution renders the all-aligned spec and one per differing knob for items
    below their gate; items that differ only irreducibly get two noise-floor twins."""
    from parity.diagnose.paramdiff import differing_knobs

    total = 0
    for it in items:
        knobs = differing_knobs(it.preview.spec, it.inference.spec)
        total += 1 + len(knobs) if knobs else 2
    return total


def time_estimate(tcfg: dict, shape: offload.RenderShape, items, device: Device, needs: offload.Needs,
                  plan: offload.OffloadPlan) -> dict:
    """Seconds per item and per run from the transformer's FLOPs, the device's peak and the stated assumptions."""
    cfg_forwards = shape.cfg_batch
    flops = resources.step_flops(tcfg, resources.image_tokens(shape.width, shape.height), shape.max_length)
    peak = device.peak_tflops
    peak_source = f"datasheet dense bf16 of {device.card.key}" if device.card else "datasheet dense bf16"
    if peak is None and device.kind == "cpu":
        peak, peak_source = cpu_matmul_tflops(), "measured fp32 matmul, this CPU, current threads"
    steps = [it.inference.spec.sample_steps for it in items] or [0]
    out = {"flops_per_step": flops * cfg_forwards, "peak_tflops": peak, "peak_source": peak_source,
           "assumed_mfu": resources.ASSUMED_MFU, "mean_steps": sum(steps) / len(steps),
           "diagnosis_renders_worst": diagnosis_renders(items)}
    if not peak:
        out["note"] = "no peak for this device: pass --card NAME for a time estimate"
        return out
    step_s = flops * cfg_forwards / (peak * 1e12 * resources.ASSUMED_MFU)
    link = resources.ASSUMED_HOST_LINK_GBPS * 1e9
    moves = 2 * (needs.transformer + needs.vae) / link if plan.mode == "sequential" and device.kind == "cuda" else 0.0
    per_item = out["mean_steps"] * step_s + moves
    out.update({"s_per_step": step_s, "s_offload_moves_per_render": moves, "s_per_item": per_item,
                "s_run": per_item * len(items), "s_run_with_diagnosis_worst": per_item * (len(items) +
                                                                                       out["diagnosis_renders_worst"]),
                "assumed_host_link_gbps": resources.ASSUMED_HOST_LINK_GBPS if moves else None})
    return out


def case_plan(name: str, base: str, layout, te_cfg, items, device: Device, lora_params: int, *,
              estimate_time: bool = True) -> CasePlan:
    tcfg, vcfg = layout.transformer_config, layout.vae_config
    shape = render_shape(items, lora_params)
    needs = offload.render_needs(tcfg, te_cfg, vcfg, shape)
    plan = offload.plan_offload(needs, device.memory_bytes) if device.kind == "cuda" else \
        offload.plan_offload(needs, device.memory_bytes, mode="none")
    comps = [offload.component_footprint("transformer", tcfg, shape.dtype, shape.quantize),
             offload.component_footprint("vae", vcfg, shape.dtype, None)]
    if te_cfg:
        comps.insert(1, offload.component_footprint("text_encoder", te_cfg, shape.dtype, shape.quantize_te))
    return CasePlan(case=name, base_model=base, items=len(items), shape=shape, components=comps, plan=plan,
                    host_bytes=offload.host_bytes(needs, plan),
                    alternatives=alternatives(tcfg, te_cfg, vcfg, shape) if device.kind == "cuda" else [],
                    time=time_estimate(tcfg, shape, items, device, needs, plan) if estimate_time else {})

