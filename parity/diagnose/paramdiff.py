"""Parameter diff between a preview's render spec and the inference spec under test, over the knobs of the knob
registry (parity.knobs: which settings each knob covers, the value it shows, when it differs), plus aligning one
knob at a time.

Pure Python (no torch): the schedule row recomputes mu and the nominal sigma table from the published formulas
(parity.sigmas) unless the engine's own sigmas are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from parity import knobs
from parity.spec import RenderSpec, ResolvedSpec

# When one knob's row draws on several fields with different sources, show the most specific one.
_SOURCE_PRECEDENCE = ("override", "flag", "request", "item", "carry", "walk", "floor", "block", "profile", "case",
                      "job", "default")


def knob_value(spec: RenderSpec, knob: str, *, sigmas: Sequence[float] | None = None,
               extra: Mapping[str, Any] | None = None) -> Any:
    """The value shown for one knob (JSON-friendly). `sigmas` are the engine's for this spec when available;
    `extra` carries values a RenderSpec does not hold (e.g. {"text_encoder": "Mistral-Small-3.1-24B-..."})."""
    if knob not in knobs.knob_names():
        raise KeyError(f"unknown knob {knob!r}")
    return knobs.knob(knob).value(spec, sigmas, extra)


def knob_differs(preview: RenderSpec, inference: RenderSpec, knob: str, *,
                 preview_extra: Mapping[str, Any] | None = None,
                 inference_extra: Mapping[str, Any] | None = None) -> bool:
    """Whether `knob` differs in a way that can change pixels (each knob's rule in parity.knobs: effective sizes,
    LoRA settings only when both sides apply a LoRA, the schedule by name, semantics and numerics, not by its sigma
    table; the text encoder only when both identities are known)."""
    return knobs.knob(knob).differ(preview, inference, preview_extra, inference_extra)


def differing_knobs(preview: RenderSpec, inference: RenderSpec) -> list[str]:
    """Renderable knobs (in table order) on which the two specs differ."""
    return [k for k in knobs.renderable_knobs() if knob_differs(preview, inference, k)]


def align(inference_spec: RenderSpec, preview_spec: RenderSpec, knob: str) -> RenderSpec:
    """`inference_spec` with `knob` set to the preview's value (all fields the knob covers)."""
    k = knobs.KNOBS_TABLE.get(knob)
    if k is None or k.irreducible:
        raise KeyError(f"unknown knob {knob!r}; expected one of {', '.join(knobs.knob_names())}")
    if not k.settings:
        raise ValueError(f"knob {knob!r} is not part of a render spec and cannot be aligned by re-rendering")
    return knobs.with_settings(inference_spec, **{f: preview_spec.value(f, knobs.setting(f).default) for f in k.settings})


def align_many(inference_spec: RenderSpec, preview_spec: RenderSpec, names: Sequence[str]) -> RenderSpec:
    spec = inference_spec
    for k in names:
        spec = align(spec, preview_spec, k)
    return spec


def _row_source(resolved: ResolvedSpec, knob: str, extra: Mapping[str, Any] | None) -> str:
    """Where a row's value came from; a knob outside the spec (the text encoder) says so in `extra`."""
    fields_ = knobs.knob(knob).settings
    if not fields_:
        return (extra or {}).get("text_encoder_source", "case")
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
    """Differences no re-render removes (the registry's irreducible knobs), each {knob, preview, inference, note}.

    - lora_precision: AI Toolkit samples with the live fp32 LoRA weights (network_mixins.py L274-348); a re-render
      can only load the file, saved in the job's save dtype. Reported when that dtype is not fp32.
    - merge_history: with an unquantized base AI Toolkit merges the LoRA in fp32, casts to bf16 and un-merges after
      each sample round (network_mixins.py L371-462), so later previews ran on slightly drifted base weights.
      Reported for merged previews with earlier merge rounds (`earlier_merges` > 0).
    - hardware: the preview's device/kernels vs ours, when both are known and differ (or the preview's is unknown
      but ours is given)."""
    out: list[dict[str, Any]] = []
    if knobs.has_lora(preview) and lora_save_dtype is not None and lora_save_dtype.lower() not in ("fp32", "float32"):
        out.append({"knob": "lora_precision", "preview": "fp32 (live training weights)",
                    "inference": f"{lora_save_dtype} (saved file)",
                    "note": "the LoRA file is saved in a lower precision than the weights the preview sampled with"})
    if knobs.has_lora(preview) and preview.lora_application == "merged" and earlier_merges:
        out.append({"knob": "merge_history", "preview": f"{earlier_merges} earlier merge/un-merge round(s)",
                    "inference": "pristine base weights",
                    "note": "bf16 merge/un-merge round trips drift the base weights slightly between previews"})
    row = hardware_row(preview_hardware, inference_hardware)
    if row is not None:
        out.append(row)
    assert all(r["knob"] in knobs.irreducible_names() for r in out)
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
    """The per-item parameter table over the registry's knobs plus the irreducible rows. `preview_requested` is
    the size the job asked for before AI Toolkit's floors (PreviewItem.requested_width/height); the inference side's comes from
    InferenceResolved.requested_size."""
    rows = []
    for knob in knobs.knob_names():
        pv = knob_value(preview.spec, knob, sigmas=preview_sigmas, extra=preview_extra)
        iv = knob_value(inference.spec, knob, sigmas=inference_sigmas, extra=inference_extra)
        if knob == "resolution":
            req = getattr(inference, "requested_size", None)
            if req is not None:
                iv["requested"] = list(req)
            if preview_requested is not None:
                pv["requested"] = list(preview_requested)
        src_p, src_i = _row_source(preview, knob, preview_extra), _row_source(inference, knob, inference_extra)
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
