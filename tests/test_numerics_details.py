"""The bf16 numerics details that decide pixels, pinned at tensor level against AI Toolkit's arithmetic as its
source writes it (re-derived here, not imported from parity), on the real tiny transformer.

These hold on any CPU: each compares two computations on the same machine, so no kernel difference between this
machine and the one that rendered `../shared/oracle` can hide a change (tests/test_golden_oracle.py explains why
the whole-render golden tests are bit-exact only on the oracle's CPU). benchmarks/mutation.py shows that each
test fails when its detail is changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from parity.engine import numerics
from parity.engine.lora import LoraApplier, _rows, parse_lora, plan
from parity.engine.render import Engine
from parity.engine.sampling import aitk_denoise, image_ids, make_noise, text_ids
from parity.engine.schedule import aitk_sigmas

pytestmark = pytest.mark.quick
BF16 = torch.bfloat16
MULTIPLIER = 0.8


@pytest.fixture(scope="module")
def bf16_engine(tiny_model_dir):
    return Engine(tiny_model_dir, cache_dir=None, max_length=64)


def _lora_file(tiny_model_dir) -> str:
    return str(Path(tiny_model_dir) / "loras" / "tiny_lora.safetensors")


class RecordingTransformer:
    """Calls the real transformer and keeps what went in and came out of every call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, **kw):
        out = self.inner(**kw)
        self.calls.append({k: kw[k].clone() for k in ("hidden_states", "timestep", "guidance")} | {"pred": out[0]}
                          | {"contiguous": kw["hidden_states"].is_contiguous()})
        return out


def test_denoise_loop_is_ai_toolkits_bf16_euler_with_bf16_t_and_guidance(bf16_engine):
    """src/pipeline.py L385-431: `t_vec = torch.full((B,), t_curr, dtype=img.dtype)`, guidance
    `torch.full((B,), guidance, dtype=img.dtype)`, `img = img + (t_prev - t_curr) * pred` in the latent dtype
    with a Python-float step (two bf16 roundings per element and step)."""
    model = RecordingTransformer(bf16_engine.transformer("bf16", None))
    sigmas, _ = aitk_sigmas(64, 48, 6)
    noise = make_noise(3, 64, 48, BF16)
    embeds = bf16_engine.embeddings("a red fox in the snow", "bf16", None)
    switches = numerics.resolve_switches()
    out = aitk_denoise(model, embeds, noise, sigmas, 3.5, switches).latents

    assert len(model.calls) == len(sigmas) - 1
    x = model.calls[0]["hidden_states"]
    assert x.dtype == BF16 and torch.equal(x, noise.reshape(1, 128, -1).permute(0, 2, 1))
    for i, call in enumerate(model.calls):
        assert torch.equal(call["timestep"], torch.full((1,), sigmas[i], dtype=BF16)), i
        assert torch.equal(call["guidance"], torch.full((1,), 3.5, dtype=BF16)), i
        x = x + (sigmas[i + 1] - sigmas[i]) * call["pred"]          # AI Toolkit's update, bf16 throughout
        if i + 1 < len(model.calls):
            assert torch.equal(model.calls[i + 1]["hidden_states"], x), f"step {i}"
    assert torch.equal(out, x.permute(0, 2, 1).reshape(out.shape))


def test_transformer_gets_contiguous_tokens_as_ai_toolkits_stacked_prc_img(bf16_engine):
    """src/sampling.py prc_img + batched_wrapper (L108-166): the latents are rearranged `c h w -> (h w) c` and
    `torch.stack`ed, which copies them into a contiguous (B, h*w, C) tensor, and the Euler update keeps that layout.
    A permuted view of the same values is a transposed GEMM operand for `img_in`, whose bf16 kernel rounds
    differently (docs/numerics.md "Operation structure"). 80x48 and a 64-token prompt: a shape the oracle does not use."""
    model = RecordingTransformer(bf16_engine.transformer("bf16", None))
    sigmas, _ = aitk_sigmas(80, 48, 3)
    noise = make_noise(11, 80, 48, BF16)
    embeds = bf16_engine.embeddings("a lighthouse on a cliff at dawn", "bf16", None)
    aitk_denoise(model, embeds, noise, sigmas, 3.5, numerics.resolve_switches())
    stacked = torch.stack([noise[0].permute(1, 2, 0).reshape(-1, noise.shape[1])])  # AI Toolkit's prc_img + stack
    first = model.calls[0]["hidden_states"]
    assert torch.equal(first, stacked)
    for i, call in enumerate(model.calls):
        assert call["contiguous"], f"step {i}: the transformer got a permuted view"
    with torch.no_grad():
        want = model.inner(hidden_states=stacked, encoder_hidden_states=embeds.to(BF16),
                           timestep=torch.full((1,), sigmas[0], dtype=BF16), img_ids=image_ids(3, 5),
                           txt_ids=text_ids(embeds.shape[1]), guidance=torch.full((1,), 3.5, dtype=BF16),
                           return_dict=False)[0]
    assert torch.equal(model.calls[0]["pred"], want)


