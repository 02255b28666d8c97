"""parity's LoKr arithmetic against a plain-PyTorch re-derivation of AI Toolkit's LokrModule.

The reference below is written from ostris/ai-toolkit 27a03a91 (toolkit/models/lokr.py, toolkit/network_mixins.py),
not from parity's code:
  - factorization (lokr.py L21-61): m <= n, m*n = dim, walking divisors up to `factor`;
  - Linear shapes (L164-198): w1 (out_l, in_m), w2 (out_k, in_n) or w2_a (out_k, r) @ w2_b (r, in_n);
  - scale (L209-215): alpha 0/None -> rank; both factors full -> alpha = rank; scale = alpha/rank, held as the
    fp32 0-dim `_runtime_scale` (network_mixins.py L182-195);
  - merge (L264-305 with get_weight L248-262, make_kron L70-76): W = cast(float(W) + (kron(w1, w2)*scale)*m);
    un-merge is merge with -m (network_mixins.py L364-368);
  - live (L340-397): in the base output's dtype, factor by factor, three einsums, multiplier cast to that dtype,
    added to the base output.
The engine applies files through `LoraApplier` onto a small module tree named like diffusers' FLUX.2 transformer,
so the BFL -> diffusers row split (fused qkv thirds, swapped final adaLN halves) is exercised too.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from parity.engine.lora import LoraApplier

# BFL module -> (out, in) and the diffusers modules it becomes (rows; swap)
QKV = "double_blocks.0.img_attn.qkv"          # (36, 24): 36 = 6*6, 24 = 4*6; q/k/v thirds
LIN2 = "single_blocks.0.linear2"              # (30, 40): 30 = 5*6, 40 = 5*8
ADALN = "final_layer.adaLN_modulation.1"      # (48, 24): 48 = 6*8, 24 = 4*6; BFL [shift; scale]
SHAPES = {QKV: (36, 24), LIN2: (30, 40), ADALN: (48, 24)}
ALPHA, RANK = 5.0, 3                           # decomposed modules: scale 5/3 (not a power of two)
MULT = 0.7


# ------------------------------------------------------------------------------------------------ reference
def aitk_factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """lokr.py L21-61 re-derived: the running sum bound `length` is set once to 1 + dimension and never
    updated, so only `factor` stops the walk over divisors before m >= n."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    limit = dimension if factor == -1 else factor
    m, n = 1, dimension
    while m < n:
        nm = next(d for d in range(m + 1, dimension + 1) if dimension % d == 0)
        if nm + dimension // nm > dimension + 1 or nm > limit:
            break
        m, n = nm, dimension // nm
    return (min(m, n), max(m, n))


def aitk_scale(f: dict) -> float:
    full_w1, full_w2 = "w1" in f, "w2" in f
    rank = f["w2_b"].shape[0] if not full_w2 else (f["w1_b"].shape[0] if not full_w1 else None)
    alpha = float(f["alpha"])
    if alpha == 0 or rank is None:     # L211-214
        return 1.0
    return alpha / rank


def aitk_w1(f: dict) -> torch.Tensor:
    return f["w1"].float() if "w1" in f else f["w1_a"].float() @ f["w1_b"].float()


def aitk_w2_full(f: dict) -> torch.Tensor:
    return f["w2"].float() if "w2" in f else f["w2_a"].float() @ f["w2_b"].float()


def aitk_merge(weight: torch.Tensor, f: dict, m: float) -> torch.Tensor:
    """LokrModule.merge_in: fp32 base, kron * fp32 runtime scale, times merge weight, one cast back."""
    w = weight.float()
    lokr_w = torch.kron(aitk_w1(f), aitk_w2_full(f)) * torch.tensor(aitk_scale(f), dtype=torch.float32)
    lokr_w = lokr_w.reshape(w.shape)
    return (w + (lokr_w * m).to(w.device, dtype=w.dtype)).to(weight.dtype)


