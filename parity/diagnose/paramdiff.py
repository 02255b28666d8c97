"""Parameter diff between a preview's render spec and the inference spec under test, over the fixed knob
vocabulary (parity.spec.KNOBS), plus the knob -> RenderSpec-fields mapping used to align one knob at a time.

Pure Python (no torch): the schedule row recomputes mu and the nominal sigma table from the published formulas
(aitk-flux2-previews.md section C step 9 and C.1) unless the engine's own sigmas are passed in.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from parity.engine.schedule import aitk_mu  # torch-free at import; the one AI Toolkit mu
from parity.family import family
from parity.job.sizes import effective_size
from parity.spec import IRREDUCIBLE_KNOBS, KNOBS, RenderSpec, ResolvedSpec

# Which RenderSpec fields each knob covers. `schedule` covers the whole sampling loop: the sigma schedule (mu/shift)
# plus the semantics (AI Toolkit's loop vs stock diffusers: timestep rounding, Euler precision) and the per-detail
# numerics switches -- one "scheduler/sampler/shift" cause as users report it (peers-metrics-reports.md 3.3).
# `text_encoder` (the encoder's identity) is not part of a RenderSpec: it is diffed but cannot be re-rendered.
KNOB_FIELDS: dict[str, tuple[str, ...]] = {
    "steps": ("sample_steps",),
    "schedule": ("schedule", "semantics", "numerics"),
    "guidance": ("guidance_scale",),
    "resolution": ("width", "height"),
    "seed": ("seed",),
    "generator": ("generator",),
    "prompt": ("prompt",),
    "lora_scale": ("network_multiplier",),
    "lora_application": ("lora_application",),
    "checkpoint": ("lora_path",),
    "quantization": ("quantize", "quantize_te"),
    "dtype": ("dtype",),
    "text_encoder": (),
    "reference_images": ("control_images",),
    "negative_prompt": ("negative_prompt",),
}
assert tuple(KNOB_FIELDS) == KNOBS, "KNOB_FIELDS must cover parity.spec.KNOBS in order"
RENDERABLE_KNOBS: tuple[str, ...] = tuple(k for k in KNOBS if KNOB_FIELDS[k])

# When one knob's row draws on several fields with different sources, show the most specific one.
_SOURCE_PRECEDENCE = ("override", "flag", "request", "item", "carry", "walk", "floor", "block", "profile", "case",
                      "job", "default")


# ----------------------------------------------------------------------------------------------------------------
# Schedule numbers (pure Python, float64).


def image_tokens(width: int, height: int) -> int:
    w, h = effective_size(width, height)
    return (w // 16) * (h // 16)


def empirical_mu(tokens: int, steps: int) -> float:
    """diffusers' / BFL's `compute_empirical_mu` (pipeline_flux2.py L159-174), re-derived here so the parameter
    table needs neither torch nor diffusers (the engine renders with diffusers' own function): above 4300 tokens the FLUX.1 line
    (0.00016927 L + 0.45666666); at or below, linear in the step count between the values of two fitted lines at
    10 and 200 steps."""
    at_200 = 0.00016927 * tokens + 0.45666666
    if tokens > 4300:
        return at_200
    at_10 = 8.73809524e-05 * tokens + 1.89833333
    slope = (at_200 - at_10) / 190.0
    return at_200 + slope * (steps - 200)


def schedule_mu(schedule: str, width: int, height: int, steps: int) -> float:
    tokens = image_tokens(width, height)
    if schedule == "aitk":
        return aitk_mu(tokens)
    if schedule == "empirical":
        return empirical_mu(tokens, steps)
    if schedule.startswith("static:"):
        return math.log(float(schedule.split(":", 1)[1]))
    raise ValueError(f"unknown schedule {schedule!r}")


def nominal_sigmas(mu: float, steps: int) -> list[float]:
    """N+1 sigmas ending in 0: `e^mu / (e^mu + (1/t - 1))` on `t = linspace(1, 0, N+1)` (AI Toolkit, section C
    step 9). diffusers uses the same grid (its `linspace(1, 1/N, N)` plus the appended terminal 0) with its own mu."""
    e = math.exp(mu)
    out = []
    for k in range(steps + 1):
        t = 1.0 - k / steps
        out.append(0.0 if t <= 0 else e / (e + (1.0 / t - 1.0)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Knob values and the diff.


def _has_lora(spec: RenderSpec) -> bool:
    return spec.lora_path is not None


def _same_path(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return os.path.realpath(a) == os.path.realpath(b)


def knob_value(spec: RenderSpec, knob: str, *, sigmas: Sequence[float] | None = None,
               extra: Mapping[str, Any] | None = None) -> Any:
    """The value shown for one knob (JSON-friendly). `sigmas` are the engine's for this spec when available;
    `extra` carries values a RenderSpec does not hold (e.g. {"text_encoder": "Mistral-Small-3.1-24B-..."})."""
    if knob == "steps":
        return spec.sample_steps
    if knob == "schedule":
        w, h = effective_size(spec.width, spec.height)
        mu = schedule_mu(spec.schedule, spec.width, spec.height, spec.sample_steps)
        table = list(sigmas) if sigmas is not None else nominal_sigmas(mu, spec.sample_steps)
        return {"name": spec.schedule, "semantics": spec.semantics, "numerics": dict(spec.numerics),
                "mu": round(mu, 6), "shift": round(math.exp(mu), 6), "tokens": (w // 16) * (h // 16),
                "sigmas": [round(float(s), 6) for s in table],
                "sigmas_from": "engine" if sigmas is not None else "formula"}
    if knob == "guidance":
        return spec.guidance_scale
    if knob == "resolution":
        return {"requested": [spec.width, spec.height], "effective": list(effective_size(spec.width, spec.height))}
    if knob == "seed":
        return spec.seed
    if knob == "generator":
        return spec.generator
    if knob == "prompt":
        return spec.prompt
    if knob == "lora_scale":
        return spec.network_multiplier if _has_lora(spec) else None
    if knob == "lora_application":
        return spec.lora_application if _has_lora(spec) else None
    if knob == "checkpoint":
        return spec.lora_path
    if knob == "quantization":
        return {"transformer": spec.quantize, "text_encoder": spec.quantize_te}
    if knob == "dtype":
        return spec.dtype
    if knob == "text_encoder":
        return (extra or {}).get("text_encoder")
    if knob == "reference_images":
        return list(spec.control_images)
    if knob == "negative_prompt":
        return spec.negative_prompt if uses_negative_prompt(spec) else None
    raise KeyError(f"unknown knob {knob!r}")


def uses_negative_prompt(spec: RenderSpec) -> bool:
    """Only true CFG reads the negative prompt: a [klein] base model with guidance_scale > 1 (src/pipeline.py
    L298-302); FLUX.2-dev is guidance-distilled and encodes it for nothing."""
    return family(spec.arch).true_cfg and spec.guidance_scale > 1.0


def knob_differs(preview: RenderSpec, inference: RenderSpec, knob: str, *,
                 preview_extra: Mapping[str, Any] | None = None,
                 inference_extra: Mapping[str, Any] | None = None) -> bool:
    """Whether `knob` differs in a way that can change pixels.

    - resolution compares the effective (floored-to-16) sizes: 1000 and 992 render the same image;
    - lora_scale and lora_application only matter when both sides apply a LoRA (a missing LoRA is `checkpoint`);
    - schedule compares the schedule name, semantics and numerics switches, not the sigma table, which also moves
      with steps and size (those are their own knobs);
    - text_encoder differs only when both identities are known and differ."""
    if knob == "resolution":
        return effective_size(preview.width, preview.height) != effective_size(inference.width, inference.height)
    if knob in ("lora_scale", "lora_application"):
        if not (_has_lora(preview) and _has_lora(inference)):
            return False
        field_ = KNOB_FIELDS[knob][0]
        return getattr(preview, field_) != getattr(inference, field_)
    if knob == "checkpoint":
        return not _same_path(preview.lora_path, inference.lora_path)
    if knob == "negative_prompt":
        return knob_value(preview, knob) != knob_value(inference, knob)
    if knob == "reference_images":
        a, b = preview.control_images, inference.control_images
        return len(a) != len(b) or not all(_same_path(x, y) for x, y in zip(a, b))
    if knob == "text_encoder":
        a = (preview_extra or {}).get("text_encoder")
        b = (inference_extra or {}).get("text_encoder")
        return a is not None and b is not None and a != b
    return any(getattr(preview, f) != getattr(inference, f) for f in KNOB_FIELDS[knob])


def differing_knobs(preview: RenderSpec, inference: RenderSpec) -> list[str]:
    """Renderable knobs (in KNOBS order) on which the two specs differ."""
    return [k for k in RENDERABLE_KNOBS if knob_differs(preview, inference, k)]


def align(inference_spec: RenderSpec, preview_spec: RenderSpec, knob: str) -> RenderSpec:
    """`inference_spec` with `knob` set to the preview's value (all fields the knob covers)."""
    fields_ = KNOB_FIELDS.get(knob)
    if fields_ is None:
        raise KeyError(f"unknown knob {knob!r}; expected one of {', '.join(KNOBS)}")
    if not fields_:
        raise ValueError(f"knob {knob!r} is not part of a render spec and cannot be aligned by re-rendering")
    return inference_spec.with_(**{f: getattr(preview_spec, f) for f in fields_})


def align_many(inference_spec: RenderSpec, preview_spec: RenderSpec, knobs: Sequence[str]) -> RenderSpec:
    spec = inference_spec
    for k in knobs:
        spec = align(spec, preview_spec, k)
    return spec


def _row_source(resolved: ResolvedSpec, knob: str) -> str:
    fields_ = KNOB_FIELDS[knob]
    if not fields_:
        return "case"
    srcs = {resolved.source(f) for f in fields_}
    for s in _SOURCE_PRECEDENCE:
        if s in srcs:
            return s
    return sorted(srcs)[0]


@dataclass
class KnobRow:
    knob: str
    preview: dict[str, Any]     # {"value", "source"}
    inference: dict[str, Any]   # {"value", "source"}
    differs: bool

    def to_dict(self) -> dict[str, Any]:
        return {"knob": self.knob, "preview": self.preview, "inference": self.inference, "differs": self.differs}


@dataclass
class ParamDiff:
    rows: list[KnobRow]
    irreducible: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mismatches(self) -> list[str]:
        return [r.knob for r in self.rows if r.differs]

    def row(self, knob: str) -> KnobRow:
        for r in self.rows:
            if r.knob == knob:
                return r
        raise KeyError(knob)

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": {
                "preview": {r.knob: r.preview["value"] for r in self.rows},
                "inference": {r.knob: r.inference["value"] for r in self.rows},
            },
            "table": [r.to_dict() for r in self.rows],
            "mismatches": self.mismatches,
            "irreducible": list(self.irreducible),
        }