def _lora_targets(model, path):
    """(diffusers module, fp32 B@A rows for it, alpha/rank) per target; the product over the whole fused BFL
    module first, then its rows (AI Toolkit merges into its fused qkv / modulation Linears)."""
    out = []
    for p in plan(model, parse_lora(path), path):
        t = p.lora.tensors
        full = t["B"].float() @ t["A"].float()
        scale = float(t["alpha"]) / t["A"].shape[0] if "alpha" in t else 1.0
        out.append((p, _rows(full, p), scale))
    return out


def test_merged_lora_is_one_fp32_sum_cast_once_to_bf16(tiny_model_dir):
    """toolkit/network_mixins.py merge_in (L425-440): `weight = weight.float() + multiplier * (up @ down) *
    scale` in fp32, written back with one cast to the weight dtype."""
    engine = Engine(tiny_model_dir, cache_dir=None, max_length=64)
    model = engine.transformer("bf16", None)
    path = _lora_file(tiny_model_dir)
    before = {n: w.detach().clone() for n, w in model.named_parameters()}
    LoraApplier(model).apply(path, MULTIPLIER, "merged", numerics.resolve_switches())
    targets = _lora_targets(model, path)
    assert targets
    for p, delta, scale in targets:
        want = (before[f"{p.module}.weight"].float() + MULTIPLIER * delta * scale).to(BF16)
        assert torch.equal(model.get_submodule(p.module).weight, want), p.module


def test_live_lora_adds_the_fp32_branch_rounded_once_to_the_bf16_output(tiny_model_dir):
    """toolkit/network_mixins.py functional_forward: the LoRA runs on `x.float()` in fp32,
    `lx * scale * multiplier`, cast to the base output dtype, and added to the base Linear's bf16 output."""
    engine = Engine(tiny_model_dir, cache_dir=None, max_length=64)
    model = engine.transformer("bf16", None)
    path = _lora_file(tiny_model_dir)
    LoraApplier(model).apply(path, MULTIPLIER, "live", numerics.resolve_switches())
    g = torch.Generator().manual_seed(5)
    for p, _, scale in _lora_targets(model, path):
        lin = model.get_submodule(p.module)
        x = (torch.randn(1, 7, lin.in_features, generator=g) * 2).to(BF16)
        t = p.lora.tensors
        branch = torch.nn.functional.linear(torch.nn.functional.linear(x.float(), t["A"].float()),
                                            _rows(t["B"].float(), p))
        base = torch.nn.functional.linear(x, lin.weight, lin.bias)
        with torch.no_grad():
            got = lin(x)
        assert torch.equal(got, base + ((branch * scale) * MULTIPLIER).to(BF16)), p.module


def test_render_size_is_floored_to_16_as_flux2_model_does(bf16_engine):
    """flux2_model.py L295-300: `width // 16 * 16` at render time, also for sizes that did not come through the job
    reader's floors (--set width=..., request files)."""
    from parity.spec import RenderSpec

    r = bf16_engine.render(RenderSpec(prompt="a red fox in the snow", width=100, height=72, seed=1, sample_steps=2,
                                      guidance_scale=3.5, dtype="bf16"))
    assert (r.width, r.height) == (96, 64) and r.image.shape == (64, 96, 3)


def test_vae_attention_hands_proj_out_the_layout_einops_gives(bf16_engine, monkeypatch):
    """BFL's AttnBlock (src/autoencoder.py L50-65): q, k, v as 1x1 convolutions, each `rearrange`d to
    `b 1 (h w) c` and made contiguous, SDPA, then `rearrange(h_, "b 1 (h w) c -> b c h w")` (a view) into the 1x1
    `proj_out`, and `x + proj_out(...)`. The convolution chooses its kernel by the layout of that view, so the
    layout is part of the computation (docs/numerics.md "Operation structure"). Reference written with einops, as
    AI Toolkit's code is; 7x9, a size the oracle's decoder does not see."""
    from einops import rearrange

    attn = bf16_engine.vae("bf16").decoder.mid_block.attentions[0]
    c = attn.to_q.weight.shape[0]
    x = (torch.randn(1, c, 7, 9, generator=torch.Generator().manual_seed(4)) * 3).to(BF16)
    conv2d = torch.nn.functional.conv2d
    seen = []

    def spy(inp, weight, *args, **kwargs):
        seen.append(inp.stride())
        return conv2d(inp, weight, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    with torch.no_grad():
        got = attn(x)
    monkeypatch.undo()

    def one_by_one(lin, t):
        return conv2d(t, lin.weight[:, :, None, None], lin.bias)

    with torch.no_grad():
        h = attn.group_norm(x)
        q, k, v = (rearrange(one_by_one(lin, h), "b c h w -> b 1 (h w) c").contiguous()
                   for lin in (attn.to_q, attn.to_k, attn.to_v))
        o = rearrange(torch.nn.functional.scaled_dot_product_attention(q, k, v), "b 1 (h w) c -> b c h w", h=7, w=9)
        want = x + one_by_one(attn.to_out[0], o)
    assert seen[-1] == o.stride(), "proj_out got another layout than einops' view"
    assert torch.equal(got, want)
