"""The largest render parity will attempt: the size budgets. The range of each setting is declared in the knob
registry (parity.knobs: `Setting.limit`, checked by the job reader, `--set` and inference.set; `request_limit`, the
reference server's schema, checked by request files), so a value is refused at the edge (with the file and key)
instead of failing deep inside planning or rendering (issue 17: a 0 step count divided by zero, 10**9 steps
exhausted memory, a 10**8-pixel width overflowed)."""

from __future__ import annotations

MAX_SIDE = 4096                  # px a side after AI Toolkit's floors (FLUX.2 is trained up to 2048)
MAX_PIXELS = 4096 * 4096         # width * height


def pixels_problem(width: int | None, height: int | None) -> str | None:
    """None when a width x height render fits parity's pixel budget (or a side is not given), else one line."""
    if width is not None and height is not None and width * height > MAX_PIXELS:
        return f"size {width}x{height} is over parity's budget of {MAX_PIXELS} pixels"
    return None

# The one size budget for an image file parity reads from outside or copies into a run or report folder: a result
# downloaded from an inference server, an external render kept beside the run, an image copied into a report. A
# FLUX.2 render is a few MB; a larger file (a valid PNG followed by gigabytes, issue 35) is never copied byte for
# byte: its decoded image is written instead, or it is refused.
MAX_IMAGE_BYTES = 256 * 2**20
