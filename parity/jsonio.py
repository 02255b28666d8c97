"""Strict JSON for every file parity writes: the one policy for values JSON cannot hold.

Non-finite floats (the PSNR of two identical images is inf) become the strings "inf", "-inf" and "nan"; numbers
read back from metrics turn them into floats again (`number`). Tuples become lists, Paths strings, numpy scalars
Python numbers. results.json, the journal, `parity compare --json` and the HTML report's embedded data all go
through `dumps`, so one image pair is written the same way everywhere (docs/results-schema.md, "Strict JSON").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan, "Infinity": math.inf, "-Infinity": -math.inf,
             "NaN": math.nan}


def _float(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def to_jsonable(obj: Any) -> Any:
    """A copy of `obj` that strict JSON can hold (see the module docstring); dict keys become strings."""
    t = type(obj)
    if t is str or t is int or t is bool or obj is None:
        return obj
    if t is float:
        return _float(obj)
    if t is dict:
        return {k if type(k) is str else str(k): to_jsonable(v) for k, v in obj.items()}
    if t is list or t is tuple:
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return _float(float(obj))
    if isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, dict):
        return to_jsonable(dict(obj))
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars, without importing numpy
        return to_jsonable(obj.item())
    return str(obj)


def dumps(obj: Any, **kw: Any) -> str:
    """Strict JSON text of `obj` (see to_jsonable); the C encoder's fast path when `obj` is already clean."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, **kw)
    except (ValueError, TypeError):
        return json.dumps(to_jsonable(obj), ensure_ascii=False, allow_nan=False, **kw)


def number(v: Any) -> Any:
    """A metric value as read back from JSON: "inf"/"-inf"/"nan" become floats; anything else is kept."""
    return NONFINITE.get(v, v) if isinstance(v, str) else v
