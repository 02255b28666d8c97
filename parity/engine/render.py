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

import gc
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from parity.engine import numerics, schedule, weights
from parity.engine import offload as offload_policy
from parity.engine.lora import LoraApplier, LoraReport
from parity.engine.refs import encode_references
from parity.engine.sampling import Guidance, aitk_decode, aitk_denoise, any_nonfinite, diffusers_render, make_noise
from parity.engine.text import MAX_LENGTH, CacheKey, EmbeddingCache, encode, hidden_layers
from parity.errors import ConfigError, ModelError
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


@dataclass
class EngineStats:
    transformer_loads: int = 0
    text_encoder_loads: int = 0
    vae_loads: int = 0
    lora_applies: int = 0
    base_restores: int = 0
    embedding_cache_hits: int = 0
    embedding_cache_misses: int = 0


class Engine:
    """A FLUX.2 renderer over local weights. `offload`: 'none' keeps every component where it is (CPU tests);
    'sequential' frees the text encoder after encoding and moves transformer/VAE to `device` only while they run
    (so an 80 GB GPU renders with the 64 GB bf16 transformer)."""

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
        self._memory: dict[tuple, torch.Tensor] = {}  # in-process embedding cache
        self._transformer = None
        self._transformer_key: tuple | None = None
        self._lora: LoraApplier | None = None
        self._vae = None
        self._vae_key = None
        self._te = None
        self._te_key = None
        self._tokenizer = None
        self._te_identity = json.dumps(weights.file_identity(self.layout.text_encoder))
        self._tok_identity = weights.tokenizer_identity(self.layout.tokenizer)

    # ------------------------------------------------------------------ components
    def transformer(self, dtype_name: str, quantize: str | None):
        """The transformer for (dtype, quantization), loaded from disk only when that pair changes."""
        key = (dtype_name, quantize)
        if self._transformer_key != key:
            self._transformer = None
            self._lora = None
            gc.collect()
            model = weights.load_transformer(self.layout, weights.torch_dtype(dtype_name)).eval()
            if quantize:
                from parity.engine.quant import quantize_module

                quantize_module(model, quantize)
            numerics.install_transformer_numerics(model)  # QK norm + RoPE switches (after quantization)
            if self.offload == "none":
                model.to(self.device)
            self._transformer, self._transformer_key = model, key
            self._lora = LoraApplier(model)
            self.stats.transformer_loads += 1
        return self._transformer

    def vae(self, dtype_name: str):
        if self._vae_key != dtype_name:
            self._vae = weights.load_vae(self.layout, weights.torch_dtype(dtype_name))
            numerics.install_vae_numerics(self._vae)  # activation + attention switches
            if self.offload == "none":
                self._vae.to(self.device)
            self._vae_key = dtype_name
            self.stats.vae_loads += 1
        return self._vae

    def _text_encoder(self, dtype_name: str, quantize_te: str | None, te_cast: str):
        key = (dtype_name, quantize_te, te_cast)
        if self._te_key != key:
            self._te = None
            gc.collect()
            te = weights.load_text_encoder(self.layout, weights.torch_dtype(dtype_name), te_cast)
            if quantize_te:
                from parity.engine.quant import quantize_module

                quantize_module(te, quantize_te)
            self._te, self._te_key = te.to(self.device), key
            self.stats.text_encoder_loads += 1
        if self._tokenizer is None:
            self._tokenizer = weights.load_tokenizer(self.layout)
        return self._te, self._tokenizer

    def free_text_encoder(self) -> None:
        self._te, self._te_key = None, None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ text
    def cache_key(self, prompt: str, dtype_name: str, quantize_te: str | None, te_cast: str) -> CacheKey:
        return CacheKey(text_encoder=self._te_identity, tokenizer=self._tok_identity, prompt=prompt,
                        max_length=self.max_length, layers=hidden_layers(self.layout.klein), dtype=dtype_name,
                        quantize_te=quantize_te, te_cast=te_cast)

    def embeddings(self, prompt: str, dtype_name: str, quantize_te: str | None, te_cast: str = "aitk"):
        """(1, L, 3*hidden) text embedding in the text encoder's dtype: memory, then disk cache, then encode."""
        key = self.cache_key(prompt, dtype_name, quantize_te, te_cast)
        mem_key = (key.digest(),)
        if mem_key in self._memory:
            return self._memory[mem_key]
        emb = self.cache.get(key)
        if emb is None:
            self.stats.embedding_cache_misses += 1
            te, tok = self._text_encoder(dtype_name, quantize_te, te_cast)
            emb = encode(te, tok, prompt, max_length=self.max_length, device=self.device,
                         layers=hidden_layers(self.layout.klein), klein=self.layout.klein)
            self.cache.put(key, emb)
        else:
            self.stats.embedding_cache_hits += 1
        self._memory[mem_key] = emb
        return emb

    def prepare_embeddings(self, specs) -> None:
        """Encode every prompt of a run first (text encoder once), then free the text encoder when offloading."""
        for s in specs:
            sw = numerics.resolve_switches(s.numerics, s.semantics)
            self.embeddings(s.prompt, s.dtype, s.quantize_te, sw["te_cast"])
            if not self.guidance_distilled and s.guidance_scale > 1.0:
                self.embeddings(s.negative_prompt, s.dtype, s.quantize_te, sw["te_cast"])
        if self.offload != "none":
            self.free_text_encoder()

    # ------------------------------------------------------------------ LoRA
    def _set_lora(self, spec: RenderSpec, switches: dict[str, str], history: tuple = ()) -> LoraReport | None:
        applier = self._lora
        want = None if not spec.lora_path else (str(spec.lora_path), float(spec.network_multiplier),
                                                spec.lora_application, switches["lora_merge"], switches["lora_live"],
                                                switches["lokr_live"], history)
        if want == applier.key:
            return applier.report
        if applier.restore():
            self.stats.base_restores += 1
        if want is None:
            return None
        if history:
            applier.replay_rounds(history, switches)
        report = applier.apply(spec.lora_path, spec.network_multiplier, spec.lora_application, switches, state_key=want)
        self.stats.lora_applies += 1
        return report

    @staticmethod
    def plan_merge_history(spec: RenderSpec, merge_history) -> tuple[tuple, dict | None]:
        """(rounds to replay, what to report). Replay only applies to a merged LoRA (AI Toolkit un-merges only
        then); when any needed checkpoint file is missing, nothing is replayed (pristine weights) and the report
        names the missing files: the knob `merge_history` (parity.spec.IRREDUCIBLE_KNOBS)."""
        if merge_history is None:
            return (), None
        rounds = tuple((None if p is None else str(p), float(m)) for p, m in merge_history)
        info = {"rounds": len(rounds), "replayed": 0, "missing": [], "applies": True, "note": ""}
        if not spec.lora_path or spec.lora_application != "merged":
            info.update(applies=False, note="live or no LoRA: AI Toolkit leaves the base weights untouched")
            return (), info
        info["missing"] = [p for p, _ in rounds if p is not None and not Path(p).is_file()]
        if info["missing"]:
            info["note"] = (f"{len(info['missing'])} earlier round checkpoint(s) missing: rendered on pristine base "
                            "weights, so the image may differ by the merge/un-merge drift (knob merge_history)")
            return (), info
        info["replayed"] = sum(1 for p, m in rounds if p is not None and m != 0.0)
        return rounds, info

    # ------------------------------------------------------------------ guidance
    @property
    def guidance_distilled(self) -> bool:
        """FLUX.2-dev has a guidance embedding and no CFG; [klein] base has none and runs true CFG
        (flux2_model.py L61 vs flux2_klein_model.py L15; transformer config `guidance_embeds`)."""
        return bool(self.layout.transformer_config.get("guidance_embeds", True))

    def guidance(self, spec: RenderSpec, switches: dict[str, str]) -> Guidance:
        """CFG only when the model is not guidance-distilled and guidance_scale > 1 (src/pipeline.py L298-302);
        the negative prompt is then encoded like the prompt (base_model.py L603-608)."""
        if self.guidance_distilled or not spec.guidance_scale > 1.0:
            return Guidance(spec.guidance_scale)
        neg = self.embeddings(spec.negative_prompt, spec.dtype, spec.quantize_te, switches["te_cast"])
        return Guidance(spec.guidance_scale, cfg=True, negative=neg)

    # ------------------------------------------------------------------ render
    def render(self, spec: RenderSpec, merge_history=None) -> RenderResult:
        """Render one spec. `merge_history`: optional [(lora_path or None, multiplier), ...], the merged sample
        rounds AI Toolkit ran before this preview, oldest first (None = the zero LoRA of step 0); their
        merge/un-merge drift is replayed on the base weights first (see `parity.job.history.history_from_job`)."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        if spec.semantics not in SEMANTICS:
            raise ConfigError(f"unknown semantics {spec.semantics!r}; expected one of {', '.join(SEMANTICS)}")
        if spec.semantics == "aitk-code":
            if not os.environ.get("AI_TOOLKIT_PATH"):
                raise ConfigError("semantics aitk-code needs AI_TOOLKIT_PATH (a checkout of ostris/ai-toolkit); unset")
            raise ConfigError("semantics aitk-code is not implemented yet; use aitk (the same loop on diffusers "
                              "components)")
        if spec.arch.startswith("flux2_klein") != self.layout.klein:
            raise ModelError(f"the job is {spec.arch!r} but the base model is {self.layout.arch!r}: parity would "
                             "render another model; point base_model at the matching checkpoint", self.layout.root)
        if spec.semantics == "diffusers" and (spec.control_images or not self.guidance_distilled):
            raise ConfigError("semantics diffusers renders plain FLUX.2-dev text-to-image only; reference images "
                              "and [klein] CFG need semantics aitk")
        if spec.generator != "cpu":
            raise ConfigError(f"generator {spec.generator!r}: only the CPU generator (AI Toolkit's) is supported")
        if spec.lora_path and spec.quantize and spec.lora_application == "merged":
            raise ConfigError("a merged LoRA on a quantized transformer is not what AI Toolkit does "
                              "(quantize -> live); set lora_application=live")
        try:
            switches = numerics.resolve_switches(spec.numerics, spec.semantics)
            sigmas, mu = None, None
            width, height = effective_size(spec.width, spec.height)
            if width < 16 or height < 16:
                raise ValueError(f"image size {spec.width}x{spec.height} is below 16 px after flooring to a multiple of 16")
            sigmas, mu = schedule.sigmas_for(spec.schedule, width, height, spec.sample_steps,
                                             self.layout.scheduler_config)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        dtype = weights.torch_dtype(spec.dtype)
        offload_policy.check_engine(self, spec)  # a clear error before any weight is loaded (no-op off CUDA)

        t = time.perf_counter()
        embeds = self.embeddings(spec.prompt, spec.dtype, spec.quantize_te, switches["te_cast"])
        if self.offload != "none":
            self.free_text_encoder()
        timings["text"] = time.perf_counter() - t

        t = time.perf_counter()
        transformer = self.transformer(spec.dtype, spec.quantize)
        history, history_info = self.plan_merge_history(spec, merge_history)
        lora_report = self._set_lora(spec, switches, history)
        vae = self.vae(spec.dtype)
        numerics.set_modes(transformer, switches)
        numerics.set_modes(vae, switches)
        timings["load"] = time.perf_counter() - t

        noise = make_noise(spec.seed, width, height, dtype)
        t = time.perf_counter()
        refs = encode_references(vae, spec.control_images)  # after the noise draw, as src/pipeline.py L343-366
        guidance = self.guidance(spec, switches)
        timings["refs"] = time.perf_counter() - t
        t = time.perf_counter()
        nan_step, calls = None, 0
        if self.offload != "none":
            transformer.to(self.device)
        try:
            if spec.semantics == "diffusers":
                if self.offload != "none":
                    vae.to(self.device)
                stock = schedule.parse_schedule(spec.schedule)[0] == "empirical"
                img_u8, img_f, used = diffusers_render(
                    transformer, vae, self.layout.scheduler_config, embeds, width=width, height=height,
                    steps=spec.sample_steps, guidance=spec.guidance_scale, seed=spec.seed,
                    sigmas=None if stock else sigmas, device=self.device)
                sigmas = used
                timings["denoise"] = time.perf_counter() - t
                if any_nonfinite(img_f):
                    nan_step = spec.sample_steps - 1
            else:
                den = aitk_denoise(transformer, embeds, noise, sigmas, guidance, switches, self.device, refs=refs)
                nan_step, calls = den.nan_step, den.calls
                timings["denoise"] = time.perf_counter() - t
                if self.offload != "none":
                    transformer.to("cpu")
                    vae.to(self.device)
                t = time.perf_counter()
                img_u8, img_f = aitk_decode(vae, den.latents, switches)
                timings["decode"] = time.perf_counter() - t
        finally:
            if self.offload != "none":
                transformer.to("cpu")
                vae.to("cpu")
        timings["total"] = time.perf_counter() - t0
        return RenderResult(
            image=img_u8, image_float=img_f, width=width, height=height, sigmas=list(sigmas), mu=mu,
            noise_sha256=numerics.tensor_sha256(noise), embedding_sha256=numerics.tensor_sha256(embeds),
            lora=None if lora_report is None else lora_report.to_dict(), timings=timings, nan_step=nan_step,
            semantics=spec.semantics, numerics=switches, merge_history=history_info, transformer_calls=calls,
            cfg=guidance.cfg, reference_tokens=0 if refs is None else refs.count,
            reference_shapes=[] if refs is None else [list(x) for x in refs.per_image])


__all__ = ["Engine", "EngineStats", "RenderResult", "ModelError"]