def irreducible_rows(preview: RenderSpec, *, lora_save_dtype: str | None = None,
                     earlier_merges: int | None = None, preview_hardware: str | None = None,
                     inference_hardware: str | None = None) -> list[dict[str, Any]]:
    """Differences no re-render removes (parity.spec.IRREDUCIBLE_KNOBS), each {knob, preview, inference, note}.

    - lora_precision: AI Toolkit samples with the live fp32 LoRA weights (network_mixins.py L274-348); a re-render
      can only load the file, saved in the job's save dtype. Reported when that dtype is not fp32.
    - merge_history: with an unquantized base AI Toolkit merges the LoRA in fp32, casts to bf16 and un-merges after
      each sample round (network_mixins.py L371-462), so later previews ran on slightly drifted base weights.
      Reported for merged previews with earlier merge rounds (`earlier_merges` > 0).
    - hardware: the preview's device/kernels vs ours, when both are known and differ (or the preview's is unknown
      but ours is given)."""
    out: list[dict[str, Any]] = []
    if _has_lora(preview) and lora_save_dtype is not None and lora_save_dtype.lower() not in ("fp32", "float32"):
        out.append({"knob": "lora_precision", "preview": "fp32 (live training weights)",
                    "inference": f"{lora_save_dtype} (saved file)",
                    "note": "the LoRA file is saved in a lower precision than the weights the preview sampled with"})
    if _has_lora(preview) and preview.lora_application == "merged" and earlier_merges:
        out.append({"knob": "merge_history", "preview": f"{earlier_merges} earlier merge/un-merge round(s)",
                    "inference": "pristine base weights",
                    "note": "bf16 merge/un-merge round trips drift the base weights slightly between previews"})
    row = hardware_row(preview_hardware, inference_hardware)
    if row is not None:
        out.append(row)
    assert all(r["knob"] in IRREDUCIBLE_KNOBS for r in out)
    return out


