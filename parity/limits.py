"""The largest render parity will attempt, and the valid range of each numeric setting: one table for the job
reader, `--set` overrides and request files, so a value is refused at the edge (with the file and key) instead of
failing deep inside planning or rendering (issue 17: a 0 step count divided by zero, 10**9 steps exhausted
memory, a 10**8-pixel width overflowed)."""

from __future__ import annotations

import math

MAX_SIDE = 4096                  # px a side after AI Toolkit's floors (FLUX.2 is trained up to 2048)
MAX_PIXELS = 4096 * 4096         # width * height
MAX_STEPS = 1000                 # sampling steps (AI Toolkit's own default is 20, its UI's 30)
MAX_ABS_GUIDANCE = 100.0
MAX_ABS_MULTIPLIER = 100.0       # network multiplier (LoRA strength)


def problem(*, width: int | None = None, height: int | None = None, steps: int | None = None,
            guidance: float | None = None, multiplier: float | None = None) -> str | None:
    """None when every given value is renderable, else one line saying which value is out of range and why."""
    for name, v in (("width", width), ("height", height)):
        if v is not None and not 16 <= v <= MAX_SIDE:
            return f"{name} {v} is outside 16..{MAX_SIDE} px (parity's limit per side)"
    if width is not None and height is not None and width * height > MAX_PIXELS:
        return f"size {width}x{height} is over parity's budget of {MAX_PIXELS} pixels"
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        return f"sample_steps {steps} is outside 1..{MAX_STEPS}"
    for name, v, limit in (("guidance_scale", guidance, MAX_ABS_GUIDANCE),
                           ("network_multiplier", multiplier, MAX_ABS_MULTIPLIER)):
        if v is not None and not (math.isfinite(v) and abs(v) <= limit):
            return f"{name} {v} is outside -{limit:g}..{limit:g}"
    return None

# The one size budget for an image file parity reads from outside or copies into a run or report folder: a result
# downloaded from an inference server, an external render kept beside the run, an image copied into a report. A
# FLUX.2 render is a few MB; a larger file (a valid PNG followed by gigabytes, issue 35) is never copied byte for
# byte: its decoded image is written instead, or it is refused.
MAX_IMAGE_BYTES = 256 * 2**20
