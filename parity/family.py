"""The FLUX.2 family members parity renders, each declared once: what AI Toolkit's `model.arch` loads and how it
samples. Torch-free, so the job reader, request parsing, planning and doctor can ask it without loading torch.

Adding a member is one `Family(...)` row below (plus its pinned full-size configurations in
parity.engine.fullsize, named by `transformer_config` / `text_encoder_config`). Nothing else tests arch names:
ask `family(arch)` for the fact you need.

Sources (ostris/ai-toolkit 27a03a91, extensions_built_in/diffusion_models/flux2/):
  - flux2_model.py: Flux2Model, guidance-distilled (L61 `is_guidance_distilled=True`), Mistral-Small-3.1 text
    encoder (L49), `flux2-dev.safetensors` (L60), te cast with `.to(dtype)` always (L98-104);
  - flux2_klein_model.py: Flux2Klein4BModel / Flux2Klein9BModel (L68-91), true CFG (L15), Qwen3-4B / -8B
    (L70, L84), `flux-2-klein-base-4b/9b.safetensors` (L72, L86), `qtype_te` read for the text encoder (L46-48);
  - src/pipeline.py: hidden states 10/20/30 (Mistral) and OUTPUT_LAYERS_QWEN3 9/18/27 (L39).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    """One FLUX.2 family member, keyed by AI Toolkit's `model.arch`."""

    arch: str                     # AI Toolkit's model.arch; also the reference server's model id
    label: str                    # what a person calls it
    true_cfg: bool                # True: real CFG with the negative prompt (two forwards a step); False: guidance-distilled
    single_file: str              # the BFL transformer file AI Toolkit loads from a folder
    pipeline_class: str           # a diffusers folder's model_index.json `_class_name`
    text_encoder_repo: str        # the text encoder AI Toolkit loads (hub id; parity never downloads it)
    text_encoder: str             # "mistral" | "qwen3": which prompt formatting and encoder class
    hidden_layers: tuple[int, ...]  # the text encoder's hidden states stacked into the context
    context_dim: int              # the transformer's joint_attention_dim (3 x the text encoder's hidden size)
    transformer_config: str       # key of parity.engine.fullsize.TRANSFORMER_CONFIGS
    text_encoder_config: str      # key of parity.engine.fullsize.TEXT_ENCODER_CONFIGS
    te_qtype_key: str             # the model-section key that sets the text encoder's qtype
    te_cast_always: bool          # the text encoder is always cast with `.to(dtype)` after loading

    @property
    def forwards_per_step(self) -> int:
        return 2 if self.true_cfg else 1

    @property
    def guidance_embeds(self) -> bool:
        """The transformer config's `guidance_embeds`: a guidance-distilled model embeds the guidance scale."""
        return not self.true_cfg

    def runs_cfg(self, guidance_scale: float) -> bool:
        """Whether a render reads the negative prompt: true CFG only above scale 1 (src/pipeline.py L298-302)."""
        return self.true_cfg and guidance_scale > 1.0

    def renders_like(self, other: "Family") -> bool:
        """Whether a job of this member renders on a base model of `other`: the same prompt encoding and guidance
        (transformer sizes are not compared: a tiny test model stands in for any member of its kind)."""
        return (self.text_encoder, self.true_cfg) == (other.text_encoder, other.true_cfg)

    @property
    def klein(self) -> bool:
        """Runs the [klein] pipeline (Flux2KleinPipeline layout, Qwen3 text encoder)."""
        return self.text_encoder == "qwen3"


_KLEIN = dict(true_cfg=True, pipeline_class="Flux2KleinPipeline", text_encoder="qwen3", hidden_layers=(9, 18, 27),
              te_qtype_key="qtype_te", te_cast_always=False)

FAMILIES: dict[str, Family] = {f.arch: f for f in (
    Family("flux2", "FLUX.2-dev", true_cfg=False, single_file="flux2-dev.safetensors",
           pipeline_class="Flux2Pipeline", text_encoder_repo="mistralai/Mistral-Small-3.1-24B-Instruct-2503",
           text_encoder="mistral", hidden_layers=(10, 20, 30), context_dim=15360, transformer_config="flux2-dev",
           text_encoder_config="mistral-small-3.1-24b", te_qtype_key="qtype", te_cast_always=True),
    Family("flux2_klein_4b", "FLUX.2 [klein] base 4B", single_file="flux-2-klein-base-4b.safetensors",
           text_encoder_repo="Qwen/Qwen3-4B", context_dim=7680, transformer_config="flux2-klein-4b",
           text_encoder_config="qwen3-4b", **_KLEIN),
    Family("flux2_klein_9b", "FLUX.2 [klein] base 9B", single_file="flux-2-klein-base-9b.safetensors",
           text_encoder_repo="Qwen/Qwen3-8B", context_dim=12288, transformer_config="flux2-klein-9b",
           text_encoder_config="qwen3-8b", **_KLEIN),
)}