def aitk_live_delta(x: torch.Tensor, f: dict, compute_dtype: torch.dtype, m: float) -> torch.Tensor:
    """The fused module's LoKr delta (..., out) in `compute_dtype`, multiplier applied (L359-395)."""
    w1 = aitk_w1(f)
    out_l, in_m = w1.shape
    in_n = x.shape[-1] // in_m
    X = x.to(compute_dtype).unflatten(-1, (in_m, in_n))
    A = w1.to(compute_dtype)
    if "w2" in f:
        tmp = torch.einsum('...qs,os->...qo', X, f["w2"].float().to(compute_dtype))
    else:
        tmp = torch.einsum('...qs,rs->...qr', X, f["w2_b"].float().to(compute_dtype))
        tmp = torch.einsum('...qr,or->...qo', tmp, f["w2_a"].float().to(compute_dtype))
    runtime_scale = torch.tensor(aitk_scale(f), dtype=torch.float32)
    delta = torch.einsum('...qo,pq->...po', tmp, A * runtime_scale).flatten(-2, -1)
    torch_multiplier = torch.tensor((m,)).to(torch.float32)         # network_mixins.py L825-826
    return delta * torch.mean(torch_multiplier).to(compute_dtype)


def by_hand_kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a[:, None, :, None] * b[None, :, None, :]).reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])


