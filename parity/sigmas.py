"""The nominal sigma schedule in pure Python (float64), for the parameter table: mu and the sigma table from the
published formulas (aitk-flux2-previews.md section C step 9 and C.1), needing neither torch nor diffusers (the
engine renders with diffusers' own functions)."""

from __future__ import annotations

import math

from parity.engine.schedule import aitk_mu  # torch-free at import; the one AI Toolkit mu
from parity.job.sizes import effective_size


def image_tokens(width: int, height: int) -> int:
    w, h = effective_size(width, height)
    return (w // 16) * (h // 16)


def empirical_mu(tokens: int, steps: int) -> float:
    """diffusers' / BFL's `compute_empirical_mu` (pipeline_flux2.py L159-174), re-derived here so the parameter
    table needs neither torch nor diffusers (the engine renders with diffusers' own function): above 4300 tokens
    the FLUX.1 line (0.00016927 L + 0.45666666); at or below, linear in the step count between the values of two fitted lines at
    10 and 200 steps."""
    at_200 = 0.00016927 * tokens + 0.45666666
    if tokens > 4300:
        return at_200
    at_10 = 8.73809524e-05 * tokens + 1.89833333
    slope = (at_200 - at_10) / 190.0
    return at_200 + slope * (steps - 200)


def schedule_mu(schedule: str, width: int, height: int, steps: int) -> float:
    tokens = image_tokens(width, height)
    if schedule == "aitk":
        return aitk_mu(tokens)
    if schedule == "empirical":
        return empirical_mu(tokens, steps)
    if schedule.startswith("static:"):
        return math.log(float(schedule.split(":", 1)[1]))
    raise ValueError(f"unknown schedule {schedule!r}")


def nominal_sigmas(mu: float, steps: int) -> list[float]:
    """N+1 sigmas ending in 0: `e^mu / (e^mu + (1/t - 1))` on `t = linspace(1, 0, N+1)` (AI Toolkit, section C
    step 9). diffusers uses the same grid (its `linspace(1, 1/N, N)` plus the appended terminal 0) with its own mu."""
    e = math.exp(mu)
    out = []
    for k in range(steps + 1):
        t = 1.0 - k / steps
        out.append(0.0 if t <= 0 else e / (e + (1.0 / t - 1.0)))
    return out
