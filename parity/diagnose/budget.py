"""What a case's diagnosis renders cost: the wall time its extra renders would take on the real model.

The estimate is `parity doctor`'s plan for the card (parity/doctor/plan.py `time_estimate`: the transformer's FLOPs
per step from its config, the card's datasheet peak at the assumed utilisation) times the steps of each render.
No card known (the CPU, a GPU missing from parity's card table, a model folder without a transformer config):
"unknown", never a guess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parity.family import family
from parity.jsonio import read_json
from parity.spec import RenderSpec

TEXT_TOKENS = 512   # FLUX.2's prompt length (the text stream every step attends to)


def seconds_per_render(base_model: str | Path, spec: RenderSpec, device: str,
                       card: str | None = None) -> tuple[float | None, str]:
    """(seconds, what they rest on) for one render of `spec` (its size, steps and family member: true CFG runs the
    transformer twice a step); (None, why) when unknown."""
    from parity.doctor.environment import resolve_device
    from parity.engine import resources

    try:
        dev = resolve_device(device, None, card)
        tcfg = read_json(Path(base_model) / "transformer" / "config.json")
    except Exception as e:  # noqa: BLE001 - an estimate never fails a run
        return None, f"unknown ({type(e).__name__})"
    if not dev.peak_tflops:
        return None, f"unknown (no card to plan for on {dev.name})"
    forwards = family(spec.arch).forwards_per_step
    flops = resources.step_flops(tcfg, resources.image_tokens(spec.width, spec.height), TEXT_TOKENS) * forwards
    step_s = flops / (dev.peak_tflops * 1e12 * resources.ASSUMED_MFU)
    return spec.sample_steps * step_s, f"parity doctor's plan for {dev.name}"


def cost_record(renders: int, budget: int, per_render: tuple[float | None, str]) -> dict[str, Any]:
    """The results' `cost` of a case's diagnosis: renders spent of the budget, and the wall-time estimate."""
    seconds, basis = per_render
    return {"renders": renders, "budget": budget,
            "estimate_s": None if seconds is None else round(renders * seconds, 1), "estimate_basis": basis}


def budget_text(budget: int, per_render: tuple[float | None, str]) -> str:
    """The budget as printed before a search starts: "budget 90 extra renders (at most about 22m00s on the real
    model, parity doctor's plan for NVIDIA H100)"."""
    from parity.runner.progress import duration_text

    seconds, basis = per_render
    if seconds is None:
        return f"budget {budget} extra renders, fixed before the search (wall time on the real model {basis})"
    return (f"budget {budget} extra renders, fixed before the search (at most about "
            f"{duration_text(budget * seconds)} on the real model, {basis})")