def hardware_row(preview_hardware: str | None, inference_hardware: str | None) -> dict[str, Any] | None:
    """The `hardware` irreducible row, or None when ours is not given or both name the same device (compared
    case-insensitively). An unknown preview device (AI Toolkit does not record it; previews render on the training
    device, in practice a CUDA GPU) differs from any device we name."""
    if inference_hardware is None:
        return None
    if preview_hardware is not None and preview_hardware.strip().lower() == inference_hardware.strip().lower():
        return None
    return {"knob": "hardware", "preview": preview_hardware or "training device (unknown)",
            "inference": inference_hardware, "note": "different devices or kernels round differently"}


def param_diff(preview: ResolvedSpec, inference: ResolvedSpec, *,
               preview_sigmas: Sequence[float] | None = None, inference_sigmas: Sequence[float] | None = None,
               preview_extra: Mapping[str, Any] | None = None, inference_extra: Mapping[str, Any] | None = None,
               lora_save_dtype: str | None = None, earlier_merges: int | None = None,
               preview_hardware: str | None = None, inference_hardware: str | None = None,
               preview_requested: tuple[int, int] | None = None) -> ParamDiff:
    """The per-item parameter table over KNOBS plus the irreducible rows. `preview_requested` is the size the job
    asked for before AI Toolkit's floors (PreviewItem.requested_width/height); the inference side's comes from
    InferenceResolved.requested_size."""
    rows = []
    for knob in KNOBS:
        pv = knob_value(preview.spec, knob, sigmas=preview_sigmas, extra=preview_extra)
        iv = knob_value(inference.spec, knob, sigmas=inference_sigmas, extra=inference_extra)
        if knob == "resolution":
            req = getattr(inference, "requested_size", None)
            if req is not None:
                iv["requested"] = list(req)
            if preview_requested is not None:
                pv["requested"] = list(preview_requested)
        src_p = _row_source(preview, knob) if KNOB_FIELDS[knob] else (preview_extra or {}).get("text_encoder_source", "case")
        src_i = _row_source(inference, knob) if KNOB_FIELDS[knob] else (inference_extra or {}).get("text_encoder_source", "case")
        rows.append(KnobRow(
            knob=knob,
            preview={"value": pv, "source": src_p},
            inference={"value": iv, "source": src_i},
            differs=knob_differs(preview.spec, inference.spec, knob,
                                 preview_extra=preview_extra, inference_extra=inference_extra),
        ))
    irr = irreducible_rows(preview.spec, lora_save_dtype=lora_save_dtype, earlier_merges=earlier_merges,
                           preview_hardware=preview_hardware, inference_hardware=inference_hardware)
    return ParamDiff(rows=rows, irreducible=irr)
