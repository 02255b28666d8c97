"""The knob registry: every setting and every knob declared once; each stage derives what it needs from here.

Two levels:
- a **setting** is one value that decides the pixels: a RenderSpec field, or a registry-only setting that the spec
  carries in its `extra` slot, or a floor the inference settings apply (resolution_divisor). Its row says the
  canonical key and the aliases `--set` / `inference.set` accept, how a value is coerced, the range parity renders,
  the range the reference server's request schema allows, the job-config key AI Toolkit reads it from (and its
  code default), and its column in `parity plan`.
- a **knob** is a name in results.json's parameter table: the settings it covers, the value the table shows, the
  short value attribution shows, when attribution tries it, which engine inputs it feeds (for the hash checks),
  how an inference stack's explanation names it, and the value space parameter recovery searches.

Adding a knob: one `Setting(...)` row (when it is a new value) and one `Knob(...)` row; the job reader, plan,
`--set`, request files, the parameter diff, attribution and the report pick it up. A knob the engine does not
consume yet lives in `RenderSpec.extra` until the engine reads it.

The tables are plain dicts in declaration order (that order is the parameter table's): tests register a throwaway
entry by adding to them. Torch-free.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from parity import coerce, limits
from parity.errors import ConfigError
from parity.family import family
from parity.job.sizes import effective_size
from parity.sigmas import nominal_sigmas, schedule_mu
from parity.spec import DTYPES, LORA_APPLICATIONS, SCHEDULES, SEMANTICS, SPEC_FIELDS, RenderSpec

# ---------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Range:
    """lo..hi (hi None: no upper bound), both inclusive; `note` follows the range in a message."""

    lo: float
    hi: float | None = None
    note: str = ""

    def text(self) -> str:
        return f">= {self.lo:g}" if self.hi is None else f"{self.lo:g}..{self.hi:g}"

    def holds(self, v: float) -> bool:
        return math.isfinite(v) and v >= self.lo and (self.hi is None or v <= self.hi)

    def problem(self, key: str, v: float) -> str | None:
        """None when `v` is inside, else "sample_steps 0 is outside 1..1000"."""
        if self.holds(v):
            return None
        return f"{key} {v} is outside {self.text()}" + (f" {self.note}" if self.note else "")


@dataclass(frozen=True)
class PlanColumn:
    """A column of `parity plan`'s table: the header, the source letter after the value, the longest value shown,
    and a plan-record flag that, when false, shows the value as "random" (a seed AI Toolkit drew itself)."""

    header: str
    sourced: bool = True
    max_chars: int | None = None
    random_unless: str | None = None


@dataclass(frozen=True)
class Setting:
    key: str                              # canonical key: a RenderSpec field or a registry-only setting
    coercer: coerce.Coercer | None        # types a value; None: a spec value `--set` cannot change
    value_type: type = str                # int or float: the number a request file must give
    aliases: tuple[str, ...] = ()         # other names --set and inference.set accept
    limit: Range | None = None            # what parity renders (job reader, --set, inference.set)
    request_limit: Range | None = None    # the reference server's schema for this number in a request file (a
                                          # registry-only setting with one is read from each prompt); None: not read
    config_key: str | None = None         # "sample.width": where AI Toolkit's job config sets it
    default: Any = None                   # AI Toolkit's code default when the config leaves it out
    plan: PlanColumn | None = None        # its column in `parity plan`
    plan_source: bool = False             # its source is listed in the plan record's `sources`
    in_spec: bool = True                  # False: a floor the inference settings apply, not a spec value

    def parse(self, value: Any, where: str | None = None) -> Any:
        """A --set / inference.set / job-config value, typed and within the range parity renders."""
        if self.coercer is None:
            raise ConfigError(f"unknown setting {self.key!r}; valid keys: {', '.join(valid_keys())}", where)
        v = self.coercer(self.key, value, where)
        bad = self.limit.problem(self.key, v) if self.limit is not None and v is not None else None
        if bad:
            raise coerce.bad(self.key, value, f"a value parity can render ({bad})", where)
        return v

    @property
    def config_block(self) -> tuple[str, str] | None:
        """("sample", "width") for config_key "sample.width"."""
        if self.config_key is None:
            return None
        block, _, name = self.config_key.partition(".")
        return block, name


SAMPLE = "sample"   # the job config's sample block (and first_sample, a full sample block of its own)


def _sample(name: str) -> str:
    return f"{SAMPLE}.{name}"


_DTYPE_WORDS = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "half": "fp16", "float": "fp32"}
_SIZE = Range(16, limits.MAX_SIDE, "px (parity's limit per side)")
_SERVER_SIZE = Range(64, 4096)          # request schema limits (src/schemas/request.py, section D.4)

# One row per setting, in RenderSpec field order (the plan's column and source order), then the others.
# Defaults are SampleConfig's code defaults (config_modules.py L80-95), not the UI's.
SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("prompt", coerce.text, plan=PlanColumn("prompt", max_chars=40), plan_source=True),
    Setting("width", coerce.positive_int, int, limit=_SIZE, request_limit=_SERVER_SIZE,
            config_key=_sample("width"), default=512, plan=PlanColumn("width"), plan_source=True),
    Setting("height", coerce.positive_int, int, limit=_SIZE, request_limit=_SERVER_SIZE,
            config_key=_sample("height"), default=512, plan=PlanColumn("height"), plan_source=True),
    Setting("seed", coerce.seed, int, request_limit=Range(-1), config_key=_sample("seed"), default=0,
            plan=PlanColumn("seed", random_unless="seed_reproducible"), plan_source=True),
    Setting("sample_steps", coerce.positive_int, int, ("steps",), limit=Range(1, 1000), request_limit=Range(1, 150),
            config_key=_sample("sample_steps"), default=20, plan=PlanColumn("steps"), plan_source=True),
    Setting("guidance_scale", coerce.as_float, float, ("guidance", "cfg"), limit=Range(-100.0, 100.0),
            request_limit=Range(0.0, 20.0), config_key=_sample("guidance_scale"), default=7,
            plan=PlanColumn("guid"), plan_source=True),
    Setting("lora_path", coerce.path_or_none, aliases=("lora", "checkpoint")),
    Setting("network_multiplier", coerce.as_float, float, ("lora_scale", "multiplier"), limit=Range(-100.0, 100.0),
            request_limit=Range(-2.0, 2.0), config_key=_sample("network_multiplier"), default=1,
            plan=PlanColumn("mult"), plan_source=True),
    Setting("lora_application", coerce.choice(LORA_APPLICATIONS), plan=PlanColumn("lora", sourced=False),
            plan_source=True),
    Setting("dtype", coerce.choice(DTYPES, _DTYPE_WORDS), plan_source=True),
    Setting("quantize", coerce.quantization, aliases=("quantization",), plan_source=True),
    Setting("quantize_te", coerce.quantization),
    Setting("semantics", coerce.choice(SEMANTICS)),
    Setting("schedule", coerce.schedule(SCHEDULES)),
    Setting("generator", coerce.generator),
    Setting("numerics", coerce.numerics),
    Setting("control_images", None),
    Setting("negative_prompt", None, config_key=_sample("neg"), default=False),
    Setting("arch", None),
    Setting("resolution_divisor", coerce.positive_int, int, in_spec=False),
)}


def setting(key: str) -> Setting:
    return SETTINGS[key]


def valid_keys() -> tuple[str, ...]:
    """Every key --set accepts: canonical keys and aliases, sorted."""
    return tuple(sorted({*SETTINGS, *(a for s in SETTINGS.values() for a in s.aliases)}))


def canonical_key(key: str, where: str | None = None) -> str:
    """The setting a --set / inference.set key names; ConfigError listing the valid keys if none."""
    k = key.strip().lower().replace("-", "_")
    if k in SETTINGS:
        return k
    for s in SETTINGS.values():
        if k in s.aliases:
            return s.key
    raise ConfigError(f"unknown setting {key!r}; valid keys: {', '.join(valid_keys())}", where)


def with_settings(spec: RenderSpec, **changes: Any) -> RenderSpec:
    """`spec` with settings changed: RenderSpec fields directly, settings only the registry declares into its
    `extra` slot. A name that is neither is a KeyError, never a silent extra entry."""
    unknown = [k for k in changes if k not in SPEC_FIELDS and k not in SETTINGS]
    if unknown:
        raise KeyError(f"not a setting: {', '.join(unknown)}")
    spec = spec.with_(**{k: v for k, v in changes.items() if k in SPEC_FIELDS})
    extra = {k: v for k, v in changes.items() if k not in SPEC_FIELDS}
    return spec.with_extra(**extra) if extra else spec


def extra_settings() -> list[Setting]:
    """Registry-only settings a RenderSpec carries in `extra` (not fields, not floors)."""
    return [s for s in SETTINGS.values() if s.in_spec and s.key not in SPEC_FIELDS]


def config_settings(block: str) -> list[Setting]:
    """The settings a job-config block (e.g. "sample") sets, in declaration order."""
    return [s for s in SETTINGS.values() if s.config_block is not None and s.config_block[0] == block]


def block_defaults(block: str) -> dict[str, Any]:
    """{config name: code default} of the settings a job-config block sets."""
    return {s.config_block[1]: s.default for s in config_settings(block)}


def range_problem(values: Mapping[str, Any]) -> str | None:
    """None when every given setting value is renderable (the registry's ranges, then the pixel budget), else one
    line saying which value is out of range."""
    for key, v in values.items():
        lim = SETTINGS[key].limit
        bad = lim.problem(key, v) if lim is not None and v is not None else None
        if bad:
            return bad
    return limits.pixels_problem(values.get("width"), values.get("height"))


# ---------------------------------------------------------------------------------------------------- knobs


@dataclass(frozen=True)
class SearchAxis:
    """A knob's value space for parameter recovery (docs/parameter-recovery.md): a grid lo + i * resolution up to
    max(hi, 2 x the recorded value); the screening step max(first_step, round(first_share x recorded)); coarse
    values spread over the plausible range, left out when within `near` of the recorded value (a ratio when
    `ratio`, else an offset); a recovered value within `tolerance` of the truth is right (benchmarks/recovery.py)."""

    lo: float
    hi: float
    resolution: float
    first_step: float
    coarse: tuple[float, ...]
    near: float
    ratio: bool
    tolerance: float
    fit_scale: float          # the image fit's unit (parity.diagnose.fit): a typical change, in log units when `ratio`
    rank: int                 # the order the search takes the knobs in (screening, the fit's coordinates)
    first_share: float = 0.0

    @property
    def integer(self) -> bool:
        """Values are whole numbers (steps)."""
        return float(self.lo).is_integer() and float(self.resolution).is_integer()

    def top(self, recorded: float) -> float:
        return max(self.hi, 2 * abs(recorded))

    def first(self, recorded: float) -> float:
        return max(self.first_step, round(self.first_share * recorded)) if self.first_share else self.first_step


# The engine inputs a knob can feed (`Knob.feeds`), whose hashes the engine reports.
NOISE, EMBEDDING = "noise", "embedding"

# show(spec, sigmas, extra): the value the parameter table shows. `sigmas` are the engine's for this spec when
# known; `extra` carries values a RenderSpec does not hold ({"text_encoder": "Mistral-Small-3.1-24B-..."}).
Show = Callable[[RenderSpec, "Sequence[float] | None", Mapping[str, Any]], Any]
# differs(preview, inference, preview_extra, inference_extra): whether the knob differs in a way that changes pixels
Differs = Callable[[RenderSpec, RenderSpec, Mapping[str, Any], Mapping[str, Any]], bool]


@dataclass(frozen=True)
class StackSetting:
    """How the explanation of an external render names a knob: its place in the verdict and the settings compared."""

    rank: int
    settings: tuple[str, ...]


@dataclass(frozen=True)
class Knob:
    name: str                             # used in results.json and reports
    settings: tuple[str, ...] = ()        # the settings it covers; () = not part of a render spec
    show: Show | None = None              # None: the value of its setting(s)
    compact: Callable[[RenderSpec], Any] | None = None   # attribution's short value; None: as shown
    differs: Differs | None = None        # None: any of its settings differs
    prior: int = 100                      # attribution tries low numbers first when the budget is short
    feeds: tuple[str, ...] = ()           # engine inputs it decides: NOISE, EMBEDDING (the hash checks)
    arithmetic: bool = False              # also changes the transformer's arithmetic: an input hash never rules it out
    irreducible: bool = False             # a difference no re-render removes; reported apart
    unset: str = "none"                   # what no value means, in words
    text: str = "plain"                   # how people read a value: a format of parity.values.TEXT_FORMATS
    stack: StackSetting | None = None     # named by the explanation of an external render
    axis: SearchAxis | None = None        # searched by parameter recovery

    def value(self, spec: RenderSpec, sigmas: Sequence[float] | None = None,
              extra: Mapping[str, Any] | None = None) -> Any:
        if self.show is not None:
            return self.show(spec, sigmas, extra or {})
        vals = {f: spec.value(f, SETTINGS[f].default) for f in self.settings}
        return next(iter(vals.values())) if len(vals) == 1 else vals

    def short(self, spec: RenderSpec) -> Any:
        if not self.settings:
            raise KeyError(self.name)  # not a RenderSpec value: never attributed by re-rendering
        return self.compact(spec) if self.compact is not None else self.value(spec)

    def differ(self, preview: RenderSpec, inference: RenderSpec, preview_extra: Mapping[str, Any] | None = None,
               inference_extra: Mapping[str, Any] | None = None) -> bool:
        if self.differs is not None:
            return self.differs(preview, inference, preview_extra or {}, inference_extra or {})
        return any(preview.value(f, SETTINGS[f].default) != inference.value(f, SETTINGS[f].default)
                   for f in self.settings)


# ---------------------------------------------------------------------------------------------------- per-knob rules


def has_lora(spec: RenderSpec) -> bool:
    return spec.lora_path is not None


def same_path(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return os.path.realpath(a) == os.path.realpath(b)


def uses_negative_prompt(spec: RenderSpec) -> bool:
    """Only true CFG reads the negative prompt: a [klein] base model with guidance_scale > 1 (src/pipeline.py
    L298-302); FLUX.2-dev is guidance-distilled and encodes it for nothing."""
    return family(spec.arch).true_cfg and spec.guidance_scale > 1.0


def _schedule_shown(spec: RenderSpec, sigmas: Sequence[float] | None, extra: Mapping[str, Any]) -> dict[str, Any]:
    w, h = effective_size(spec.width, spec.height)
    mu = schedule_mu(spec.schedule, spec.width, spec.height, spec.sample_steps)
    table = list(sigmas) if sigmas is not None else nominal_sigmas(mu, spec.sample_steps)
    return {"name": spec.schedule, "semantics": spec.semantics, "numerics": dict(spec.numerics),
            "mu": round(mu, 6), "shift": round(math.exp(mu), 6), "tokens": (w // 16) * (h // 16),
            "sigmas": [round(float(s), 6) for s in table],
            "sigmas_from": "engine" if sigmas is not None else "formula"}


def _schedule_compact(spec: RenderSpec) -> str:
    text = spec.schedule if spec.semantics == "aitk" else f"{spec.schedule} ({spec.semantics})"
    if spec.numerics:
        text += " [" + ",".join(f"{k}:{v}" for k, v in spec.numerics) + "]"
    return text


def _resolution_shown(spec: RenderSpec, sigmas: Sequence[float] | None, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {"requested": [spec.width, spec.height], "effective": list(effective_size(spec.width, spec.height))}


def _resolution_compact(spec: RenderSpec) -> str:
    w, h = effective_size(spec.width, spec.height)
    return f"{w}x{h}"


def _resolution_differs(a: RenderSpec, b: RenderSpec, ea: Mapping[str, Any], eb: Mapping[str, Any]) -> bool:
    """Effective (floored-to-16) sizes: 1000 and 992 render the same image."""
    return effective_size(a.width, a.height) != effective_size(b.width, b.height)


def _with_lora(field_: str) -> tuple[Show, Differs]:
    """A LoRA setting: shown only when a LoRA is applied, and differing only when both sides apply one (a missing
    LoRA is the `checkpoint` knob)."""
    def show(spec: RenderSpec, sigmas: Sequence[float] | None, extra: Mapping[str, Any]) -> Any:
        return getattr(spec, field_) if has_lora(spec) else None

    def differs(a: RenderSpec, b: RenderSpec, ea: Mapping[str, Any], eb: Mapping[str, Any]) -> bool:
        return has_lora(a) and has_lora(b) and getattr(a, field_) != getattr(b, field_)
    return show, differs


def _checkpoint_differs(a: RenderSpec, b: RenderSpec, ea: Mapping[str, Any], eb: Mapping[str, Any]) -> bool:
    return not same_path(a.lora_path, b.lora_path)


def _quantization_shown(spec: RenderSpec, sigmas: Sequence[float] | None, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {"transformer": spec.quantize, "text_encoder": spec.quantize_te}


def _text_encoder_shown(spec: RenderSpec, sigmas: Sequence[float] | None, extra: Mapping[str, Any]) -> Any:
    return extra.get("text_encoder")


def _text_encoder_differs(a: RenderSpec, b: RenderSpec, ea: Mapping[str, Any], eb: Mapping[str, Any]) -> bool:
    """Only when both identities are known and differ."""
    x, y = ea.get("text_encoder"), eb.get("text_encoder")
    return x is not None and y is not None and x != y


def _references_shown(spec: RenderSpec, sigmas: Sequence[float] | None, extra: Mapping[str, Any]) -> list[str]:
    return list(spec.control_images)


def _references_differ(a: RenderSpec, b: RenderSpec, ea: Mapping[str, Any], eb: Mapping[str, Any]) -> bool:
    x, y = a.control_images, b.control_images
    return len(x) != len(y) or not all(same_path(p, q) for p, q in zip(x, y))


def _negative_shown(spec: RenderSpec, sigmas: Sequence[float] | None, extra: Mapping[str, Any]) -> str | None:
    return spec.negative_prompt if uses_negative_prompt(spec) else None


def _negative_differs(a: RenderSpec, b: RenderSpec, ea: Mapping[str, Any], eb: Mapping[str, Any]) -> bool:
    return _negative_shown(a, None, ea) != _negative_shown(b, None, eb)


_LORA_SCALE, _LORA_APPLICATION = _with_lora("network_multiplier"), _with_lora("lora_application")

# One row per knob, in the parameter table's order; priors are the large effects of aitk-flux2-previews.md
# section G first (wrong checkpoint, seed, size, generator, schedule), then the moderate ones, then the small ones.
# `schedule` covers the whole sampling loop (sigma schedule, semantics, numerics switches): one
# "scheduler/sampler/shift" cause as users report it (peers-metrics-reports.md 3.3). The initial noise is
# `randn((1, 128, H/16, W/16), generator=seed, dtype)` (section C step 7); the embedding is the text encoder's
# hidden states for the processed prompt, cast to the model dtype (C step 5). Search axes: steps 1-100 on
# integers, guidance 0-15 at 0.1, multiplier 0-2 at 0.01, static shift 0.5-8 at 0.05 (docs/parameter-recovery.md).
KNOBS_TABLE: dict[str, Knob] = {k.name: k for k in (
    Knob("steps", ("sample_steps",), prior=5, stack=StackSetting(0, ("sample_steps",)),
         axis=SearchAxis(1, 100, 1, 2, (6, 11, 30, 50, 80), 1.3, True, 0.0, 0.15, 0, first_share=0.25)),
    Knob("schedule", ("schedule", "semantics", "numerics"), show=_schedule_shown, compact=_schedule_compact,
         prior=4, text="schedule", stack=StackSetting(2, ("schedule",)),
         axis=SearchAxis(0.5, 8.0, 0.05, 0.5, (0.8, 2.3, 3.4, 5.5), 1.25, True, 0.25, 0.15, 3)),
    Knob("guidance", ("guidance_scale",), prior=6, stack=StackSetting(1, ("guidance_scale",)),
         axis=SearchAxis(0.0, 15.0, 0.1, 1.0, (1.5, 5.5, 8.0, 11.5), 1.0, False, 0.25, 0.1, 1)),
    Knob("resolution", ("width", "height"), show=_resolution_shown, compact=_resolution_compact,
         differs=_resolution_differs, prior=2, feeds=(NOISE,), text="size", stack=StackSetting(3, ("width", "height"))),
    Knob("seed", ("seed",), prior=1, feeds=(NOISE,), stack=StackSetting(4, ("seed",))),
    Knob("generator", ("generator",), prior=3, feeds=(NOISE,)),
    Knob("prompt", ("prompt",), prior=8, feeds=(EMBEDDING,), text="quoted"),
    Knob("lora_scale", ("network_multiplier",), show=_LORA_SCALE[0], differs=_LORA_SCALE[1], prior=7,
         stack=StackSetting(5, ("network_multiplier",)),
         axis=SearchAxis(0.0, 2.0, 0.01, 0.25, (0.25, 0.6, 1.4, 1.9), 0.2, False, 0.05, 0.02, 2)),
    Knob("lora_application", ("lora_application",), show=_LORA_APPLICATION[0], differs=_LORA_APPLICATION[1],
         prior=13),
    Knob("checkpoint", ("lora_path",), differs=_checkpoint_differs, prior=0, unset="none (base model only)"),
    Knob("quantization", ("quantize", "quantize_te"), show=_quantization_shown, prior=11, feeds=(EMBEDDING,),
         arithmetic=True, text="parts"),
    Knob("dtype", ("dtype",), prior=12, feeds=(NOISE, EMBEDDING), arithmetic=True),
    Knob("text_encoder", (), show=_text_encoder_shown, differs=_text_encoder_differs, feeds=(EMBEDDING,),
         unset="the base model's"),
    Knob("reference_images", ("control_images",), show=_references_shown, differs=_references_differ, prior=9),
    Knob("negative_prompt", ("negative_prompt",), show=_negative_shown, differs=_negative_differs, prior=10),
    Knob("lora_precision", irreducible=True),
    Knob("merge_history", irreducible=True),
    Knob("hardware", irreducible=True),
)}


def knob(name: str) -> Knob:
    return KNOBS_TABLE[name]


def knob_names() -> tuple[str, ...]:
    """The parameter table's knobs, in order (results.json, reports)."""
    return tuple(k.name for k in KNOBS_TABLE.values() if not k.irreducible)


def irreducible_names() -> tuple[str, ...]:
    """Differences a re-render cannot remove; reported apart from real mismatches."""
    return tuple(k.name for k in KNOBS_TABLE.values() if k.irreducible)


def renderable_knobs() -> tuple[str, ...]:
    """Knobs a re-render can align (they cover settings), in table order."""
    return tuple(k.name for k in KNOBS_TABLE.values() if k.settings and not k.irreducible)


def attribution_order() -> tuple[str, ...]:
    """Renderable knobs in the order attribution tries them (stable for equal priors)."""
    return tuple(sorted(renderable_knobs(), key=lambda n: KNOBS_TABLE[n].prior))


def feeding(engine_input: str) -> tuple[str, ...]:
    """Knobs that decide one engine input (NOISE or EMBEDDING)."""
    return tuple(k.name for k in KNOBS_TABLE.values() if engine_input in k.feeds)


def stack_knobs() -> list[Knob]:
    """Knobs an inference stack's settings set, in the order the explanation of an external render names them."""
    return sorted((k for k in KNOBS_TABLE.values() if k.stack is not None), key=lambda k: k.stack.rank)


def searchable() -> dict[str, SearchAxis]:
    """knob -> the value space parameter recovery searches, in the order it takes them (`SearchAxis.rank`)."""
    axes = [(k.name, k.axis) for k in KNOBS_TABLE.values() if k.axis is not None]
    return dict(sorted(axes, key=lambda pair: pair[1].rank))


def text_format(name: str) -> str:
    """How a knob's value reads (parity.values.TEXT_FORMATS); "plain" for a name the registry does not know."""
    k = KNOBS_TABLE.get(name)
    return k.text if k is not None else "plain"


def unset_text(name: str) -> str:
    """What no value of a knob means, in words ("none" for a name the registry does not know)."""
    k = KNOBS_TABLE.get(name)
    return k.unset if k is not None else "none"
