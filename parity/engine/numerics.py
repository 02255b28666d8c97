"""Each small numerical choice of a FLUX.2 render, as one named function with an ablation switch.

AI Toolkit's choice is the default of every switch; `spec.numerics` (e.g. {"timestep_path": "diffusers"}) turns a
detail to the stock diffusers behaviour so diagnosis can show what it costs. References are to
shared/reference/aitk-flux2-previews.md (sections C, E) and bit-exact-numerics.md (details 1-10; issue 11 refines
bf16/fp8 details further). AI Toolkit paths are relative to extensions_built_in/diffusion_models/flux2/ unless noted.
"""

from __future__ import annotations

from typing import Mapping

import torch

# switch name -> allowed values (first = AI Toolkit's behaviour, the default)
SWITCHES: dict[str, tuple[str, ...]] = {
    "timestep_path": ("aitk", "diffusers"),
    "euler": ("aitk", "diffusers"),
    "postprocess": ("aitk", "diffusers"),
    "lora_merge": ("aitk", "bf16_delta"),
    "lora_live": ("aitk", "single_round"),
    "te_cast": ("aitk", "diffusers"),
    "qk_norm": ("aitk", "diffusers"),
    "rope": ("aitk", "diffusers"),
    "vae_silu": ("aitk", "diffusers"),
    "vae_attention": ("aitk", "diffusers"),
    "lokr_live": ("aitk", "fp32"),
}

# switches applied by module hooks installed once per loaded model (see install_* / set_modes below)
TRANSFORMER_SWITCHES = ("qk_norm", "rope")
VAE_SWITCHES = ("vae_silu", "vae_attention")


def resolve_switches(numerics: Mapping[str, str] | tuple = (), semantics: str = "aitk") -> dict[str, str]:
    """Full switch table for a render: defaults follow the semantics ('diffusers' semantics uses the diffusers
    value of every detail), then explicit entries win. Raises ValueError on an unknown switch or value."""
    given = dict(numerics)
    out: dict[str, str] = {}
    for name, values in SWITCHES.items():
        default = values[0]
        if semantics == "diffusers" and "diffusers" in values:
            default = "diffusers"
        out[name] = given.pop(name, default)
        if out[name] not in values:
            raise ValueError(f"numerics switch {name}={out[name]!r}: expected one of {', '.join(values)}")
    if given:
        raise ValueError(f"unknown numerics switch(es) {', '.join(sorted(given))}; known: {', '.join(SWITCHES)}")
    return out


def timestep_input(t: float, dtype: torch.dtype, path: str = "aitk") -> torch.Tensor:
    """The `timestep` tensor (shape (1,)) handed to Flux2Transformer2DModel, which computes `timestep.to(dtype)*1000`
    (transformer_flux2.py forward).
    aitk: `t_vec = torch.full((B,), t_curr, dtype=img.dtype)` (src/pipeline.py L385-431), so the model rounds t to
    the model dtype and multiplies by 1000 in that dtype, as BFL's `timestep_embedding` does (src/model.py L476-499).
    diffusers: the scheduler timestep is fp32 `1000*sigma`; the pipeline casts it to the latent dtype and divides
    by 1000 in that dtype (pipeline_flux2.py `timestep = t.expand(B).to(latents.dtype)`, `timestep / 1000`): in bf16
    about 1 step in 4 embeds a different value (bit-exact-numerics.md detail 1)."""
    if path == "aitk":
        return torch.full((1,), t, dtype=dtype)
    ts = torch.tensor([t * 1000.0], dtype=torch.float32)  # scheduler.timesteps = sigmas * 1000 (fp32)
    return ts.to(dtype) / 1000


def euler_step(x: torch.Tensor, v: torch.Tensor, t_cur: float, t_next: float, path: str = "aitk") -> torch.Tensor:
    """One flow-matching Euler step.
    aitk: `img = img + (t_prev - t_curr) * pred` with a Python-float dt, all in the latent dtype: two roundings
    per step in bf16 (src/pipeline.py L385-431; bit-exact-numerics.md detail 6).
    diffusers: FlowMatchEulerDiscreteScheduler.step upcasts the sample to fp32, `dt` is a 0-dim fp32 tensor (so
    `dt * v` stays in v's dtype by type promotion), adds in fp32 and casts back to v's dtype."""
    if path == "aitk":
        return x + (t_next - t_cur) * v
    dt = torch.tensor(t_next, dtype=torch.float32) - torch.tensor(t_cur, dtype=torch.float32)
    return (x.to(torch.float32) + dt.to(v.device) * v).to(v.dtype)


