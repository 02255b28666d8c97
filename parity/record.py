"""The item record: one finished item of a run, exactly as results.json holds it (docs/results-schema.md).

Shared vocabulary, like parity.spec: the runner builds `ItemRecord`s, the results store validates
(`ItemRecord.from_dict`) and journals (`to_dict`) them, the report and the pytest plugin read them. The field
names here are the contract: docs/results-schema.md's `items[]` table is checked against `ItemRecord`'s fields by
a test, and the HTML view takes its fields from `VIEW_FIELDS`, which must all be record fields.

Torch-free and report-free (the report imports it, not the other way round).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.errors import InputFileError
from parity.jsonio import number
from parity.tier import ERROR, meets_gate, tier_names


@dataclass
class Cause:
    """One ranked cause: aligning `knob` (preview value vs inference value) gives `ssim_aligned`."""

    knob: str
    value_preview: Any = None
    value_inference: Any = None
    ssim_aligned: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys are kept (results written by later tools)

    def to_dict(self) -> dict[str, Any]:
        return {"knob": self.knob, "value_preview": self.value_preview, "value_inference": self.value_inference,
                "ssim_aligned": self.ssim_aligned, **self.extra}

    @classmethod
    def from_dict(cls, d: Any, label: str, where: str | Path | None) -> "Cause":
        check_type(d, dict, f"{label}: a cause", where)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(knob=str(d.get("knob", "")), value_preview=d.get("value_preview"),
                   value_inference=d.get("value_inference"), ssim_aligned=number(d.get("ssim_aligned")),
                   extra={k: v for k, v in d.items() if k not in known})


@dataclass
class Schedule:
    """The sigma tables of both sides ((steps + 1) sigmas each) and their mu, when known; the report shows the
    table when they differ."""

    preview: list[float]
    inference: list[float]
    mu_preview: float | None = None
    mu_inference: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"preview": list(self.preview), "inference": list(self.inference)}
        d.update({k: v for k, v in (("mu_preview", self.mu_preview), ("mu_inference", self.mu_inference))
                  if v is not None})
        return d

    @classmethod
    def from_dict(cls, d: Any, label: str, where: str | Path | None) -> "Schedule":
        check_type(d, dict, f"{label}: 'schedule'", where)
        for side in ("preview", "inference"):
            check_type(d.get(side), list, f"{label}: schedule.{side}", where)
        return cls(preview=list(d["preview"]), inference=list(d["inference"]),
                   mu_preview=d.get("mu_preview"), mu_inference=d.get("mu_inference"))


@dataclass
class Determinism:
    """The determinism guard's finding: the same spec rendered twice gave identical bytes, or differed by up to
    `max_abs` levels (None when even the shapes differed)."""

    checked: bool
    identical: bool
    max_abs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "identical": self.identical, "max_abs": self.max_abs}

    @classmethod
    def from_dict(cls, d: Any, label: str, where: str | Path | None) -> "Determinism":
        check_type(d, dict, f"{label}: 'determinism'", where)
        return cls(checked=bool(d.get("checked")), identical=bool(d.get("identical")), max_abs=d.get("max_abs"))


@dataclass
class RenderSource:
    """Where the compared render came from: parity's reference engine (`engine`), a folder or manifest of the
    user's renders (`folder` | `manifest`: `location` the folder or manifest, `file` the image), or a reference
    inference server (`endpoint`: `location` its URL without credentials, `request_id`, `file`)."""

    kind: str = "engine"
    location: str | None = None
    request_id: str | None = None
    file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the server's `seed` (JSON as it gave it), later keys

    @property
    def external(self) -> bool:
        """A render from the user's own stack (docs/your-own-stack.md), not parity's engine."""
        return self.kind != "engine"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        d.update({k: v for k, v in (("location", self.location), ("request_id", self.request_id),
                                    ("file", self.file)) if v is not None})
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: Any, label: str, where: str | Path | None) -> "RenderSource":
        check_type(d, dict, f"{label}: 'source'", where)
        known = ("location", "request_id", "file")
        for key in ("kind", *known):
            if d.get(key) is not None:
                check_type(d[key], str, f"{label}: source.{key}", where)
        return cls(kind=d.get("kind") or "engine", **{k: d.get(k) for k in known},
                   extra={k: v for k, v in d.items() if k not in ("kind", *known)})


@dataclass
class NoiseFloorRecord:
    """The noise floor measured for an irreducible-only DRIFT item (parity.diagnose.floor): render vs noise twin,
    worst of `draws`, and whether it lifted the tier; or the `error` when the measurement failed."""

    tier_before: str                                            # the item's tier before the measurement
    tier: str                                                   # ... and after it
    knobs: list[str] = field(default_factory=list)              # the irreducible knobs sampled
    applied: bool = False                                       # the tier was lifted (NEAR: within the floor)
    reason: str = ""
    draws: list[float] = field(default_factory=list)            # SSIM-Y of each twin
    twin: list[dict[str, Any]] = field(default_factory=list)    # [{"knob", "how"}]
    unmeasured: list[dict[str, Any]] = field(default_factory=list)  # [{"knob", "why"}]
    metrics: dict[str, float] | None = None                     # render vs twin: ssim_y, window_density, max_abs, mae
    ratio: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)         # keys written by later tools
    # read from a file: its keys in its order, written back as they were (a file written before `draws` existed)
    read_keys: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:   # the measurement failed: what is known, and why
            d = {"knobs": list(self.knobs), "tier_before": self.tier_before, "tier": self.tier,
                 "applied": self.applied, "error": self.error}
        else:
            d = {"draws": list(self.draws), "knobs": list(self.knobs), "twin": list(self.twin),
                 "unmeasured": list(self.unmeasured), "metrics": self.metrics, "ratio": self.ratio,
                 "tier_before": self.tier_before, "tier": self.tier, "applied": self.applied, "reason": self.reason}
        if self.read_keys is not None:
            d = {k: d[k] for k in self.read_keys if k in d}
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: Any, label: str, where: str | Path | None) -> "NoiseFloorRecord":
        check_type(d, dict, f"{label}: 'noise_floor'", where)
        for key in ("knobs", "draws", "twin", "unmeasured"):
            check_type(d.get(key) or [], list, f"{label}: noise_floor.{key}", where)
        err = d.get("error")
        return cls(knobs=list(d.get("knobs") or []), tier_before=str(d.get("tier_before") or ""),
                   tier=str(d.get("tier") or ""), applied=bool(d.get("applied")), reason=str(d.get("reason") or ""),
                   draws=list(d.get("draws") or []), twin=list(d.get("twin") or []),
                   unmeasured=list(d.get("unmeasured") or []), metrics=d.get("metrics"), ratio=d.get("ratio"),
                   error=None if err is None else str(err), extra={k: v for k, v in d.items() if k not in _FLOOR_KEYS},
                   read_keys=tuple(k for k in d if k in _FLOOR_KEYS))


_FLOOR_KEYS = frozenset(("knobs", "tier_before", "tier", "applied", "reason", "draws", "twin", "unmeasured",
                         "metrics", "ratio", "error"))


@dataclass
class SuspectsRecord:
    """The settings the parameter search recovered for an item whose knobs all agree (parity.diagnose.suspects,
    docs/parameter-recovery.md), with its case's spend. What parity reads is typed; the search's trace (`tried`,
    `searches`, `recorded`, scores...) is kept as the search wrote it, in its order, for the report to draw."""

    verdict: str = ""
    explained: bool = False
    best: list[dict[str, Any]] = field(default_factory=list)       # [{"knob", "value", "label", "score", ...}]
    ambiguous: list[dict[str, Any]] = field(default_factory=list)  # two answers that explain equally
    not_searched: bool = False                                     # the budget left was too small to search
    extra_renders: int = 0                                         # renders this item's search cost
    case_renders: int | None = None                                # its case's renders so far
    cost: dict[str, Any] | None = None                             # parity.diagnose.budget.cost_record
    trace: dict[str, Any] = field(default_factory=dict)            # the whole finding as written (key order kept)

    def to_dict(self) -> dict[str, Any]:
        typed = {"verdict": self.verdict, "explained": self.explained, "best": list(self.best),
                 "ambiguous": list(self.ambiguous), "not_searched": self.not_searched,
                 "extra_renders": self.extra_renders}
        d = dict(self.trace)   # the finding's keys as written (an earlier version's file has fewer), then the spend
        d.update({k: v for k, v in typed.items() if k in self.trace or not self.trace})
        d.update({k: v for k, v in (("case_renders", self.case_renders), ("cost", self.cost))
                  if v is not None or k in self.trace})
        return d

    @classmethod
    def from_dict(cls, d: Any, label: str = "an item", where: str | Path | None = None) -> "SuspectsRecord":
        check_type(d, dict, f"{label}: 'suspects'", where)
        for key in ("best", "ambiguous"):
            check_type(d.get(key) or [], list, f"{label}: suspects.{key}", where)
        renders = d.get("extra_renders")
        return cls(verdict=str(d.get("verdict") or ""), explained=bool(d.get("explained")),
                   best=list(d.get("best") or []), ambiguous=list(d.get("ambiguous") or []),
                   not_searched=bool(d.get("not_searched")), extra_renders=renders if isinstance(renders, int) else 0,
                   case_renders=d.get("case_renders"), cost=d.get("cost"), trace=dict(d))


@dataclass
class ItemRecord:
    """One item of results.json. Open-ended sub-objects (metrics by name, params by knob, the comparison's JPEG
    facts, the engine's render facts, the noise-floor and attribution findings) stay plain dicts; their shapes
    are documented in docs/results-schema.md."""

    id: str                                   # "<case>[step<S>-p<I>]", or "<case>[load]" for a case error
    case: str = ""
    step: int | None = None
    index: int | None = None
    prompt: str = ""                          # the preview's processed prompt
    tier: str = ERROR.name
    gate: str | None = None
    passed: bool = False
    expected: str | None = None               # below the gate through differences the case expects (passes)
    reason: str = ""                          # why this tier, in words
    fail_reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)         # non-finite values are floats here
    metric_variants: dict[str, str] = field(default_factory=dict)   # metric name -> exact variant, in words
    jpeg: dict[str, Any] | None = None
    ceiling: dict[str, float] | None = None
    size_mismatch: Any = None                 # None/False, True, or {"render": [w, h], "preview": [w, h]}
    paths: dict[str, Any] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # side -> knob -> {"value", "source"}
    mismatches: list[str] = field(default_factory=list)
    irreducible: list[str] = field(default_factory=list)
    irreducible_details: list[dict[str, Any]] = field(default_factory=list)
    causes: list[Cause] = field(default_factory=list)
    schedule: Schedule | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    # written only when set
    case_file: str | None = None
    case_sha256: str | None = None            # the case file's SHA-256 when the item was planned (parity accept)
    prompt_inference: str | None = None
    render: dict[str, Any] | None = None      # what the engine did: size, sigmas, mu, hashes, LoRA, merge history
    determinism: Determinism | None = None
    nondeterministic: bool | None = None
    noise_floor: NoiseFloorRecord | None = None
    attribution: dict[str, Any] | None = None
    suspects: SuspectsRecord | None = None
    source: RenderSource | None = None        # where the render came from: engine, folder/manifest, endpoint
    explanation: dict[str, Any] | None = None  # an external render: the engine settings that reproduce it
    original_paths: dict[str, Any] | None = None  # a report's copies: where each copied image came from
    notes: list[str] = field(default_factory=list)
    traceback: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # unknown fields of a loaded file, kept as they were

    @property
    def external_render(self) -> bool:
        """The compared render came from the user's own stack (a folder, manifest or endpoint), not parity's engine."""
        return self.source is not None and self.source.external

    @property
    def below_gate(self) -> bool:
        """Failing, or passing only as an expected difference: the items follow-ups (attribution) explain."""
        return not self.passed or bool(self.expected)

    def to_dict(self) -> dict[str, Any]:
        """The results.json item (plain values; non-finite floats are left to parity.jsonio when written)."""
        d: dict[str, Any] = {}
        for name in _FIELD_NAMES:
            v = getattr(self, name)
            if name in _WRITTEN_WHEN_SET and (v is None or v == []):
                continue
            d[name] = _plain(v)
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, item: Any, *, default_gate: str | None = None,
                  where: str | Path | None = None) -> "ItemRecord":
        """Validate and complete one results.json item: missing optional fields get empty values, the tier is
        upper-cased and checked, `gate` defaults to `default_gate` (the run's) and `passed` is derived when absent.
        Raises InputFileError naming `where` for a malformed item (no id, unknown tier or gate, wrong types)."""
        check_type(item, dict, "an item", where)
        iid = item.get("id")
        if not isinstance(iid, str) or not iid:
            raise InputFileError("an item has no string 'id'", where)
        label = f"item {iid!r}"
        values = _typed_fields(item, label, where)
        tier = _tier(item, label, where)
        gate = _gate(item.get("gate") or default_gate, label, where)
        passed = item.get("passed")
        if not isinstance(passed, bool):
            passed = meets_gate(tier, gate) if gate else tier != ERROR.name
        return cls(id=iid, tier=tier, gate=gate, passed=passed, **values,
                   extra={k: v for k, v in item.items() if k not in _KNOWN})


# Optional fields: left out of the file when unset, so records stay as short as what happened to the item.
_WRITTEN_WHEN_SET = ("expected", "case_file", "case_sha256", "prompt_inference", "render", "determinism",
                     "nondeterministic", "noise_floor", "attribution", "suspects", "source", "explanation",
                     "original_paths", "notes",
                     "traceback")

# Fields the HTML report's item view carries (parity.report.html; read by static/report.js).
VIEW_FIELDS = ("id", "case", "step", "index", "prompt", "tier", "gate", "passed", "expected", "metrics",
               "metric_variants", "jpeg", "ceiling", "size_mismatch", "params", "mismatches", "irreducible",
               "irreducible_details", "causes", "schedule", "timings", "error", "reason", "noise_floor", "source",
               "explanation", "suspects")

_MAX_LABEL = 2**53  # step and prompt index: exact JSON integers

# (field, type, empty value) of the plain-container fields a loaded item is checked for
_CONTAINERS: tuple[tuple[str, type, Any], ...] = (
    ("case", str, ""), ("prompt", str, ""), ("paths", dict, {}), ("metrics", dict, {}), ("metric_variants", dict, {}),
    ("params", dict, {}), ("mismatches", list, []), ("irreducible", list, []), ("irreducible_details", list, []),
    ("fail_reasons", list, []), ("timings", dict, {}), ("notes", list, []))


def _typed_fields(item: dict[str, Any], label: str, where: str | Path | None) -> dict[str, Any]:
    """Every field but id/tier/gate/passed, checked and completed."""
    out: dict[str, Any] = {}
    for key, typ, empty in _CONTAINERS:
        v = item.get(key)
        out[key] = v if v is not None else copy.copy(empty)
        check_type(out[key], typ, f"{label}: '{key}'", where)
    for key in ("step", "index"):
        v = item.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise InputFileError(f"{label}: '{key}' should be a number", where)
        if v is not None and not abs(v) <= _MAX_LABEL:  # also NaN; a huge int overflows float formatting
            text = repr(v) if len(repr(v)) <= 24 else f"{repr(v)[:12]}... ({len(repr(v))} digits)"
            raise InputFileError(f"{label}: '{key}' {text} is outside -2**53..2**53", where)
        out[key] = v
    out["paths"] = _paths(out["paths"], label, where)
    out["metrics"] = {str(k): number(v) for k, v in out["metrics"].items()}
    out["params"] = _params(out["params"], label, where)
    check_type(item.get("causes") or [], list, f"{label}: 'causes'", where)
    out["causes"] = [Cause.from_dict(c, label, where) for c in item.get("causes") or []]
    out["schedule"] = Schedule.from_dict(item["schedule"], label, where) if item.get("schedule") else None
    out["determinism"] = (Determinism.from_dict(item["determinism"], label, where)
                          if item.get("determinism") is not None else None)
    err = item.get("error")
    out["error"] = None if err is None else str(err)
    for key in ("reason", "expected", "case_file", "case_sha256", "prompt_inference", "traceback"):
        v = item.get(key)
        out[key] = v if v is None or isinstance(v, str) else str(v)
    out["reason"] = out["reason"] or ""
    for key in ("jpeg", "ceiling", "size_mismatch", "render", "nondeterministic", "attribution"):
        out[key] = item.get(key)
    for key, part in (("noise_floor", NoiseFloorRecord), ("suspects", SuspectsRecord), ("source", RenderSource)):
        out[key] = part.from_dict(item[key], label, where) if item.get(key) is not None else None
    for key in ("explanation", "original_paths"):
        if item.get(key) is not None:
            check_type(item[key], dict, f"{label}: '{key}'", where)
        out[key] = item.get(key)
    return out


def _tier(item: dict[str, Any], label: str, where: str | Path | None) -> str:
    tier = item.get("tier")
    if tier is None and item.get("error"):
        tier = ERROR.name
    if not isinstance(tier, str) or tier.upper() not in tier_names():
        raise InputFileError(f"{label}: tier {tier!r} is not one of {', '.join(tier_names())}", where)
    return tier.upper()


def _gate(gate: Any, label: str, where: str | Path | None) -> str | None:
    if gate is None:
        return None
    if not isinstance(gate, str) or gate.upper() not in tier_names():
        raise InputFileError(f"{label}: gate {gate!r} is not one of {', '.join(tier_names())}", where)
    return gate.upper()


def _paths(paths: dict[str, Any], label: str, where: str | Path | None) -> dict[str, Any]:
    """Unset paths dropped; each a string, a list of strings (e.g. thumbnails) or a dict."""
    paths = {k: v for k, v in paths.items() if v is not None}
    for k, v in paths.items():
        if isinstance(v, list):
            for x in v:
                check_type(x, str, f"{label}: paths.{k}[]", where)
        elif not isinstance(v, (str, dict)):
            check_type(v, str, f"{label}: paths.{k}", where)
    return paths


def _params(params: dict[str, Any], label: str, where: str | Path | None) -> dict[str, Any]:
    params = dict(params)
    for side in ("preview", "inference"):
        if params.get(side) is None:
            params[side] = {}
        check_type(params[side], dict, f"{label}: params.{side}", where)
    return params


def check_type(value: Any, types: type | tuple[type, ...], what: str, where: str | Path | None) -> None:
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise InputFileError(f"{what} should be {names}, got {type(value).__name__}", where)


def _plain(v: Any) -> Any:
    """Typed record parts (Cause, Schedule, Determinism, the noise floor, suspects, source) as plain dicts; other values as they are (the writers
    serialise them at once, so the shallow result never outlives a later change to the record)."""
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if type(v) is list:
        return [x.to_dict() if hasattr(x, "to_dict") else x for x in v]
    return v


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ItemRecord) if f.name != "extra")
_KNOWN = frozenset(_FIELD_NAMES) | {"extra"}


def record_fields() -> tuple[str, ...]:
    """The item field names results.json can hold (docs/results-schema.md's `items[]` table lists exactly these)."""
    return tuple(f.name for f in dataclasses.fields(ItemRecord) if f.name != "extra")
