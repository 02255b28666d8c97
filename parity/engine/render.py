"""The renderer: one RenderSpec in, the image and what was actually done out.

    engine = Engine("/models/FLUX.2-dev", text_encoder="/models/Mistral-Small-3.1-24B-Instruct-2503",
                    cache_dir="~/.cache/parity/embeds")
    result = engine.render(RenderSpec(prompt="a cat", width=1024, height=1024, seed=42, sample_steps=30,
                                      guidance_scale=4.0, lora_path="run/my_lora_000001000.safetensors"))

The base transformer is loaded once per (dtype, quantization); LoRA file and multiplier switch without reloading,
the LoRA-target weights being restored bit-exactly from pristine copies. Embeddings come from a disk cache when
possible, in which case the text encoder is never constructed. `engine.stats` counts loads so tests can assert it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from parity.engine import numerics, schedule, weights
from parity.engine import offload as offload_policy
from parity.engine.components import Components, EngineStats
from parity.engine.embedder import Embedder
from parity.engine.lora_state import plan_merge_history, set_lora
from parity.engine.refs import encode_references
from parity.engine.sampling import Guidance, aitk_decode, aitk_denoise, any_nonfinite, diffusers_render, make_noise
from parity.engine.text import MAX_LENGTH, CacheKey, EmbeddingCache
from parity.errors import ConfigError, ModelError
from parity.family import Family, family
from parity.job.sizes import effective_size
from parity.spec import SEMANTICS, RenderSpec

OFFLOAD_MODES = ("none", "sequential")


@dataclass
class RenderResult:
    """What one render produced and did. `image` uint8 HxWx3; `image_float` fp32 [0,1] HxWx3."""

    image: "np.ndarray"  # noqa: F821
    image_float: "np.ndarray"  # noqa: F821
    width: int
    height: int
    sigmas: list[float]
    mu: float | None
    noise_sha256: str
    embedding_sha256: str
    lora: dict | None
    timings: dict[str, float]
    nan_step: int | None
    semantics: str = "aitk"
    numerics: dict[str, str] = field(default_factory=dict)
    merge_history: dict | None = None  # see Engine.render(merge_history=...)
    transformer_calls: int = 0         # forward passes (2 per step under CFG)
    cfg: bool = False                  # true CFG with the negative prompt ([klein] base)
    reference_tokens: int = 0          # reference-image tokens appended to the image tokens
    reference_shapes: list = field(default_factory=list)  # latent [h, w] per reference image

    def summary(self) -> dict:
        """JSON-ready description (no pixels)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("image", "image_float")}


def job_member(spec: RenderSpec) -> Family:
    """The family member the spec's job trains (RenderSpec.arch); ConfigError for an arch no member has."""
    try:
        return family(spec.arch)
    except KeyError as exc:
        raise ConfigError(f"RenderSpec.arch: {exc.args[0]}") from None


def refuse_unsupported(spec: RenderSpec, layout: weights.BaseLayout) -> None:
    """A clear error, before anything is loaded, for a spec this engine cannot render as asked."""
    if spec.semantics not in SEMANTICS:
        raise ConfigError(f"unknown semantics {spec.semantics!r}; expected one of {', '.join(SEMANTICS)}")
    if spec.semantics == "aitk-code":
        if not os.environ.get("AI_TOOLKIT_PATH"):
            raise ConfigError("semantics aitk-code needs AI_TOOLKIT_PATH (a checkout of ostris/ai-toolkit); unset")
        raise ConfigError("semantics aitk-code is not implemented yet; use aitk (the same loop on diffusers "
                          "components)")
    job = job_member(spec)
    if not job.renders_like(family(layout.arch)):
        raise ModelError(f"the job is {spec.arch!r} but the base model is {layout.arch!r}: parity would "
                         "render another model; point base_model at the matching checkpoint", layout.root)
    if spec.semantics == "diffusers" and (spec.control_images or job.true_cfg):
        raise ConfigError("semantics diffusers renders plain FLUX.2-dev text-to-image only; reference images "
                          "and [klein] CFG need semantics aitk")
    if spec.generator != "cpu":
        raise ConfigError(f"generator {spec.generator!r}: only the CPU generator (AI Toolkit's) is supported")
    if spec.lora_path and spec.quantize and spec.lora_application == "merged":
        raise ConfigError("a merged LoRA on a quantized transformer is not what AI Toolkit does "
                          "(quantize -> live); set lora_application=live")


@dataclass
class _Sampling:
    """What the sampling loop of one render works on (the parts loaded, the inputs drawn and encoded)."""

    spec: RenderSpec
    transformer: torch.nn.Module
    vae: torch.nn.Module
    embeds: torch.Tensor       # (1, L, 3*hidden) prompt embedding
    noise: torch.Tensor        # (1, 128, H/16, W/16) initial noise
    sigmas: list[float]
    guidance: Guidance
    switches: dict[str, str]
    refs: Any                  # encoded reference images (parity.engine.refs) or None
    width: int
    height: int