def latent_bn_denormalize(z: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                          eps: float) -> torch.Tensor:
    """Undo the VAE latent batch norm, in the VAE's dtype with its (same-dtype) buffers, as BFL's
    `AutoEncoder.inv_normalize` does: `z * sqrt(running_var + eps) + running_mean` (src/autoencoder.py decode;
    eps 1e-4). z: (B, 128, h, w)."""
    dtype = running_var.dtype
    s = torch.sqrt(running_var.view(1, -1, 1, 1) + eps)
    m = running_mean.view(1, -1, 1, 1)
    return z.to(dtype) * s + m


def unpatchify(z: torch.Tensor) -> torch.Tensor:
    """(B, C*4, h, w) -> (B, C, 2h, 2w): einops `(c pi pj) i j -> c (i pi) (j pj)` (src/autoencoder.py decode)."""
    b, c4, h, w = z.shape
    z = z.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c4 // 4, h * 2, w * 2)


def postprocess(decoded: torch.Tensor, path: str = "aitk") -> tuple["np.ndarray", "np.ndarray"]:  # noqa: F821
    """VAE output (1, 3, H, W) in [-1, 1] -> (uint8 HxWx3, fp32 [0,1] HxWx3).
    aitk: `ae.decode(x).float()` first, then diffusers' VaeImageProcessor: `(x/2+0.5).clamp(0,1)` in fp32,
    `(x*255).round().astype(uint8)` (src/pipeline.py L436-444).
    diffusers: Flux2Pipeline denormalises and clamps on the VAE-dtype tensor and only then converts to fp32
    (image_processor.py postprocess / pt_to_numpy; bit-exact-numerics.md detail 10)."""
    if path == "aitk":
        x = (decoded.float() / 2 + 0.5).clamp(0, 1)
    else:
        x = (decoded / 2 + 0.5).clamp(0, 1).float()
    arr = x[0].permute(1, 2, 0).cpu().numpy()
    return (arr * 255).round().astype("uint8"), arr


def merge_lora_weight(weight: torch.Tensor, delta_fp32: torch.Tensor, multiplier: float, scale: float,
                      path: str = "aitk") -> torch.Tensor:
    """Merged LoRA: the new weight, same dtype as `weight`.
    aitk: `weight = weight.float() + multiplier * (up @ down) * scale`, written back with one cast to the
    weight dtype (toolkit/network_mixins.py merge_in; bit-exact-numerics.md detail 7).
    bf16_delta: the delta is rounded to the weight dtype before the add (what a low-precision merge does)."""
    if path == "aitk":
        return (weight.float() + multiplier * delta_fp32 * scale).to(weight.dtype)
    return weight + (multiplier * delta_fp32 * scale).to(weight.dtype)


def live_lora_output(base_out: torch.Tensor, lora_out_fp32: torch.Tensor, multiplier: float, scale: float,
                     path: str = "aitk") -> torch.Tensor:
    """Live (unmerged) LoRA: `org_forwarded + ((lora_up(lora_down(x_fp32)) * scale) * multiplier).to(dtype)`
    (toolkit/network_mixins.py functional_forward): the fp32 branch is rounded once to the base output dtype.
    single_round: base and branch added in fp32 and rounded once (as a fused fp32 implementation would)."""
    if path == "aitk":
        return base_out + ((lora_out_fp32 * scale) * multiplier).to(base_out.dtype)
    return (base_out.float() + (lora_out_fp32 * scale) * multiplier).to(base_out.dtype)


# ------------------------------------------------------------------------------------------------ transformer
def qk_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, path: str = "aitk") -> torch.Tensor:
    """RMSNorm of q or k over the head dimension (last axis), output in x's dtype.
    aitk: BFL's RMSNorm as AI Toolkit's FLUX.2 model uses it (src/model.py QKNorm, L144-552 region;
    bit-exact-numerics.md detail 4): normalise in fp32, ROUND to x's dtype, then multiply by the (bf16) scale in
    x's dtype: two roundings in bf16.
    diffusers: `torch.nn.RMSNorm` (transformer_flux2.py Flux2Attention.norm_q/norm_k): upcasts internally and
    rounds once at the end; about 1 element in 4 differs by one bf16 step."""
    if path == "aitk":
        xf = x.float()
        rrms = torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + eps)
        return (xf * rrms).to(x.dtype) * weight.to(x.dtype)
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)


