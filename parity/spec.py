"""Shared vocabulary: knob names, semantics and the render spec that decides the pixels.

This module is the single place where these names live (the verdict tiers live in parity.tier); results.json,
reports and diagnosis all use them. It imports nothing heavy (no torch) so the job reader and `parity report` can use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from parity.family import DEFAULT_ARCH

# Knobs a parameter diff is computed over (fixed names, used in results.json and reports).
KNOBS: tuple[str, ...] = (
    "steps",             # sample_steps
    "schedule",          # sigma schedule: AI Toolkit's linear mu vs diffusers' empirical mu (or a static shift)
    "guidance",          # guidance_scale fed to the guidance embedding
    "resolution",        # effective width x height after the floors
    "seed",
    "generator",         # device of the generator that draws the initial noise
    "prompt",            # processed prompt (trigger substituted, flags removed, stripped)
    "lora_scale",        # network_multiplier
    "lora_application",  # merged | live
    "checkpoint",        # which LoRA file
    "quantization",      # transformer / text-encoder weight quantization
    "dtype",             # compute dtype
    "text_encoder",      # text-encoder identity
    "reference_images",  # FLUX.2 reference images (ctrl_img*), in the order they are appended
    "negative_prompt",   # the unconditional prompt of true CFG ([klein] base); FLUX.2-dev never reads it
)
# Differences a re-render cannot remove; reported apart from real mismatches.
IRREDUCIBLE_KNOBS: tuple[str, ...] = ("lora_precision", "merge_history", "hardware")

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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["numerics"] = dict(self.numerics)
        d["control_images"] = list(self.control_images)
        return d

    def with_(self, **changes: Any) -> "RenderSpec":
        return replace(self, **changes)


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
