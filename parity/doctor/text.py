"""The doctor's human-readable report (the JSON form is DoctorReport.to_dict)."""

from __future__ import annotations

from parity.engine.resources import GIB

_STATUS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def _gib(n: float) -> str:
    from parity.engine.resources import gib

    return gib(n)


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _duration(s: float) -> str:
    if s < 0.1:
        return f"{s * 1000:.1f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _header(report) -> list[str]:
    d, v = report.environment.device, report.environment.versions
    mem = f"{d.memory_bytes / 1e9:.0f} GB" if d.kind == "cuda" else f"{d.memory_bytes / GIB:.0f} GiB RAM"
    vers = ", ".join(f"{k} {v[k]}" for k in ("torch", "cuda", "diffusers", "transformers", "optimum.quanto") if k in v)
    return [f"device: {d.name} ({mem}, {d.source})", f"versions: {vers}"]


def _checks(report) -> list[str]:
    checks = report.environment.checks + report.checks
    width = max((len(c.name) for c in checks), default=0)
    lines = ["checks:"]
    for c in checks:
        where = f"  [{c.where}]" if c.where and c.status != "ok" else ""
        lines.append(f"  {_STATUS.get(c.status, c.status)}  {c.name.ljust(width)}  {c.detail}{where}")
    return lines


def _components(p) -> list[str]:
    lines = [f"  {'component':<13} {'params':>9} {'weights':>10}  precision"]
    for c in p.components:
        lines.append(f"  {c.name:<13} {_params(c.params):>9} {_gib(c.weight_bytes):>10}  {c.precision}")
    return lines


def _alternatives(p) -> str:
    parts = []
    for a in p.alternatives:
        by_mode: dict[str, list[str]] = {}
        for f in a["fits_on"]:
            by_mode.setdefault(f["mode"], []).append(f"{f['card']} {f['memory_gb']:g} GB")
        where = "; ".join(f"{m} on {', '.join(c)}" for m, c in by_mode.items()) or "no listed card"
        knob = " (changes the quantization knob vs the previews)" if a["changes_quantization_knob"] else ""
        parts.append(f"    {a['precision']}{knob}: {where}")
    return "\n".join(["  would fit:", *parts]) if parts else ""


def _time(t: dict) -> str:
    if "unknown" in t:
        return f"  time per render: unknown ({t['unknown']})"
    if "measured" in t:
        return (f"  time per render: {_duration(t['s_per_item'])} ({_duration(t['s_per_step'])}/step x "
                f"{t['mean_steps']:g} steps, measured: {t['measured']}); run {_duration(t['s_run'])}")
    head = f"  time: {t['flops_per_step'] / 1e12:.3g} TFLOP/step x {t['mean_steps']:g} steps"
    if "s_per_item" not in t:
        return f"{head}; {t.get('note', '')}"
    moves = t["s_offload_moves_per_render"]
    return (f"{head}, at {t['assumed_mfu']:.0%} of {t['peak_tflops']:.3g} TFLOP/s ({t['peak_source']}): "
            f"{_duration(t['s_per_step'])}/step, {_duration(t['s_per_item'])}/item"
            + (f" (incl. {_duration(moves)} offload moves)" if moves else "")
            + f"; run {_duration(t['s_run'])}, with diagnosis (worst, +{t['diagnosis_renders_worst']} renders) "
              f"{_duration(t['s_run_with_diagnosis_worst'])}")


def _plan(p) -> list[str]:
    s = p.shape
    prec = s.dtype + (f" + {s.quantize} transformer" if s.quantize else "") + \
        (f" + {s.quantize_te} text encoder" if s.quantize_te else "")
    lora = f", LoRA {s.lora_application}" if s.lora_params else ""
    lines = [f"case {p.case}: {p.items} items, up to {s.width}x{s.height}, {prec}{lora}  (base {p.base_model})"]
    if p.planned_from:
        lines.append(f"  {p.planned_from}")
    lines += _components(p)
    plan = p.plan
    verdict = "fits" if plan.fits else f"DOES NOT FIT: {plan.overflow}"
    lines.append(f"  offload plan: {plan.describe()} -> {verdict}")
    lines.append(f"  host memory at peak: {_gib(p.host_bytes)}")
    alt = _alternatives(p)
    if alt and not plan.fits:
        lines.append(alt)
    lines.append(_time(p.time))
    return lines


def render_text(report) -> str:
    lines = ["parity doctor", *_header(report), *_checks(report)]
    for p in report.plans:
        lines += _plan(p)
    bad = [c for c in report.environment.checks + report.checks if c.status == "fail"]
    unfit = [p.case for p in report.plans if not p.plan.fits]
    if report.ready:
        lines.append("verdict: READY")
    else:
        why = [f"{len(bad)} failed check(s)"] * bool(bad) + [f"will not fit: {', '.join(unfit)}"] * bool(unfit)
        lines.append(f"verdict: NOT READY ({'; '.join(why)})")
    return "\n".join(lines)
