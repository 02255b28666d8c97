"""The denoising loops: AI Toolkit's FLUX.2 preview loop around diffusers' transformer, and stock Flux2Pipeline.

`aitk_denoise` follows AI Toolkit's src/pipeline.py `Flux2Pipeline.__call__` (L236-444; aitk-flux2-previews.md
section C steps 7-14) with each numerical detail delegated to `numerics` so it can be ablated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from parity.engine import numerics


def make_noise(seed: int, width: int, height: int, dtype: torch.dtype) -> torch.Tensor:
    """(1, 128, H/16, W/16) initial noise. AI Toolkit seeds the global CPU generator (`torch.manual_seed(seed)`,
    base_model.py L511-514) and draws `randn(shape, generator, device='cpu', dtype=bf16)` (src/pipeline.py
    L351-360); a fresh CPU generator seeded the same gives the same numbers without touching global state."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn((1, 128, height // 16, width // 16), generator=g, device="cpu", dtype=dtype)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C), row-major tokens (`c h w -> (h w) c`, src/sampling.py prc_img L149-163),
    CONTIGUOUS: AI Toolkit's `batched_prc_img` stacks the rearranged views (L109-124), which copies them
    (diffusers' `_pack_latents` returns the permuted view). The layout decides bits: a transposed bf16 input
    sends the first Linear (`img_in`) down another GEMM path, so a permuted view changes about half of the
    step-0 prediction by a bf16 step (docs/numerics.md "Operation structure")."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h * w).permute(0, 2, 1).contiguous()


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h*w, C) -> (B, C, h, w), the inverse of `pack` (AI Toolkit scatters by ids to the same layout)."""
    b, _, c = tokens.shape
    return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


def image_ids(h: int, w: int) -> torch.Tensor:
    """(1, h*w, 4) int64 position ids (t=0, row, col, l=0)."""
    ids = torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1))
    return ids.unsqueeze(0)


def text_ids(length: int) -> torch.Tensor:
    """(1, L, 4) int64 ids (0, 0, 0, l)."""
    ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(length))
    return ids.unsqueeze(0)


@dataclass
class DenoiseResult:
    latents: torch.Tensor        # (1, 128, h, w) in the latent dtype
    nan_step: int | None
    calls: int = 0               # transformer forward passes (2 per step under CFG)


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


@dataclass(frozen=True)
class Guidance:
    """How the transformer is guided. `cfg`: True for the models AI Toolkit runs with true CFG (FLUX.2 [klein]
    base: `is_guidance_distilled=False`, flux2_klein_model.py L15) AND guidance_scale > 1 (src/pipeline.py
    L298-302); then `negative` (1, L, D) is the unconditional context."""

    scale: float
    cfg: bool = False
    negative: torch.Tensor | None = None


def _transformer_call(transformer, img, embeds, t_vec, ids_img, ids_txt, g):
    return transformer(hidden_states=img, encoder_hidden_states=embeds, timestep=t_vec, img_ids=ids_img,
                       txt_ids=ids_txt, guidance=g, return_dict=False)[0]


@torch.no_grad()
def aitk_denoise(transformer, prompt_embeds: torch.Tensor, noise: torch.Tensor, sigmas: list[float],
                 guidance: float | Guidance, switches: dict[str, str], device="cpu", refs=None) -> DenoiseResult:
    """AI Toolkit's loop (src/pipeline.py L368-431). Guidance-distilled FLUX.2-dev: one transformer call per
    step, guidance only through the guidance embedding (`full((B,), g, dtype)` -> the model's `g*1000`).
    [klein] base with CFG: a conditional call, then an unconditional call with the negative context, combined
    `uncond + g * (cond - uncond)` in the latent dtype. `refs` (parity.engine.refs.ReferenceTokens): reference
    tokens appended after the image tokens every call, the prediction sliced back to the image tokens.
    Euler update in the latent dtype. `calls` on the result counts transformer forward passes."""
    gd = guidance if isinstance(guidance, Guidance) else Guidance(float(guidance))
    dtype = noise.dtype
    _, _, h, w = noise.shape
    img = pack(noise).to(device)
    n_img = img.shape[1]
    embeds = prompt_embeds.to(device=device, dtype=dtype)  # base_model.py L697-700: embeds in the model dtype
    neg = gd.negative.to(device=device, dtype=dtype) if gd.cfg else None
    ids_img = image_ids(h, w).to(device)
    ids_txt = text_ids(embeds.shape[1]).to(device)
    ids_neg = text_ids(neg.shape[1]).to(device) if neg is not None else None
    if refs is not None:
        ids_img = torch.cat((ids_img, refs.ids.to(device)), dim=1)
    g = torch.full((1,), gd.scale, dtype=dtype, device=device)
    nan_step, calls = None, 0
    for i, (t_cur, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        t_vec = numerics.timestep_input(t_cur, dtype, switches["timestep_path"]).to(device)
        # torch.cat promotes the bf16 reference tokens to the latent dtype (fp32 runs), as AI Toolkit's cat does
        x_in = img if refs is None else torch.cat((img, refs.tokens.to(device)), dim=1)
        pred = _transformer_call(transformer, x_in, embeds, t_vec, ids_img, ids_txt, g)
        calls += 1
        if neg is not None:
            pred_uncond = _transformer_call(transformer, x_in, neg, t_vec, ids_img, ids_neg, g)
            calls += 1
            pred = pred_uncond + gd.scale * (pred - pred_uncond)
        if refs is not None:
            pred = pred[:, :n_img]
        img = numerics.euler_step(img, pred, t_cur, t_next, switches["euler"])
        if nan_step is None and not _finite(img):
            nan_step = i
    return DenoiseResult(unpack(img, h, w), nan_step, calls)


@torch.no_grad()
def aitk_decode(vae, latents: torch.Tensor, switches: dict[str, str]):
    """Latent BN denormalize (VAE dtype) + unpatchify + VAE decode + post-process -> (uint8, fp32) HxWx3."""
    vdtype = next(vae.parameters()).dtype
    dev = next(vae.parameters()).device
    z = numerics.latent_bn_denormalize(latents.to(dev), vae.bn.running_mean, vae.bn.running_var,
                                       float(vae.config.batch_norm_eps))
    z = numerics.unpatchify(z).to(vdtype)
    decoded = vae.decode(z, return_dict=False)[0]
    return numerics.postprocess(decoded, switches["postprocess"])


@torch.no_grad()
def diffusers_render(transformer, vae, scheduler_config: dict, prompt_embeds: torch.Tensor, *, width: int,
                     height: int, steps: int, guidance: float, seed: int, sigmas: list[float] | None,
                     device="cpu"):
    """Stock Flux2Pipeline on the already-loaded components (text encoder not needed: embeddings are passed).
    sigmas None: its own empirical schedule; otherwise the given N+1 sigmas through a static-shift scheduler
    (dynamic shifting off, shift 1: aitk-flux2-previews.md section E.3 recipe 1).
    Returns (uint8, fp32 [0,1]) HxWx3 and the scheduler's sigmas."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline

    cfg = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    if sigmas is None:
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
        call_sigmas = None
    else:
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg, use_dynamic_shifting=False, shift=1.0)
        call_sigmas = list(sigmas[:-1])
    pipe = Flux2Pipeline(scheduler=sched, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator("cpu").manual_seed(int(seed))
    dtype = next(transformer.parameters()).dtype
    out = pipe(prompt_embeds=prompt_embeds.to(device=device, dtype=dtype), height=height, width=width,
               num_inference_steps=steps, sigmas=call_sigmas, guidance_scale=guidance, generator=gen,
               output_type="np", return_dict=False)[0]
    arr = out[0].astype("float32")
    used = [float(s) for s in pipe.scheduler.sigmas.tolist()]
    return (arr * 255).round().astype("uint8"), arr, used


def any_nonfinite(arr) -> bool:
    import numpy as np

    return not bool(np.isfinite(arr).all())


__all__ = ["Guidance", "make_noise", "pack", "unpack", "image_ids", "text_ids", "aitk_denoise", "aitk_decode",
           "diffusers_render"]
