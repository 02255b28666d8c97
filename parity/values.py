"""Knob values as people read them: `96x64 (requested 100x64)`, `AI Toolkit mu 0.461`, `none`, never raw JSON.

One formatter for every place a person reads a value (the pytest failure screen, the CLI table, JUnit, markdown);
the HTML report gets its values formatted here too (parity.report.texts), in its page data. Torch-free.
"""

from __future__ import annotations

from typing import Any

from parity.knobs import unset_text

_SCHEDULE_NAMES = {"aitk": "AI Toolkit", "empirical": "diffusers empirical"}


def size_text(wh: Any) -> str:
    """[w, h] as "WxH"."""
    if isinstance(wh, (list, tuple)) and len(wh) == 2:
        return f"{wh[0]}x{wh[1]}"
    return plain_text(wh)


def number_text(v: float) -> str:
    """A number without float noise: 4.0 -> "4", 0.4607291 -> "0.4607"."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v))
    return f"{v:.4g}"


def plain_text(v: Any) -> str:
    """Any value in words: lists comma-joined, mappings as "key value", None as "none"."""
    if v is None:
        return "none"
    if isinstance(v, (int, float)):
        return number_text(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(plain_text(x) for x in v) or "none"
    if isinstance(v, dict):
        return ", ".join(f"{k.replace('_', ' ')} {plain_text(x)}" for k, x in v.items()) or "none"
    return str(v)


def schedule_text(v: dict[str, Any]) -> str:
    """{"name": "aitk", "mu": 0.46, "sigmas": [...]} -> "AI Toolkit mu 0.46" (the sigma table is shown apart)."""
    name = str(v.get("name", ""))
    if name.startswith("static:"):
        text = f"static shift {name.split(':', 1)[1]}"
    else:
        text = _SCHEDULE_NAMES.get(name, name or "schedule")
        if isinstance(v.get("mu"), (int, float)):
            text += f" mu {number_text(round(v['mu'], 3))}"
    if v.get("numerics"):
        text += " (numerics " + ", ".join(f"{k}:{x}" for k, x in v["numerics"].items()) + ")"
    return text


def knob_text(knob: str, v: Any) -> str:
    """One knob's value as people read it."""
    if v is None or v == [] or v == "":
        return unset_text(knob)  # what no value means, per knob (never "None")
    if knob == "resolution" and isinstance(v, dict) and "effective" in v:
        eff, req = v.get("effective"), v.get("requested")
        return size_text(eff) + (f" (requested {size_text(req)})" if req and list(req) != list(eff) else "")
    if knob == "resolution" and isinstance(v, (list, tuple)):
        return size_text(v)
    if knob == "schedule" and isinstance(v, dict):
        return schedule_text(v)
    if knob == "schedule" and isinstance(v, str):
        return schedule_text({"name": v})
    if knob == "quantization" and isinstance(v, dict):
        parts = [f"{k.replace('_', ' ')} {x}" for k, x in v.items() if x]
        return ", ".join(parts) or "none"
    if knob == "prompt" and isinstance(v, str):
        return repr(v)  # quotes show leading/trailing spaces and flags
    return plain_text(v)


def size_mismatch_text(sm: Any) -> str:
    """{"render": [w, h], "preview": [w, h]} -> "render 64x64, preview 96x64"."""
    if isinstance(sm, dict):
        return ", ".join(f"{k} {size_text(v)}" for k, v in sm.items())
    return "sizes differ" if sm else "none"


def cause_text(knob: str, preview: Any, inference: Any, ssim_aligned: Any = None) -> str:
    """A ranked cause: "steps 8 -> 25 (aligned SSIM 0.91)"."""
    text = f"{knob} {knob_text(knob, preview)} -> {knob_text(knob, inference)}"
    if isinstance(ssim_aligned, (int, float)):
        text += f" (aligning it gives SSIM {ssim_aligned:.4f})"
    return text
