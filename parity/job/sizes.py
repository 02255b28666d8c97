"""The render-time size rule of FLUX.2, in one place (the job reader, the engine and diagnosis share it)."""

from __future__ import annotations

FLUX2_DIVISOR = 16  # Flux2Model.get_bucket_divisibility (flux2_model.py L295-300)


def effective_size(width: int, height: int) -> tuple[int, int]:
    """Floor to multiples of 16, as AI Toolkit's generate_single_image does (flux2_model.py L295-300)."""
    return int(width) // FLUX2_DIVISOR * FLUX2_DIVISOR, int(height) // FLUX2_DIVISOR * FLUX2_DIVISOR
