"""The engine beside AI Toolkit's own FLUX.2 code, in one process on the same inputs: the computation structure
(operations, order, shapes, memory layouts) held bit for bit on any machine, where the golden PNGs can only be held
on the CPU that rendered them (docs/numerics.md "Operation structure").

Needs `AI_TOOLKIT_PATH`, a checkout of ostris/ai-toolkit (27a03a91 was compared): its
`extensions_built_in/diffusion_models/flux2/src/model.py` and `autoencoder.py` import only torch and einops, so they
load by path without the rest of AI Toolkit. Skipped without it. Sizes and prompt lengths the oracle does not use.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from parity.engine import numerics
from parity.engine.render import Engine
from parity.engine.sampling import aitk_decode, aitk_denoise, make_noise
from parity.engine.schedule import aitk_sigmas

SRC = Path(os.environ.get("AI_TOOLKIT_PATH", "/nonexistent")) / "extensions_built_in" / "diffusion_models" / "flux2" / "src"
pytestmark = pytest.mark.skipif(not (SRC / "model.py").is_file(),
                                reason="AI_TOOLKIT_PATH is not set to a checkout of ostris/ai-toolkit")
BF16 = torch.bfloat16
ORACLE_DEV = Path(os.environ.get("PARITY_ORACLE", Path(__file__).resolve().parents[2] / "shared" / "oracle")) / "tiny-flux2"


def _aitk_module(name: str):
    spec = importlib.util.spec_from_file_location(f"aitk_flux2_{name}", SRC / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cast_state(path: Path, dtype) -> dict:
    from safetensors.torch import load_file

    return {k: v.to(dtype) for k, v in load_file(str(path)).items()}  # flux2_model.py load_model: cast every tensor


def _aitk_transformer(root: Path, dtype):
    """AI Toolkit's Flux2 with the checkpoint's shapes, loaded as flux2_model.py load_model does."""
    m = _aitk_module("model")
    cfg = json.loads((root / "transformer" / "config.json").read_text())
    params = m.Flux2Params(in_channels=cfg["in_channels"], context_in_dim=cfg["joint_attention_dim"],
                           hidden_size=cfg["num_attention_heads"] * cfg["attention_head_dim"],
                           num_heads=cfg["num_attention_heads"], depth=cfg["num_layers"],
                           depth_single_blocks=cfg["num_single_layers"], axes_dim=list(cfg["axes_dims_rope"]),
                           theta=cfg["rope_theta"], mlp_ratio=cfg["mlp_ratio"], use_guidance_embed=cfg["guidance_embeds"])
    with torch.device("meta"):
        model = m.Flux2(params)
    model.load_state_dict(_cast_state(root / "flux2-dev.safetensors", dtype), assign=True)
    return model.eval()


class FirstCall:
    """Wraps the engine's transformer and keeps the first prediction."""

    def __init__(self, inner):
        self.inner, self.pred = inner, None

    def __call__(self, **kw):
        out = self.inner(**kw)
        if self.pred is None:
            self.pred = out[0]
        return out


@pytest.mark.parametrize("width,height", [(80, 48), (96, 96)])
def test_step0_prediction_is_ai_toolkits_bit_for_bit(tiny_model_dir, width, height):
    """src/pipeline.py L343-412 on AI Toolkit's Flux2: latents through `batched_prc_img` (rearrange + stack), ids
    from `cartesian_prod`, `t` and guidance as `full((1,), v, bf16)`; the engine's first transformer call gives the
    same bf16 prediction. (Under portable numerics 96x96 is a size where the permuted-view packing of 02e7726
    changes this prediction for the tiny model; the contiguity test in test_numerics_details fails on any CPU.)"""
    from einops import rearrange

    engine = Engine(tiny_model_dir, cache_dir=None, max_length=64)
    embeds = engine.embeddings("a lighthouse on a cliff at dawn", "bf16", None).to(BF16)
    sigmas, _ = aitk_sigmas(width, height, 2)
    noise = make_noise(5, width, height, BF16)
    first = FirstCall(engine.transformer("bf16", None))
    aitk_denoise(first, embeds, noise, sigmas, 3.5, numerics.resolve_switches())

    _, _, h, w = noise.shape
    x = torch.stack([rearrange(noise[0], "c h w -> (h w) c")])
    ar = torch.arange
    x_ids = torch.cartesian_prod(ar(1), ar(h), ar(w), ar(1))[None]
    ctx_ids = torch.cartesian_prod(ar(1), ar(1), ar(1), ar(embeds.shape[1]))[None]
    with torch.no_grad():
        want = _aitk_transformer(Path(tiny_model_dir), BF16)(
            x=x, x_ids=x_ids, timesteps=torch.full((1,), sigmas[0], dtype=BF16), ctx=embeds, ctx_ids=ctx_ids,
            guidance=torch.full((1,), 3.5, dtype=BF16))
    assert torch.equal(first.pred, want)


@pytest.mark.skipif(not (ORACLE_DEV / "ae.safetensors").is_file(), reason="the oracle's tiny FLUX.2 VAE is absent")
@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_decode_is_ai_toolkits_bit_for_bit(dtype):
    """src/autoencoder.py AutoEncoder.decode (BN inverse, unpatchify, the BFL decoder with its AttnBlock) and
    pipeline.py L436-444 (`.float()`, then the image processor's denormalise, clamp, round): the engine's decode
    gives the same pixels. The oracle's tiny VAE (AI Toolkit's AutoEncoder hard-codes 32 norm groups)."""
    a = _aitk_module("autoencoder")
    cfg = json.loads((ORACLE_DEV / "vae" / "config.json").read_text())
    bo = cfg["block_out_channels"]
    params = a.AutoEncoderParams(ch=bo[0], ch_mult=[c // bo[0] for c in bo], num_res_blocks=cfg["layers_per_block"],
                                 z_channels=cfg["latent_channels"])
    with torch.device("meta"):
        ae = a.AutoEncoder(params)
    ae.load_state_dict(_cast_state(ORACLE_DEV / "ae.safetensors", dtype), assign=True)
    latents = (torch.randn(1, 128, 7, 5, generator=torch.Generator().manual_seed(9)) * 0.8).to(dtype)
    engine = Engine(ORACLE_DEV, cache_dir=None)
    got, _ = aitk_decode(engine.vae("bf16" if dtype == BF16 else "fp32"), latents, numerics.resolve_switches())
    with torch.no_grad():
        img = ae.eval().decode(latents).float()
    want = ((img / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    assert (got == want).all()