class Engine:
    """A FLUX.2 renderer over local weights. `offload`: 'none' keeps every component where it is (CPU tests);
    'sequential' frees the text encoder after encoding and moves transformer/VAE to `device` only while they run
    (so an 80 GB GPU renders with the 64 GB bf16 transformer). The loaded parts are `parts`
    (parity.engine.components), the prompt embeddings `text` (parity.engine.embedder)."""

    def __init__(self, base_model: str | Path, *, text_encoder: str | Path | None = None, device: str = "cpu",
                 cache_dir: str | Path | None = None, offload: str = "none", layout: str = "auto",
                 max_length: int = MAX_LENGTH):
        if offload not in OFFLOAD_MODES:
            raise ConfigError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, not {offload!r}")
        self.layout = weights.resolve_base(base_model, text_encoder=text_encoder, layout=layout)
        self.device = torch.device(device)
        self.offload = offload
        self.max_length = max_length
        self.cache = EmbeddingCache(os.path.expanduser(str(cache_dir)) if cache_dir else None)
        self.stats = EngineStats()
        self.parts = Components(self.layout, self.device, offload, self.stats)
        self.text = Embedder(self.parts, self.cache, max_length)

    # ------------------------------------------------------------------ components and text
    def transformer(self, dtype_name: str, quantize: str | None):
        """The transformer for (dtype, quantization), loaded from disk only when that pair changes."""
        return self.parts.transformer(dtype_name, quantize)

    def vae(self, dtype_name: str):
        return self.parts.vae(dtype_name)

    def free_text_encoder(self) -> None:
        self.parts.free_text_encoder()

    def cache_key(self, prompt: str, dtype_name: str, quantize_te: str | None, te_cast: str) -> CacheKey:
        return self.text.key(prompt, dtype_name, quantize_te, te_cast)

    def embeddings(self, prompt: str, dtype_name: str, quantize_te: str | None, te_cast: str = "aitk"):
        """(1, L, 3*hidden) text embedding in the text encoder's dtype: memory, then disk cache, then encode."""
        return self.text.get(prompt, dtype_name, quantize_te, te_cast)

    def prepare_embeddings(self, specs) -> None:
        """Encode every prompt of a run first (text encoder once), then free the text encoder when offloading."""
        for s in specs:
            sw = numerics.resolve_switches(s.numerics, s.semantics)
            self.embeddings(s.prompt, s.dtype, s.quantize_te, sw["te_cast"])
            if job_member(s).runs_cfg(s.guidance_scale):
                self.embeddings(s.negative_prompt, s.dtype, s.quantize_te, sw["te_cast"])
        if self.offload != "none":
            self.free_text_encoder()

    plan_merge_history = staticmethod(plan_merge_history)

    # ------------------------------------------------------------------ guidance
    def guidance(self, spec: RenderSpec, switches: dict[str, str]) -> Guidance:
        """True CFG when the job's family member runs it (FLUX.2-dev is guidance-distilled, [klein] base is not:
        flux2_model.py L61 vs flux2_klein_model.py L15) and guidance_scale > 1 (src/pipeline.py L298-302); the
        negative prompt is then encoded like the prompt (base_model.py L603-608). The base model's transformer
        config agrees (weights.check_config_agrees) and so does its member (refuse_unsupported)."""
        if not job_member(spec).runs_cfg(spec.guidance_scale):
            return Guidance(spec.guidance_scale)
        neg = self.embeddings(spec.negative_prompt, spec.dtype, spec.quantize_te, switches["te_cast"])
        return Guidance(spec.guidance_scale, cfg=True, negative=neg)

    # ------------------------------------------------------------------ render
    def render(self, spec: RenderSpec, merge_history=None) -> RenderResult:
        """Render one spec. `merge_history`: optional [(lora_path or None, multiplier), ...], the merged sample
        rounds AI Toolkit ran before this preview, oldest first (None = the zero LoRA of step 0); their
        merge/un-merge drift is replayed on the base weights first (see `parity.job.history.history_from_job`)."""
        t0 = time.perf_counter()
        refuse_unsupported(spec, self.layout)
        switches, width, height, sigmas, mu = self._geometry(spec)
        offload_policy.check_engine(self, spec)  # a clear error before any weight is loaded (no-op off CUDA)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        embeds = self.embeddings(spec.prompt, spec.dtype, spec.quantize_te, switches["te_cast"])
        if self.offload != "none":
            self.free_text_encoder()
        timings["text"] = time.perf_counter() - t
        t = time.perf_counter()
        transformer, vae, lora_report, history_info = self._load(spec, switches, merge_history)
        timings["load"] = time.perf_counter() - t
        noise = make_noise(spec.seed, width, height, weights.torch_dtype(spec.dtype))
        t = time.perf_counter()
        refs = encode_references(vae, spec.control_images)  # after the noise draw, as src/pipeline.py L343-366
        guidance = self.guidance(spec, switches)
        timings["refs"] = time.perf_counter() - t
        run = self._sample_diffusers if spec.semantics == "diffusers" else self._sample_aitk
        img_u8, img_f, sigmas, nan_step, calls = run(
            _Sampling(spec, transformer, vae, embeds, noise, sigmas, guidance, switches, refs, width, height), timings)
        timings["total"] = time.perf_counter() - t0
        return RenderResult(
            image=img_u8, image_float=img_f, width=width, height=height, sigmas=list(sigmas), mu=mu,
            noise_sha256=numerics.tensor_sha256(noise), embedding_sha256=numerics.tensor_sha256(embeds),
            lora=None if lora_report is None else lora_report.to_dict(), timings=timings, nan_step=nan_step,
            semantics=spec.semantics, numerics=switches, merge_history=history_info, transformer_calls=calls,
            cfg=guidance.cfg, reference_tokens=0 if refs is None else refs.count,
            reference_shapes=[] if refs is None else [list(x) for x in refs.per_image])

    def _geometry(self, spec: RenderSpec) -> tuple[dict[str, str], int, int, list[float], float | None]:
        """(numerics switches, width, height, sigmas, mu): the size floored as FLUX.2 does, its schedule."""
        try:
            switches = numerics.resolve_switches(spec.numerics, spec.semantics)
            width, height = effective_size(spec.width, spec.height)
            if width < 16 or height < 16:
                raise ValueError(f"image size {spec.width}x{spec.height} is below 16 px after flooring to a multiple of 16")
            sigmas, mu = schedule.sigmas_for(spec.schedule, width, height, spec.sample_steps,
                                             self.layout.scheduler_config)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return switches, width, height, sigmas, mu

    def _load(self, spec: RenderSpec, switches: dict[str, str], merge_history) -> tuple:
        """(transformer, vae, LoRA report, merge-history report): the parts in the spec's precision, the
        transformer's weights holding the spec's LoRA, the numerics switches set on both."""
        transformer = self.transformer(spec.dtype, spec.quantize)
        history, history_info = plan_merge_history(spec, merge_history)
        lora_report = set_lora(self.parts.lora, spec, switches, history, self.stats)
        vae = self.vae(spec.dtype)
        numerics.set_modes(transformer, switches)
        numerics.set_modes(vae, switches)
        return transformer, vae, lora_report, history_info

    def _sample_aitk(self, x: _Sampling, timings: dict[str, float]) -> tuple:
        """AI Toolkit's loop: (image u8, image float, sigmas, NaN step, transformer calls)."""
        transformer, vae, switches = x.transformer, x.vae, x.switches
        offload = self.offload != "none"
        t = time.perf_counter()
        if offload:
            transformer.to(self.device)
        try:
            den = aitk_denoise(transformer, x.embeds, x.noise, x.sigmas, x.guidance, switches, self.device, refs=x.refs)
            timings["denoise"] = time.perf_counter() - t
            if offload:
                transformer.to("cpu")
                vae.to(self.device)
            t = time.perf_counter()
            img_u8, img_f = aitk_decode(vae, den.latents, switches)
            timings["decode"] = time.perf_counter() - t
        finally:
            if offload:
                transformer.to("cpu")
                vae.to("cpu")
        return img_u8, img_f, x.sigmas, den.nan_step, den.calls

    def _sample_diffusers(self, x: _Sampling, timings: dict[str, float]) -> tuple:
        """diffusers' Flux2Pipeline loop: (image u8, image float, sigmas it used, NaN step, 0)."""
        transformer, vae, spec = x.transformer, x.vae, x.spec
        offload = self.offload != "none"
        t = time.perf_counter()
        if offload:
            transformer.to(self.device)
        try:
            if offload:
                vae.to(self.device)
            stock = schedule.parse_schedule(spec.schedule)[0] == "empirical"
            img_u8, img_f, used = diffusers_render(
                transformer, vae, self.layout.scheduler_config, x.embeds, width=x.width, height=x.height,
                steps=spec.sample_steps, guidance=spec.guidance_scale, seed=spec.seed,
                sigmas=None if stock else x.sigmas, device=self.device)
            timings["denoise"] = time.perf_counter() - t
        finally:
            if offload:
                transformer.to("cpu")
                vae.to("cpu")
        nan_step = spec.sample_steps - 1 if any_nonfinite(img_f) else None
        return img_u8, img_f, used, nan_step, 0


__all__ = ["Engine", "EngineStats", "RenderResult", "ModelError"]