class QKNorm(torch.nn.Module):
    """Drop-in for the `torch.nn.RMSNorm` q/k norms of Flux2Attention / Flux2ParallelSelfAttention. Keeps the
    original `weight` Parameter (same state_dict key), so LoRA, quantization and state_dict comparisons see the
    same model. `mode` is set per render from the `qk_norm` switch."""

    def __init__(self, norm: torch.nn.RMSNorm):
        super().__init__()
        self.weight = norm.weight
        self.eps = float(norm.eps) if norm.eps is not None else float(torch.finfo(norm.weight.dtype).eps)
        self.mode = "aitk"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return qk_rmsnorm(x, self.weight, self.eps, self.mode)


def rope_1d(pos: torch.Tensor, dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (S, dim) fp32, each frequency repeated twice (interleaved pairs), angles computed in `dtype`:
    omega_j = 1 / theta**(2j/dim), angle = pos * omega (BFL `rope`, src/math.py)."""
    scale = torch.arange(0, dim, 2, dtype=dtype, device=pos.device) / dim
    omega = 1.0 / (theta ** scale)
    ang = pos.to(dtype).unsqueeze(-1) * omega
    return (ang.cos().repeat_interleave(2, dim=-1).float(), ang.sin().repeat_interleave(2, dim=-1).float())


class RopeEmbed(torch.nn.Module):
    """Drop-in for Flux2PosEmbed: ids (S, 4) -> (cos, sin) each (S, sum(axes_dim)) fp32.
    aitk: angles and cos/sin computed in fp32, as AI Toolkit's FLUX.2 model does (bit-exact-numerics.md detail 5;
    aitk-flux2-previews.md section C step 11 "RoPE ... computed in fp32").
    diffusers: fp64 angles and cos/sin rounded to fp32 (Flux2PosEmbed -> get_1d_rotary_pos_embed(freqs_dtype=
    float64)). The rotation itself (fp32 products, cast back) is the same arithmetic in both, so only the tables
    are switched."""

    def __init__(self, orig: torch.nn.Module):
        super().__init__()
        self.orig = orig
        self.theta = orig.theta
        self.axes_dim = list(orig.axes_dim)
        self.mode = "aitk"

    def forward(self, ids: torch.Tensor):
        if self.mode != "aitk":
            return self.orig(ids)
        pos = ids.float()
        parts = [rope_1d(pos[..., i], d, self.theta, torch.float32) for i, d in enumerate(self.axes_dim)]
        return torch.cat([c for c, _ in parts], dim=-1), torch.cat([s for _, s in parts], dim=-1)


def install_transformer_numerics(model) -> int:
    """Swap the q/k RMSNorms for `QKNorm` and the position embedder for `RopeEmbed` (idempotent). Returns the
    number of norms swapped."""
    n = 0
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, torch.nn.RMSNorm) and child_name in ("norm_q", "norm_k", "norm_added_q",
                                                                      "norm_added_k"):
                setattr(mod, child_name, QKNorm(child))
                n += 1
    if hasattr(model, "pos_embed") and not isinstance(model.pos_embed, RopeEmbed):
        model.pos_embed = RopeEmbed(model.pos_embed)
    return n


# ------------------------------------------------------------------------------------------------ VAE
class Swish(torch.nn.Module):
    """Drop-in for the VAE decoder's nn.SiLU.
    aitk: BFL's `swish(x) = x * torch.sigmoid(x)` (src/autoencoder.py, used by AI Toolkit's FLUX.2 VAE): the
    sigmoid is rounded to bf16 before the product (two roundings). diffusers: `F.silu`, one rounding
    (bit-exact-numerics.md detail 9)."""

    def __init__(self):
        super().__init__()
        self.mode = "aitk"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x) if self.mode == "aitk" else torch.nn.functional.silu(x)


def vae_attention_to_image(o: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """SDPA output (B, 1, h*w, C) -> (B, C, h, w) as the view einops' `rearrange(o, "b 1 (h w) c -> b c h w")`
    makes it in BFL's AttnBlock (src/autoencoder.py L61): reshape to (B, h, w, C), then permute. The values are
    the same for any route, the strides are not (`squeeze/permute/reshape` gives the size-1 batch another
    stride), and the 1x1 `proj_out` convolution picks its kernel by the layout, so other bf16 roundings follow
    (docs/numerics.md "Operation structure")."""
    b, _, _, c = o.shape
    return o.reshape(b, h, w, c).permute(0, 3, 1, 2)


class VaeAttnProcessor:
    """Processor for the VAE mid-block attention.
    aitk: BFL's AttnBlock (src/autoencoder.py): GroupNorm, q/k/v as 1x1 convolutions on (B, C, H, W), each
    rearranged `b c h w -> b 1 (h w) c` and made contiguous, SDPA, back to (B, C, H, W), 1x1-conv proj_out,
    `x + proj_out(h)`. The diffusers weights (Linear, (C, C)) are used as (C, C, 1, 1) conv kernels.
    diffusers: the original AttnProcessor2_0 (Linear layers on (B, HW, C), heads view, to_out) — same maths,
    other kernels, so different bf16 roundings (bit-exact-numerics.md detail 9)."""

    def __init__(self, orig):
        self.orig = orig
        self.mode = "aitk"

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if self.mode != "aitk" or encoder_hidden_states is not None or attention_mask is not None:
            return self.orig(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        x = hidden_states
        b, c, h, w = x.shape
        hn = attn.group_norm(x)

        def conv(lin, t):
            return torch.nn.functional.conv2d(t, lin.weight.view(*lin.weight.shape, 1, 1), lin.bias)

        q, k, v = (conv(attn.to_q, hn), conv(attn.to_k, hn), conv(attn.to_v, hn))
        q, k, v = (t.reshape(b, c, h * w).permute(0, 2, 1).unsqueeze(1).contiguous() for t in (q, k, v))
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)       # (B, 1, HW, C)
        o = vae_attention_to_image(o, h, w)
        out = x + conv(attn.to_out[0], o)
        return out / attn.rescale_output_factor if attn.rescale_output_factor != 1.0 else out


def install_vae_numerics(vae) -> int:
    """Swap the decoder's and encoder's nn.SiLU modules for `Swish` and their attention processors for
    `VaeAttnProcessor` (idempotent). Returns the number of activations swapped."""
    n = 0
    # the encoder too: BFL's Encoder uses the same swish and AttnBlock, and it runs for reference images
    coders = [vae.decoder] + ([vae.encoder] if getattr(vae, "encoder", None) is not None else [])
    for mod in [m for c in coders for m in c.modules()]:
        for child_name, child in list(mod.named_children()):
            if isinstance(child, torch.nn.SiLU):
                setattr(mod, child_name, Swish())
                n += 1
    for mod in [m for c in coders for m in c.modules()]:
        if hasattr(mod, "set_processor") and hasattr(mod, "group_norm") and mod.group_norm is not None:
            proc = mod.processor
            if not isinstance(proc, VaeAttnProcessor):
                mod.set_processor(VaeAttnProcessor(proc))
    return n


def set_modes(model, switches: Mapping[str, str]) -> None:
    """Point every installed numerics module of a transformer or VAE at the render's switch values."""
    for mod in model.modules():
        if isinstance(mod, QKNorm):
            mod.mode = switches["qk_norm"]
        elif isinstance(mod, RopeEmbed):
            mod.mode = switches["rope"]
        elif isinstance(mod, Swish):
            mod.mode = switches["vae_silu"]
        proc = getattr(mod, "processor", None)
        if isinstance(proc, VaeAttnProcessor):
            proc.mode = switches["vae_attention"]


# ------------------------------------------------------------------------------------------------ quantization
FP8_E4M3_MAX = 448.0


def qfloat8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """optimum-quanto qfloat8 weight quantization, re-derived in plain PyTorch: returns (fp8 data (out, in)
    float8_e4m3fn, scale (out, 1) in the weight dtype, dequantized weight in the weight dtype).
    scale = max|W_row| / 448 (computed in fp32, stored in the weight dtype); data = fp8(W / scale) (the division
    in the weight dtype); dequantized = data.to(dtype) * scale, which QLinear uses as an ordinary Linear weight
    (bias added by the same F.linear). AI Toolkit: `quantize(model, weights=qfloat8)` + `freeze` on every Linear
    of the transformer and, with quantize_te, of Mistral (toolkit/util/quantize.py L264-476, flux2_model.py
    L108-111; bit-exact-numerics.md detail 2)."""
    scale = (weight.abs().amax(dim=1, keepdim=True).float() / FP8_E4M3_MAX).to(weight.dtype)
    data = (weight / scale).to(torch.float8_e4m3fn)
    return data, scale, data.to(weight.dtype) * scale


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes in its own dtype (bf16 included), contiguous, on CPU."""
    import hashlib

    data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()