DEFAULT_ARCH = "flux2"


def arch_key(arch: str | None) -> str:
    """AI Toolkit's arch name without its `:tag` suffix (config_modules.py L766-771); FLUX.2-dev for None."""
    return (arch or DEFAULT_ARCH).split(":", 1)[0]


def family(arch: str | None) -> Family:
    """The family member of an AI Toolkit arch (a `:tag` suffix ignored); FLUX.2-dev for None."""
    key = arch_key(arch)
    if key not in FAMILIES:
        raise KeyError(f"unknown FLUX.2 arch {arch!r}; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[key]


def arches() -> tuple[str, ...]:
    return tuple(FAMILIES)


def by_single_file(name: str) -> Family | None:
    return next((f for f in FAMILIES.values() if f.single_file == name), None)


def guess_member(pipeline_class: str | None, guidance_embeds: bool | None, context_dim: int | None,
                 named: str | None = None) -> Family:
    """Which member a diffusers base folder holds: among the members of its pipeline class (else those whose
    guidance embedding its transformer config has, else all), the one its single file names, else the one of its
    context width, else the first (tiny test models have no real width)."""
    members = list(FAMILIES.values())
    pool = ([f for f in members if f.pipeline_class == pipeline_class]
            or [f for f in members if guidance_embeds is not None and f.guidance_embeds == guidance_embeds]
            or members)
    return (next((f for f in pool if f.arch == named), None)
            or next((f for f in pool if f.context_dim == context_dim), pool[0]))


# -- AI Toolkit's other model families: named when a job or request asks for one, never rendered ---------------

# config_modules.py L766-771: `flex1` is loaded as FLUX.1.
ARCH_ALIASES = {"flex1": "flux"}
# config_modules.py L800-822: with no `arch`, ModelConfig derives one from the legacy is_* flags, else sd1.
LEGACY_ARCH_FLAGS = (("is_v2", "sd2"), ("is_v3", "sd3"), ("is_xl", "sdxl"), ("is_pixart", "pixart"),
                     ("is_pixart_sigma", "pixart_sigma"), ("is_auraflow", "auraflow"), ("is_flux", "flux"),
                     ("is_lumina2", "lumina2"), ("is_vega", "vega"), ("is_ssd", "ssd"))
LEGACY_DEFAULT_ARCH = "sd1"
# What the refusal calls a known non-FLUX.2 name (others are quoted as written), and what to do instead.
OTHER_LABELS = {"flux": "FLUX.1"}
OTHER_HINTS = {
    # the reference server's model ids beside AI Toolkit's archs (src/schemas/models.py ModelType)
    "flux2_diffusers": "flux2_diffusers wraps diffusers' pipeline with divisor 32: use the diffusers profile "
                       "with --set resolution_divisor=32",
}


def aitk_arch(model: Mapping) -> Any:
    """The arch AI Toolkit's ModelConfig gives a job's `model` section: `:tag` stripped, aliases resolved, legacy
    is_* flags read when there is no `arch`. Not necessarily a FLUX.2 member (see `is_member`)."""
    arch = model.get("arch")
    if isinstance(arch, str) and ":" in arch:
        arch = arch.split(":")[0]
    arch = ARCH_ALIASES.get(arch, arch) if isinstance(arch, str) else arch
    if arch is None:
        arch = next((name for flag, name in LEGACY_ARCH_FLAGS if model.get(flag)), LEGACY_DEFAULT_ARCH)
    return arch


def is_member(name: Any) -> bool:
    return isinstance(name, str) and name in FAMILIES


def other_label(name: Any) -> str:
    """How a refusal names a non-member: AI Toolkit's label for a known other family, else the name quoted."""
    return OTHER_LABELS.get(name, repr(name)) if isinstance(name, str) else repr(name)


def other_hint(name: Any) -> str:
    """What to do instead for a known non-member ("" when there is nothing to say)."""
    return OTHER_HINTS.get(name, "") if isinstance(name, str) else ""
