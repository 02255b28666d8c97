"""A resolved sample + the job's facts -> the RenderSpec AI Toolkit rendered the preview with, each value's source."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from parity.family import family
from parity.job.config import JobFacts
from parity.job.samples import ResolvedSample
from parity.spec import RenderSpec, ResolvedSpec


def lora_application(facts: JobFacts, samples: list[ResolvedSample]) -> str:
    """`merged` only when the network can merge (not quantized, no layer offloading; BaseSDTrainProcess.py
    L1995-2005) AND every sample of the sample() call shares one network_multiplier (base_model.py
    L426-433); otherwise the LoRA runs live (unmerged fp32 branch)."""
    if facts.quantize or facts.layer_offloading:
        return "live"
    if facts.network_type == "dora":  # merge_in returns early for DoRA (network_mixins.py L894-896)
        return "live"
    return "merged" if len({s.network_multiplier for s in samples}) <= 1 else "live"


def te_numerics(facts: JobFacts) -> tuple[tuple[str, str], ...]:
    """[klein] loads Qwen3 with `from_pretrained(torch_dtype=dtype)` and casts it again with `.to(device,
    dtype)` only when neither quantize_te nor low_vram is set (flux2_klein_model.py L41-53); without that
    second cast the rotary `inv_freq` buffer stays fp32: the te_cast switch's from_pretrained-only path.
    FLUX.2-dev always casts (flux2_model.py L98-104)."""
    if not family(facts.arch).te_cast_always and (facts.quantize_te or facts.low_vram):
        return (("te_cast", "diffusers"),)
    return ()


def render_spec(facts: JobFacts, s: ResolvedSample, lora_path: Path | None, application: str,
                resolve: Callable[[str], str]) -> ResolvedSpec:
    """The preview's RenderSpec; `resolve` opens a reference image path as AI Toolkit did."""
    f = facts
    spec = RenderSpec(
        prompt=s.prompt,
        width=s.width,
        height=s.height,
        seed=s.seed,
        sample_steps=s.sample_steps,
        guidance_scale=s.guidance_scale,
        lora_path=None if lora_path is None else str(lora_path),
        network_multiplier=s.network_multiplier,
        lora_application=application,
        dtype=f.dtype,
        # FLUX.2-dev quantizes the text encoder with `qtype`, [klein] with `qtype_te` (JobFacts.qtype_te)
        quantize=f.qtype if f.quantize else None,
        quantize_te=f.qtype_te,
        semantics="aitk",
        schedule="aitk",
        generator="cpu",
        control_images=tuple(resolve(p) for p in s.control_images),
        numerics=te_numerics(f),
        negative_prompt=s.neg if isinstance(s.neg, str) else "",
        arch=f.arch,
        extra=s.extra,
    )
    sources = dict(s.sources)
    sources.update(
        lora_path="job",
        lora_application="job",
        dtype=f.sources["dtype"],
        quantize=f.sources["quantize"],
        quantize_te=f.sources["quantize_te"],
        semantics="default",
        schedule="default",
        generator="default",
    )
    return ResolvedSpec(spec=spec, sources=sources)
