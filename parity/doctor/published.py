"""A plan before the download: `parity doctor --card/--gpu-memory` for a job whose base model is not on disk.

The plan is built from the pinned full-size configurations (parity.engine.fullsize) of the job's `model.arch`
instead of the files' config.json: the same component sizes, offload plan and alternatives as with the weights,
but nothing about the weights themselves is checked (they are not there). Time per render is given only where a
measured figure exists for that transformer on that card (MEASURED_S_PER_STEP, each with its source); otherwise it
is "unknown": a FLOPs-and-datasheet estimate is not offered as a number a runner can be chosen by.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from parity.doctor.inputs import Check
from parity.family import family

PUBLISHED_NOTE = "planned from the published configuration; weights not checked"

# (transformer configuration name, card key, width, height) -> (seconds per denoising step, every CFG forward of
# the step included; where it was measured). Only figures measured by benchmarks/gpu_flux2.py on a real card belong
# here. None has been measured yet (no card lent so far: benchmarks/README.md), so every planned time is "unknown".
MEASURED_S_PER_STEP: dict[tuple[str, str, int, int], tuple[float, str]] = {}


@dataclass(frozen=True)
class PublishedLayout:
    """What the planner reads from a base model, from the pinned configurations instead of its files."""

    root: str
    transformer_config: dict
    vae_config: dict
    transformer_name: str


def published_layout(arch: str, base: str) -> PublishedLayout:
    """The published configuration of `arch`'s base model. Every FLUX.2 model (dev and klein) uses the FLUX.2 VAE
    (AutoencoderKLFlux2, the configuration pinned as parity.engine.weights.FLUX2_DEV_VAE_CONFIG)."""
    from parity.engine import fullsize
    from parity.engine.weights import FLUX2_DEV_VAE_CONFIG

    name = family(arch).transformer_config
    return PublishedLayout(root=base, transformer_config=fullsize.TRANSFORMER_CONFIGS[name],
                           vae_config=dict(FLUX2_DEV_VAE_CONFIG), transformer_name=name)


def measured_time(transformer: str, device, shape, items) -> dict:
    """Seconds per render from a measured figure for this transformer, card and size, cited; else "unknown"."""
    card = device.card.key if device.card is not None else None
    steps = [it.inference.spec.sample_steps for it in items] or [0]
    mean_steps = sum(steps) / len(steps)
    figure = MEASURED_S_PER_STEP.get((transformer, card, shape.width, shape.height)) if card else None
    if figure is None:
        where = f"on {card}" if card else f"on {device.name} (no named card of that size)"
        return {"s_per_item": None, "mean_steps": mean_steps,
                "unknown": f"no measured figure for {transformer} at {shape.width}x{shape.height} {where}"}
    s_per_step, source = figure
    return {"s_per_step": s_per_step, "s_per_item": s_per_step * mean_steps, "mean_steps": mean_steps,
            "s_run": s_per_step * mean_steps * len(items), "measured": source}


def published_checks(name: str, layout: PublishedLayout, loras: list[str], problem: str) -> list[Check]:
    """The base model is absent (`problem`, said as a warning with the note); a LoRA file the run needs is still
    checked against the published transformer (names and shapes from its header)."""
    from parity.doctor.inputs import check_lora, expected_transformer

    checks = [Check(f"{name}: base model", "warn", f"{problem}; {PUBLISHED_NOTE} ({layout.transformer_name})",
                    layout.root)]
    if loras:
        needed = expected_transformer(layout.transformer_config, "diffusers")
        checks += [Check(f"{name}: {c.name}", c.status, c.detail, c.where)
                   for c in (check_lora(Path(p), needed) for p in loras)]
    return checks


def published_plan(name: str, layout: PublishedLayout, arch: str, items, device, loras: list[str]):
    """The case's resource plan from the published configuration (a parity.doctor.plan.CasePlan)."""
    from parity.doctor.plan import case_plan
    from parity.engine import fullsize
    from parity.engine.offload import lora_file_params

    te_cfg = fullsize.TEXT_ENCODER_CONFIGS[family(arch).text_encoder_config]
    plan = case_plan(name, layout.root, layout, te_cfg, items, device, lora_file_params(loras[0] if loras else None),
                     estimate_time=False)
    plan.time = measured_time(layout.transformer_name, device, plan.shape, items)
    plan.planned_from = PUBLISHED_NOTE
    return plan
