"""The reference FLUX.2 engine: weights, text encoding, LoRA/LoKr, schedules, the sampling loop.

The only stage that imports torch and diffusers.
"""


def __getattr__(name: str):
    # Lazy: `parity.engine.schedule` and friends stay importable without loading torch/diffusers up front.
    if name in ("Engine", "RenderResult"):
        from parity.engine import render

        return getattr(render, name)
    raise AttributeError(name)
