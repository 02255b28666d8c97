"""Sigma schedules: AI Toolkit's FLUX.2 preview schedule, diffusers' empirical one, and a static shift.

Pure functions over plain numbers; every schedule is returned as N+1 Python floats ending in 0.0.

AI Toolkit (extensions_built_in/diffusion_models/flux2/src/sampling.py L294-322, called from src/pipeline.py L364;
aitk-flux2-previews.md section C step 9): `t = linspace(1, 0, N+1)` in float32, `mu` linear in the number of image
tokens through (256, 0.5) and (4096, 1.15), `t' = e^mu / (e^mu + (1/t - 1))`, `.tolist()`.
diffusers' Flux2Pipeline (pipeline_flux2.py `compute_empirical_mu`, L159-174 in 0.42.1): a step-dependent mu for
L <= 4300 tokens, applied by FlowMatchEulerDiscreteScheduler's exponential time shift.
"""

from __future__ import annotations

import math

# AI Toolkit's get_schedule defaults (sampling.py): base_shift 0.5 at 256 tokens, max_shift 1.15 at 4096 tokens.
AITK_BASE_SEQ, AITK_BASE_SHIFT = 256, 0.5
AITK_MAX_SEQ, AITK_MAX_SHIFT = 4096, 1.15

# The scheduler config the FLUX.2-dev repo ships (diffusers' convert script copies FLUX.1-dev's, section H).
FLUX2_SCHEDULER_CONFIG: dict = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}


def image_seq_len(width: int, height: int) -> int:
    """Image tokens of a FLUX.2 render: one per 16x16 pixel patch (8x VAE, then 2x2 packing)."""
    return (height // 16) * (width // 16)


def aitk_mu(seq_len: int) -> float:
    """AI Toolkit's mu: `get_lin_function(x1=256, y1=0.5, x2=4096, y2=1.15)(seq_len)` evaluated the same way
    (slope first, then intercept) so the Python float is bit-identical to AI Toolkit's."""
    m = (AITK_MAX_SHIFT - AITK_BASE_SHIFT) / (AITK_MAX_SEQ - AITK_BASE_SEQ)
    b = AITK_BASE_SHIFT - m * AITK_BASE_SEQ
    return m * seq_len + b


def empirical_mu(seq_len: int, steps: int) -> float:
    """diffusers' (and BFL's official) step-dependent mu: diffusers' own function, imported, not re-derived."""
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    return float(compute_empirical_mu(image_seq_len=seq_len, num_steps=steps))


def _linspace_f32(steps: int):
    import torch

    return torch.linspace(1, 0, steps + 1)  # float32, as sampling.py does


def exp_time_shift(mu: float, steps: int) -> list[float]:
    """`e^mu / (e^mu + (1/t - 1))` on float32 `linspace(1, 0, N+1)`, computed in float32 like BFL's
    `time_shift(mu, 1.0, t)` (t = 0 gives 1/0 = inf and so exactly 0)."""
    t = _linspace_f32(steps)
    e = math.exp(mu)
    return (e / (e + (1 / t - 1) ** 1.0)).tolist()


def aitk_sigmas(width: int, height: int, steps: int) -> tuple[list[float], float]:
    """AI Toolkit's preview schedule for an effective size: (N+1 sigmas ending in 0, mu)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    mu = aitk_mu(image_seq_len(width, height))
    return exp_time_shift(mu, steps), mu


def static_sigmas(steps: int, shift: float) -> list[float]:
    """A fixed shift s on the same float32 grid: `s*t / (1 + (s-1)*t)` (equal to the exponential shift with
    mu = ln s)."""
    t = _linspace_f32(steps)
    return (shift * t / (1 + (shift - 1) * t)).tolist()


def diffusers_sigmas(width: int, height: int, steps: int, scheduler_config: dict | None = None) -> tuple[list[float], float]:
    """What stock Flux2Pipeline feeds its scheduler: `np.linspace(1, 1/N, N)` shifted by the empirical mu in
    diffusers' own FlowMatchEulerDiscreteScheduler; returns (N+1 sigmas incl. the final 0, mu)."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = dict(FLUX2_SCHEDULER_CONFIG if scheduler_config is None else scheduler_config)
    sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    mu = empirical_mu(image_seq_len(width, height), steps)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return [float(s) for s in sched.sigmas.tolist()], mu


def parse_schedule(name: str) -> tuple[str, float | None]:
    """'aitk' | 'empirical' | 'static:S' -> (kind, shift). Raises ValueError on anything else."""
    if name in ("aitk", "empirical"):
        return name, None
    if name.startswith("static:"):
        try:
            s = float(name.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"bad static shift in schedule {name!r}") from None
        if not s > 0:
            raise ValueError(f"static shift must be > 0 in schedule {name!r}")
        return "static", s
    raise ValueError(f"unknown schedule {name!r}; expected aitk, empirical or static:S")


def sigmas_for(schedule: str, width: int, height: int, steps: int,
               scheduler_config: dict | None = None) -> tuple[list[float], float | None]:
    """The N+1 sigmas (and mu, None for a static shift) a named schedule gives at an effective size."""
    kind, shift = parse_schedule(schedule)
    if kind == "aitk":
        return aitk_sigmas(width, height, steps)
    if kind == "empirical":
        return diffusers_sigmas(width, height, steps, scheduler_config)
    return static_sigmas(steps, shift), None
