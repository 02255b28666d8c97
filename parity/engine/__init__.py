"""The reference FLUX.2 engine: weights, text encoding, LoRA/LoKr, schedules, the sampling loop.

The only stage that imports torch and diffusers.
"""
