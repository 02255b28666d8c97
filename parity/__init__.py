"""parity: preview-parity regression harness for FLUX.2-dev LoRAs trained with AI Toolkit.

Data flow (one module per stage): case -> job (items) -> engine (render) -> compare -> diagnose -> report.
Only `parity.engine` imports torch/diffusers; everything else works without them.
"""

__version__ = "0.1.0"
