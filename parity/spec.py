"""Shared vocabulary: semantics and the render spec that decides the pixels (the knobs and settings are
declared in parity.knobs, the verdict tiers in parity.tier).

This module is the single place where these names live; results.json, reports and diagnosis all use them.
It imports nothing heavy (no torch) so the job reader and `parity report` can use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from parity.family import DEFAULT_ARCH

# Sampling semantics a render can follow.
SEMANTICS: tuple[str, ...] = ("aitk", "diffusers", "aitk-code")
# Schedules: AI Toolkit's FLUX.1-style linear mu, diffusers' empirical mu, or a fixed static shift "static:S".
SCHEDULES: tuple[str, ...] = ("aitk", "empirical")
DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")
LORA_APPLICATIONS: tuple[str, ...] = ("merged", "live")


@dataclass(frozen=True)
class RenderSpec:
    """Everything that decides the pixels of one render. Width/height are the requested size; the engine
    floors them to 16 and reports the effective size. `numerics` holds per-detail ablation switches
    (e.g. {"timestep_path": "diffusers"}), empty for the semantics' own defaults."""

    prompt: str
    width: int
    height: int
    seed: int
    sample_steps: int
    guidance_scale: float
    lora_path: str | None = None
    network_multiplier: float = 1.0
    lora_application: str = "merged"
    dtype: str = "bf16"
    quantize: str | None = None          # transformer weight qtype, e.g. "qfloat8"; None = unquantized
    quantize_te: str | None = None       # text-encoder weight qtype
    semantics: str = "aitk"
    schedule: str = "aitk"
    generator: str = "cpu"
    numerics: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    # Reference images (FLUX.2 `control_img_list`, flux2_model.py L302-319), resolved paths in the order AI
    # Toolkit appends them: ctrl_img (else ctrl_img_1), ctrl_img_2, ctrl_img_3. Empty: plain text-to-image.
    control_images: tuple[str, ...] = ()
    # Negative prompt: only used by models that run true CFG (FLUX.2 [klein] base; src/pipeline.py L318-330);
    # FLUX.2-dev is guidance-distilled and never reads it.
    negative_prompt: str = ""
    # The FLUX.2 family member the job trains (model.arch): "flux2" (FLUX.2-dev), "flux2_klein_4b",
    # "flux2_klein_9b". The engine refuses a base model of another family rather than render something else.
    arch: str = DEFAULT_ARCH
    # Settings declared in the knob registry (parity.knobs) that are not fields above: (key, value) pairs sorted by
    # key, so a new setting flows from the job reader to the report before the engine consumes it. Empty for every
    # spec made of fields only, which therefore hashes, compares and serialises as before.
    extra: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["numerics"] = dict(self.numerics)
        d["control_images"] = list(self.control_images)
        if self.extra:
            d["extra"] = dict(self.extra)
        else:
            del d["extra"]
        return d

    def value(self, name: str, default: Any = None) -> Any:
        """The value of setting `name`: a field, else its entry in `extra` (`default` when it has none)."""
        if name in SPEC_FIELDS:
            return getattr(self, name)
        return dict(self.extra).get(name, default)

    def with_(self, **changes: Any) -> "RenderSpec":
        """A copy with fields replaced (a name that is no field is a TypeError: a typo never rides along). Settings
        only the knob registry declares go through `parity.knobs.with_settings`."""
        return replace(self, **changes)

    def with_extra(self, **values: Any) -> "RenderSpec":
        """A copy with registry-only settings set in `extra` (parity.knobs.with_settings checks the names)."""
        return replace(self, extra=tuple(sorted({**dict(self.extra), **values}.items())))


# The RenderSpec fields that hold settings (every field but the `extra` slot).
SPEC_FIELDS: tuple[str, ...] = tuple(f for f in RenderSpec.__dataclass_fields__ if f != "extra")


# Where a resolved value came from, shown next to it in plans and reports.
SOURCES: tuple[str, ...] = (
    "default",   # AI Toolkit's code default (the key was absent)
    "block",     # the job's sample block (or model/train/network block)
    "item",      # a per-sample entry of `samples`
    "flag",      # a --flag inside the prompt text
    "walk",      # seed walking (seed + prompt index)
    "carry",     # a per-sample seed carried over to later prompts (walk_seed off)
    "floor",     # a size floor (8 / min 64 / 16)
    "request",   # an inference request file
    "profile",   # a named inference profile's default
    "override",  # --set KEY=VALUE
    "case",      # the case file
    "job",       # derived from the job as a whole (e.g. quantize -> live LoRA)
)


@dataclass
class ResolvedSpec:
    """A render spec plus, per RenderSpec field name, the source of its value (see SOURCES)."""

    spec: RenderSpec
    sources: dict[str, str] = field(default_factory=dict)

    def source(self, name: str) -> str:
        return self.sources.get(name, "default")
