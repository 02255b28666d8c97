"""Knob values as people read them: `96x64 (requested 100x64)`, `AI Toolkit mu 0.461`, `none`, never raw JSON.

One formatter for every place a person reads a value (the pytest failure screen, the CLI table, JUnit, markdown);
the HTML report gets its values formatted here too (parity.report.texts), in its page data. Torch-free.
"""

from __future__ import annotations

from typing import Any

from parity.knobs import text_format, unset_text

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


def _size_value_text(v: Any) -> str:
    """A resolution knob's value: {"effective", "requested"} or [w, h]."""
    if isinstance(v, dict) and "effective" in v:
        eff, req = v.get("effective"), v.get("requested")
        return size_text(eff) + (f" (requested {size_text(req)})" if req and list(req) != list(eff) else "")
    return size_text(v) if isinstance(v, (list, tuple)) else plain_text(v)


def _schedule_value_text(v: Any) -> str:
    """A schedule knob's value: the parameter table's dict, or a schedule name ("static:2.5")."""
    if isinstance(v, dict):
        return schedule_text(v)
    return schedule_text({"name": v}) if isinstance(v, str) else plain_text(v)


def _parts_text(v: Any) -> str:
    """A knob of several named parts ({"transformer": "qfloat8", "text_encoder": None}), the set ones."""
    if isinstance(v, dict):
        return ", ".join(f"{k.replace('_', ' ')} {x}" for k, x in v.items() if x) or "none"
    return plain_text(v)


def _quoted_text(v: Any) -> str:
    """Text whose edges matter (a prompt): quotes show leading/trailing spaces and flags."""
    return repr(v) if isinstance(v, str) else plain_text(v)


# The formats a knob's `text` (parity.knobs) names.
TEXT_FORMATS = {"plain": plain_text, "size": _size_value_text, "schedule": _schedule_value_text,
                "parts": _parts_text, "quoted": _quoted_text}


def knob_text(knob: str, v: Any) -> str:
    """One knob's value as people read it, in the format its registry entry names."""
    if v is None or v == [] or v == "":
        return unset_text(knob)  # what no value means, per knob (never "None")
    return TEXT_FORMATS[text_format(knob)](v)


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