# ------------------------------------------------------------------------------------------------ fixtures
def _factors(seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """fp32 file tensors per BFL module: qkv all full (AI Toolkit's default), linear2 both decomposed,
    adaLN w1 full + w2 decomposed."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    out = {}
    (ol, ok), (im, inn) = aitk_factorization(36), aitk_factorization(24)
    out[QKV] = {"w1": r(ol, im), "w2": r(ok, inn) * 0.3, "alpha": torch.tensor(9999999999.0)}
    (ol, ok), (im, inn) = aitk_factorization(30), aitk_factorization(40)
    out[LIN2] = {"w1_a": r(ol, RANK), "w1_b": r(RANK, im), "w2_a": r(ok, RANK) * 0.3, "w2_b": r(RANK, inn) * 0.3,
                 "alpha": torch.tensor(ALPHA)}
    (ol, ok), (im, inn) = aitk_factorization(48), aitk_factorization(24)
    out[ADALN] = {"w1": r(ol, im), "w2_a": r(ok, RANK) * 0.3, "w2_b": r(RANK, inn) * 0.3,
                  "alpha": torch.tensor(ALPHA)}
    return out


def _write(path, factors, prefix="diffusion_model.") -> str:
    sd = {}
    for mod, f in factors.items():
        for k, v in f.items():
            sd[f"{prefix}{mod}.{k if k == 'alpha' else 'lokr_' + k}"] = v.contiguous()
    save_file(sd, str(path))
    return str(path)


def _set(root: torch.nn.Module, dotted: str, module: torch.nn.Module) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        if not hasattr(root, p):
            root.add_module(p, torch.nn.Module())
        root = getattr(root, p)
    root.add_module(leaf, module)


# diffusers module -> (BFL module, BFL output rows it receives, in order)
def _row_map() -> dict[str, tuple[str, list[int]]]:
    rows = {}
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        rows[f"transformer_blocks.0.attn.{name}"] = (QKV, list(range(12 * i, 12 * (i + 1))))
    rows["single_transformer_blocks.0.attn.to_out"] = (LIN2, list(range(30)))
    rows["norm_out.linear"] = (ADALN, list(range(24, 48)) + list(range(24)))   # [scale; shift]
    return rows


def _model(dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    root = torch.nn.Module()
    for name, (bfl, rows) in _row_map().items():
        _set(root, name, torch.nn.Linear(SHAPES[bfl][1], len(rows), bias=True).to(dtype))
    return root


def _inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return {bfl: torch.randn(2, 7, shp[1], generator=g).to(dtype) for bfl, shp in SHAPES.items()}


@pytest.fixture(scope="module")
def lokr_file(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("lokr") / "lokr.safetensors", _factors(3))


# ------------------------------------------------------------------------------------------------ tests
def test_tiny_factory_factorization_matches_aitk():
    from parity.tiny import lokr_factorization

    for d in range(1, 400):
        for factor in (-1, 2, 4, 8, 16):
            assert lokr_factorization(d, factor) == aitk_factorization(d, factor), (d, factor)
    assert aitk_factorization(250) == (10, 25) and aitk_factorization(128, 4) == (4, 32)
    assert aitk_factorization(3072) == (48, 64) and aitk_factorization(18432) == (128, 144)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_live_lokr_matches_aitk_bit_for_bit(lokr_file, dtype):
    model = _model(dtype)
    xs = _inputs(dtype)
    factors = _factors(3)
    with torch.no_grad():
        base = {n: model.get_submodule(n)(xs[b]) for n, (b, _) in _row_map().items()}
        LoraApplier(model).apply(lokr_file, MULT, "live", {})
        for name, (bfl, rows) in _row_map().items():
            got = model.get_submodule(name)(xs[bfl])
            delta = aitk_live_delta(xs[bfl], factors[bfl], base[name].dtype, MULT)[..., rows]
            want = (base[name] + delta).to(xs[bfl].dtype)
            assert got.dtype == dtype
            assert torch.equal(got, want), name


def test_live_lokr_fp32_equals_dense_kronecker_math(lokr_file):
    """Independent of einsum layout: y = base(x) + x @ (m * s * kron(w1, w2))^T, kron by broadcasting."""
    model = _model(torch.float32)
    xs = _inputs(torch.float32)
    factors = _factors(3)
    with torch.no_grad():
        base = {n: model.get_submodule(n)(xs[b]) for n, (b, _) in _row_map().items()}
        LoraApplier(model).apply(lokr_file, MULT, "live", {})
        for name, (bfl, rows) in _row_map().items():
            f = factors[bfl]
            dw = by_hand_kron(aitk_w1(f).double(), aitk_w2_full(f).double()) * aitk_scale(f) * MULT
            want = base[name].double() + xs[bfl].double() @ dw[rows].T
            got = model.get_submodule(name)(xs[bfl]).double()
            assert torch.allclose(got, want, rtol=1e-6, atol=2e-6), (name, (got - want).abs().max())
            assert not torch.allclose(got, base[name].double(), atol=1e-3)


def test_live_lokr_bf16_is_not_a_dense_bf16_kronecker_product(lokr_file):
    """The factorized bf16 product rounds after each contraction; a dense bf16 Kronecker weight (what parity
    did before it was checked against AI Toolkit) gives other bits, so the bit-exact test above can fail."""
    model = _model(torch.bfloat16)
    xs = _inputs(torch.bfloat16)
    factors = _factors(3)
    name, (bfl, rows) = "single_transformer_blocks.0.attn.to_out", _row_map()["single_transformer_blocks.0.attn.to_out"]
    with torch.no_grad():
        base = model.get_submodule(name)(xs[bfl])
        LoraApplier(model).apply(lokr_file, MULT, "live", {})
        got = model.get_submodule(name)(xs[bfl])
        f = factors[bfl]
        dense = (torch.kron(aitk_w1(f), aitk_w2_full(f)) * aitk_scale(f)).to(torch.bfloat16)
        old = base + torch.nn.functional.linear(xs[bfl], dense) * MULT
    assert not torch.equal(got, old)


def test_lokr_live_switch_changes_the_bf16_output(lokr_file):
    xs = _inputs(torch.bfloat16)
    outs = {}
    for how in ("aitk", "fp32"):
        model = _model(torch.bfloat16)
        LoraApplier(model).apply(lokr_file, MULT, "live", {"lokr_live": how})
        with torch.no_grad():
            outs[how] = {n: model.get_submodule(n)(xs[b]) for n, (b, _) in _row_map().items()}
    assert any(not torch.equal(outs["aitk"][n], outs["fp32"][n]) for n in outs["aitk"])
    # the ablation is the fp32 branch rounded once: close to, but not, AI Toolkit's arithmetic
    for n in outs["aitk"]:
        assert torch.allclose(outs["aitk"][n].float(), outs["fp32"][n].float(), rtol=0.05, atol=0.1), n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merged_lokr_matches_aitk_bit_for_bit(lokr_file, dtype):
    model = _model(dtype)
    factors = _factors(3)
    pristine = {n: model.get_submodule(n).weight.detach().clone() for n in _row_map()}
    LoraApplier(model).apply(lokr_file, MULT, "merged", {})
    for name, (bfl, rows) in _row_map().items():
        # AI Toolkit merges into the fused BFL weight; build it from the diffusers pieces (rows are a permutation)
        out_f = SHAPES[bfl][0]
        fused = torch.empty(out_f, SHAPES[bfl][1], dtype=dtype)
        for n2, (b2, r2) in _row_map().items():
            if b2 == bfl:
                fused[r2] = pristine[n2]
        want = aitk_merge(fused, factors[bfl], MULT)[rows]
        assert torch.equal(model.get_submodule(name).weight, want), name
        assert not torch.equal(want, pristine[name])


def test_merge_history_replay_is_aitk_merge_then_unmerge(lokr_file):
    """replay_rounds leaves AI Toolkit's round-trip residue: merge_in(m) then merge_out = merge_in(-m)."""
    model = _model(torch.bfloat16)
    factors = _factors(3)
    pristine = {n: model.get_submodule(n).weight.detach().clone() for n in _row_map()}
    ap = LoraApplier(model)
    assert ap.replay_rounds([(lokr_file, MULT)], {}) == 1
    drifted = 0
    for name, (bfl, rows) in _row_map().items():
        fused = torch.empty(*SHAPES[bfl], dtype=torch.bfloat16)
        for n2, (b2, r2) in _row_map().items():
            if b2 == bfl:
                fused[r2] = pristine[n2]
        want = aitk_merge(aitk_merge(fused, factors[bfl], MULT), factors[bfl], -MULT)[rows]
        got = model.get_submodule(name).weight
        assert torch.equal(got, want), name
        drifted += int(not torch.equal(got, pristine[name]))
    assert drifted > 0
    ap.restore()
    assert all(torch.equal(model.get_submodule(n).weight, w) for n, w in pristine.items())


def test_scale_rules(tmp_path):
    """alpha is ignored when both factors are full (AI Toolkit full rank stores alpha = 9999999999, which is inf in
    an fp16 file), 0 means rank, otherwise alpha / rank of the decomposed factor."""
    from parity.engine.lora import parse_lora

    f = _factors(5)
    f[QKV]["alpha"] = torch.tensor(9999999999.0).half()       # inf
    f[ADALN]["alpha"] = torch.tensor(0.0)
    mods = parse_lora(_write(tmp_path / "s.safetensors", f, prefix="transformer."))
    assert mods[QKV].scale() == 1.0
    assert mods[ADALN].scale() == 1.0
    assert mods[LIN2].scale() == pytest.approx(ALPHA / RANK)


def test_merged_rounding_order_matters_somewhere():
    """(kron*s)*m and (m*kron)*s differ in fp32 for some entries: the merge order above is a real constraint."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(4096, generator=g)
    s = torch.tensor(ALPHA / RANK, dtype=torch.float32)
    assert not torch.equal((k * s) * MULT, (MULT * k) * s)


@pytest.mark.parametrize("decomposed", [False, True])
def test_live_delta_bits_at_flux2_qkv_size(decomposed):
    """FLUX.2-dev's fused qkv (18432 x 3072: factors (128, 144) x (48, 64)) with a few tokens: parity's own einsum
    layout gives AI Toolkit's bits at real sizes too, where other kernel blockings could be chosen."""
    from parity.engine.lora import LokrFactors, lokr_live_delta

    g = torch.Generator().manual_seed(1)
    (ol, ok), (im, inn) = aitk_factorization(18432), aitk_factorization(3072)
    f = {"w1": torch.randn(ol, im, generator=g), "alpha": torch.tensor(16.0)}
    if decomposed:
        f |= {"w2_a": torch.randn(ok, 16, generator=g) * 0.1, "w2_b": torch.randn(16, inn, generator=g) * 0.1}
    else:
        f["w2"] = torch.randn(ok, inn, generator=g) * 0.1
    x = torch.randn(1, 24, 3072, generator=g).to(torch.bfloat16)
    ours = LokrFactors(w1=f["w1"], w2=f.get("w2"), w2_a=f.get("w2_a"), w2_b=f.get("w2_b"),
                       scale=torch.tensor(aitk_scale(f), dtype=torch.float32))
    want = aitk_live_delta(x, f, torch.bfloat16, 1.0)
    assert torch.equal(lokr_live_delta(x, ours, torch.bfloat16), want)


def test_zero_multiplier_leaves_the_output_alone(lokr_file):
    """network_mixins.py L289-295: multiplier 0 skips the adapter."""
    model = _model(torch.bfloat16)
    xs = _inputs(torch.bfloat16)
    with torch.no_grad():
        base = {n: model.get_submodule(n)(xs[b]) for n, (b, _) in _row_map().items()}
        LoraApplier(model).apply(lokr_file, 0.0, "live", {})
        assert all(torch.equal(model.get_submodule(n)(xs[b]), base[n]) for n, (b, _) in _row_map().items())
