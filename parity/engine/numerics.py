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
}


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


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes in its own dtype (bf16 included), contiguous, on CPU."""
    import hashlib

    data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()
