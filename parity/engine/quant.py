"""optimum-quanto weight quantization as AI Toolkit applies it for `quantize` / `quantize_te`.

AI Toolkit (flux2_model.py L108-111 and toolkit/util/quantize.py; aitk-flux2-previews.md fact 10, section C):
`quantize(model, weights=qfloat8)` then `freeze(model)`: every Linear layer gets float8_e4m3fn weights with a
per-output-row scale (max|W|/448, in the compute dtype), dequantized before the matmul
(bit-exact-numerics.md detail 2). The text encoder uses `model.qtype` too. Quantizing is in place and cannot be
undone, so the engine re-loads pristine weights whenever a render asks for a different precision.
"""

from __future__ import annotations

QTYPES = ("qfloat8", "qint8", "qint4", "qfloat8_e4m3fn", "qfloat8_e5m2")


def quantize_module(model, qtype: str):
    """Quantize all Linear weights of `model` in place with quanto (`quantize` + `freeze`) and return it."""
    if qtype not in QTYPES:
        raise ValueError(f"unknown qtype {qtype!r}; expected one of {', '.join(QTYPES)}")
    from optimum import quanto

    quanto.quantize(model, weights=getattr(quanto, qtype))
    quanto.freeze(model)
    return model


def count_quantized(model) -> int:
    """Number of quanto-quantized Linear layers in a model."""
    from optimum.quanto.nn import QLinear

    return sum(isinstance(m, QLinear) for m in model.modules())
