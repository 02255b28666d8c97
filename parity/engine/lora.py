"""AI Toolkit LoRA / LoKr files applied to diffusers' Flux2Transformer2DModel the way training sampled with them.

File formats (aitk-flux2-previews.md fact 12, cpu-stack-notes.md section 3): keys `diffusion_model.<BFL module>`
(or `transformer.<BFL module>` before AI Toolkit's save-time rename) with
  - LoRA: `.lora_A.weight` [r, in] / `.lora_B.weight` [out, r] (or `.lora_down` / `.lora_up`), optional `.alpha`
    (scale alpha/r; AI Toolkit drops alpha for FLUX.2, scale 1);
  - LoKr: `.lokr_w1` [out_l, in_m], `.lokr_w2` [out_k, in_n] (full) or `.lokr_w1_a/_b`, `.lokr_w2_a/_b`
    (decomposed, rank r), `.alpha`; dW = kron(w1, w2) * scale with scale = alpha/r, forced to 1 when both
    factors are full (toolkit/models/lokr.py L209-215, ai-toolkit 27a03a91). AI Toolkit itself writes FLUX.2 LoKr
    files with a full `lokr_w1` always (lora_special.py L599-620 never passes decompose_both) and, in its
    peft format, alpha = rank (lora_special.py L422-433), so its files always have scale 1.
BFL modules map onto diffusers modules with `keymap.bfl_module_targets` (fused qkv rows split into q/k/v, the final
adaLN rows swapped). diffusers 0.42.1's own loader drops or mis-maps several of these variants (notes section 3),
so the mapping is done here and every key must be accounted for.

Modes (toolkit/network_mixins.py): `merged` W = cast(float(W) + m*(B@A)*scale) with fp32 factors (LoKr:
cast(float(W) + (kron(w1, w2)*scale)*m), lokr.py L264-305); `live` LoRA y = base(x) + cast((B(A(x_fp32))*scale)*m),
live LoKr the factorized Kronecker product in the base output dtype (lokr.py L340-397, `lokr_live_output`). AI
Toolkit runs adapters live whenever the transformer is quantized.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from parity.engine import keymap
from parity.engine.numerics import live_lora_output, merge_lora_weight
from parity.engine.weights import load_safetensors
from parity.errors import ModelError

_LORA_SUFFIXES = {
    ".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_down.weight": "A", ".lora_up.weight": "B",
    ".alpha": "alpha",
    ".lokr_w1": "w1", ".lokr_w2": "w2", ".lokr_w1_a": "w1_a", ".lokr_w1_b": "w1_b",
    ".lokr_w2_a": "w2_a", ".lokr_w2_b": "w2_b",
}
_UNSUPPORTED_SUFFIXES = (".lokr_t2", ".dora_scale", ".hada_w1_a", ".lora_mid.weight")
_PREFIXES = ("diffusion_model.", "transformer.", "model.diffusion_model.")


@dataclass
class LoraModule:
    """One BFL module's factors from a file."""

    bfl: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "lokr" if any(k.startswith("w") for k in self.tensors) else "lora"

    def scale(self) -> float:
        """LoRA: alpha / rank (1.0 without alpha). LoKr: AI Toolkit's LokrModule rule (toolkit/models/lokr.py
        L209-215): alpha 0 or absent means alpha = rank; both factors full forces alpha = rank; scale =
        alpha / rank where rank is the decomposed factors' inner size (w2_a/w2_b, else w1_a/w1_b: L178-198)."""
        alpha = self.tensors.get("alpha")
        if self.kind == "lora":
            return 1.0 if alpha is None else float(alpha) / self.tensors["A"].shape[0]
        if "w2_b" in self.tensors:
            rank = self.tensors["w2_b"].shape[0]
        elif "w1_b" in self.tensors:
            rank = self.tensors["w1_b"].shape[0]
        else:
            return 1.0
        if alpha is None or float(alpha) == 0.0:
            return 1.0
        return float(alpha) / rank

    def factor(self, name: str) -> torch.Tensor:
        """fp32 LoKr factor: the file tensor, or the product of its decomposed halves in fp32 (lokr.py L250-253
        for the merge path; L334 for w1 in the live path)."""
        t = self.tensors
        if name in t:
            return t[name].float()
        a, b = t.get(f"{name}_a"), t.get(f"{name}_b")
        if a is None or b is None:
            raise KeyError(name)
        return a.float() @ b.float()

    def delta(self) -> torch.Tensor:
        """Unscaled fp32 dW (out, in) in BFL row order: B @ A, or kron(w1, w2) for LoKr (lokr.py make_kron
        L70-76: kron(w1, w2), w1 the small (out_l, in_m) factor, so row = p*out_k + o, column = q*in_n + s)."""
        if self.kind == "lora":
            return self.tensors["B"].float() @ self.tensors["A"].float()
        return torch.kron(self.factor("w1"), self.factor("w2"))

    def merge_delta(self) -> tuple[torch.Tensor, float]:
        """(fp32 dW, scale) for `numerics.merge_lora_weight`, which forms `m * dW * scale` in fp32.
        LoRA: (B @ A, alpha/r), AI Toolkit's `multiplier * (up @ down) * scale` (network_mixins.py L434).
        LoKr: AI Toolkit scales the Kronecker product first and multiplies by the merge weight after
        (lokr.py L76 `rebuild*scale` with the fp32 `_runtime_scale`, then L291-294 `weight + lokr_weight *
        merge_weight`), so the scale is folded in here and 1.0 returned: `m * (kron*s) * 1.0` is bit-identical
        to AI Toolkit's `(kron*s) * m`, while `(m*kron)*s` can differ by an fp32 ulp."""
        if self.kind == "lora":
            return self.delta(), self.scale()
        return self.delta() * torch.tensor(self.scale(), dtype=torch.float32), 1.0

    def lokr_factors(self) -> "LokrFactors":
        """fp32 factors the live LoKr path uses, never combined into a full (out, in) matrix."""
        t = self.tensors
        if "w2" in t:
            w2, w2_a, w2_b = t["w2"].float(), None, None
        else:
            w2, w2_a, w2_b = None, t["w2_a"].float(), t["w2_b"].float()
        return LokrFactors(w1=self.factor("w1"), w2=w2, w2_a=w2_a, w2_b=w2_b,
                           scale=torch.tensor(self.scale(), dtype=torch.float32))


@dataclass
class LokrFactors:
    """A LoKr module's factors as AI Toolkit's live path holds them (lokr.py `_get_delta_factors`, L331-338):
    w1 (out_l, in_m) fp32, the product w1_a @ w1_b when decomposed; w2 (out_k, in_n) fp32 when full, else its
    halves w2_a (out_k, r) and w2_b (r, in_n) kept apart; scale the fp32 0-dim `_runtime_scale`
    (network_mixins.py L182-195)."""

    w1: torch.Tensor
    w2: torch.Tensor | None
    w2_a: torch.Tensor | None
    w2_b: torch.Tensor | None
    scale: torch.Tensor

    def to(self, device) -> "LokrFactors":
        mv = (lambda t: None if t is None else t.to(device))
        return LokrFactors(mv(self.w1), mv(self.w2), mv(self.w2_a), mv(self.w2_b), self.scale.to(device))

    @property
    def out_features(self) -> int:
        return self.w1.shape[0] * (self.w2 if self.w2 is not None else self.w2_a).shape[0]


@dataclass
class LoraReport:
    """What a LoRA application did."""

    file: str
    format: str                 # lora | lokr
    modules_matched: int        # BFL modules in the file, all mapped
    targets: int                # diffusers modules changed
    application: str            # merged | live
    multiplier: float
    scales: tuple[float, ...]   # distinct alpha/rank scales

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _family_hint(keys: list[str]) -> str:
    """Name the model family a foreign LoRA's keys look like."""
    joined = "\n".join(keys[:200])
    if re.search(r"^lora_unet_(double|single)_blocks", joined, re.M):
        return "FLUX.1 (Kohya lora_unet_ names)"
    if re.search(r"^lora_unet_(down|up|mid)_blocks|^lora_te\d?_", joined, re.M):
        return "SD/SDXL (Kohya lora_unet_down_blocks / lora_te names)"
    if re.search(r"transformer_blocks\.\d+\.img_mod|transformer_blocks\.\d+\.txt_mlp", joined):
        return "Qwen-Image"
    if re.search(r"(^|\.)single_transformer_blocks\.\d+\.(proj_mlp|norm\.linear)", joined):
        return "FLUX.1 (diffusers transformer.single_transformer_blocks names)"
    if re.search(r"(^|\.)(single_)?transformer_blocks\.\d+\.", joined):
        return "a diffusers-named transformer (FLUX.1/FLUX.2 diffusers format, not AI Toolkit's BFL names)"
    if re.search(r"(^|\.)double_blocks\.\d+\.img_mod\.lin", joined):
        return "FLUX.1 (BFL names; FLUX.2 has no per-block img_mod)"
    return "not a FLUX.2 AI Toolkit LoRA"


# What AI Toolkit saves (save.dtype float16 / bfloat16 / float32); fp64 reads fine too. Integer, bool, complex
# or fp8 tensors are not a LoRA AI Toolkit wrote, and would silently cast to nonsense.
_LORA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _checked_tensor(key: str, value: torch.Tensor, path) -> torch.Tensor:
    """The tensor if it is a finite float tensor, else ModelError naming the file and the key (a NaN LoRA would
    otherwise only surface as "render produced NaN/inf" with no file named)."""
    if value.dtype not in _LORA_DTYPES:
        raise ModelError(f"tensor {key!r} has dtype {str(value.dtype).replace('torch.', '')}; a LoRA holds "
                         "float16, bfloat16 or float32 tensors", path)
    # alpha is a hyperparameter, not a weight: AI Toolkit writes 9999999999 for full-rank LoKr factors, which a
    # float16 file stores as inf (lokr.py L209-215 treats it as "alpha = rank")
    if not key.endswith(".alpha") and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ModelError(f"tensor {key!r} holds {bad} NaN/inf value(s) of {value.numel()}: the checkpoint is "
                         "corrupt (a diverged training step?)", path)
    return value


def parse_lora(path: str | Path) -> dict[str, LoraModule]:
    """Read an AI Toolkit LoRA/LoKr file into BFL modules. ModelError (naming the file) on unknown keys."""
    sd = load_safetensors(path)
    if not sd:
        raise ModelError("LoRA file has no tensors", path)
    modules: dict[str, LoraModule] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        for suf in _UNSUPPORTED_SUFFIXES:
            if key.endswith(suf):
                raise ModelError(f"unsupported LoRA variant key {key!r} (only LoRA and LoKr are applied)", path)
        for suf, role in _LORA_SUFFIXES.items():
            if key.endswith(suf):
                mod = key[: -len(suf)]
                break
        else:
            unknown.append(key)
            continue
        for p in _PREFIXES:
            if mod.startswith(p):
                mod = mod[len(p):]
                break
        else:
            unknown.append(key)
            continue
        modules.setdefault(mod, LoraModule(mod)).tensors[role] = _checked_tensor(key, value, path)
    if unknown:
        raise ModelError(f"{len(sd) - len(unknown)} of {len(sd)} keys are AI Toolkit FLUX.2 LoRA keys; "
                         f"{len(unknown)} key(s) are not, e.g. {unknown[0]!r}; they look like "
                         f"{_family_hint(sorted(sd))}", path)
    bad = []
    for mod, m in modules.items():
        try:
            keymap.bfl_module_targets(mod, 3)
        except KeyError:
            bad.append(mod)
    if bad:
        raise ModelError(f"{len(modules) - len(bad)} of {len(modules)} modules match the FLUX.2 transformer; "
                         f"{len(bad)} module(s) are not FLUX.2 transformer modules, e.g. {bad[0]!r}; the file looks "
                         f"like {_family_hint(sorted(sd))}", path)
    for mod, m in modules.items():
        t = m.tensors
        if m.kind == "lora" and not ("A" in t and "B" in t):
            raise ModelError(f"module {mod!r} lacks lora_A or lora_B", path)
        if m.kind == "lora" and t["A"].shape[0] != t["B"].shape[1]:
            raise ModelError(f"module {mod!r}: rank mismatch, lora_A {tuple(t['A'].shape)} vs lora_B "
                             f"{tuple(t['B'].shape)}", path)
        if m.kind == "lokr":
            for name in ("w1", "w2"):
                if name not in t and not (f"{name}_a" in t and f"{name}_b" in t):
                    raise ModelError(f"module {mod!r} lacks lokr_{name} (or lokr_{name}_a/_b)", path)
    kinds = {m.kind for m in modules.values()}
    if len(kinds) > 1:
        raise ModelError("file mixes LoRA and LoKr modules", path)
    return modules


def _linear(model, name: str, path) -> torch.nn.Module:
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise ModelError(f"LoRA targets {name!r}, which this transformer does not have (a LoRA for a larger "
                         f"model or another architecture)", path) from None
    if not hasattr(mod, "weight") or mod.weight.ndim != 2:
        raise ModelError(f"LoRA target {name!r} is not a Linear layer", path)
    return mod


@dataclass
class _Planned:
    module: str
    rows: tuple[int | None, int | None]
    swap: bool
    lora: LoraModule


def plan(model, modules: dict[str, LoraModule], path) -> list[_Planned]:
    """Map BFL modules onto diffusers Linear layers; ModelError on missing targets or shape mismatches."""
    out: list[_Planned] = []
    for bfl, m in sorted(modules.items()):
        out_rows = m.tensors["B"].shape[0] if m.kind == "lora" else None
        if out_rows is None:
            w1 = m.factor("w1") if "w1" in m.tensors or "w1_a" in m.tensors else None
            w2 = m.factor("w2")
            out_rows = w1.shape[0] * w2.shape[0]
            in_cols = w1.shape[1] * w2.shape[1]
        else:
            in_cols = m.tensors["A"].shape[1]
        targets = keymap.bfl_module_targets(bfl, out_rows)
        total = 0
        for t in targets:
            lin = _linear(model, t.module, path)
            o, i = lin.weight.shape
            total += o
            if i != in_cols:
                raise ModelError(f"module {bfl!r}: LoRA input size {in_cols} does not fit {t.module} "
                                 f"(in_features {i})", path)
        if total != out_rows:
            raise ModelError(f"module {bfl!r}: LoRA output size {out_rows} does not fit the model ({total} rows)",
                             path)
        for t in targets:
            out.append(_Planned(t.module, (t.row_start, t.row_stop), t.swap_halves, m))
    return out


def _rows(t: torch.Tensor, p: _Planned) -> torch.Tensor:
    """Rows of a BFL-ordered (out, ...) tensor that go to one diffusers module."""
    if p.swap:  # BFL [shift; scale] -> diffusers [scale; shift]
        shift, scale = t.chunk(2, dim=0)
        t = torch.cat([scale, shift], dim=0)
    a, b = p.rows
    return t if a is None else t[a:b]


def is_quantized(module) -> bool:
    w = getattr(module, "weight", None)
    return type(w).__name__.startswith(("QTensor", "QBytesTensor", "WeightQBytesTensor", "MarlinF8")) or \
        type(module).__module__.startswith("optimum.quanto")


class LoraApplier:
    """Applies one LoRA at a time to a transformer and undoes it bit-exactly (pristine copies of just the
    LoRA-target weights are kept from the first merge)."""

    def __init__(self, model):
        self.model = model
        self.pristine: dict[str, torch.Tensor] = {}
        self.hooks: list = []
        self.merged: list[str] = []
        self.key: tuple | None = None          # the caller's key of what is applied now (None: pristine weights)
        self.report: LoraReport | None = None  # what `apply` reported for it

    def restore(self) -> bool:
        """Undo the current LoRA; True when base weights were written back."""
        for h in self.hooks:
            h.remove()
        self.hooks = []
        wrote = False
        for name in self.merged:
            lin = self.model.get_submodule(name)
            with torch.no_grad():
                lin.weight.data.copy_(self.pristine[name])
            wrote = True
        self.merged = []
        self.key, self.report = None, None
        return wrote

    def replay_rounds(self, history, switches: dict[str, str]) -> int:
        """Reproduce the base-weight drift of earlier merged sample rounds: for each (lora_path, multiplier) in
        order, merge then un-merge it as AI Toolkit does after every sample round (toolkit/network_mixins.py
        L371-462: `merge_in(m)` before sampling, `merge_in(-m)` after, each `W = cast(float(W) + m*dW*scale)`),
        so the weights keep the rounding residue of each round trip. A None path is the zero LoRA of step 0 (the
        round trip is exact and is skipped). Pristine copies are kept so `restore` undoes everything.
        Returns the number of rounds replayed."""
        done = 0
        for hpath, hm in history:
            if hpath is None or float(hm) == 0.0:
                continue
            planned = plan(self.model, parse_lora(hpath), hpath)
            deltas: dict[int, tuple[torch.Tensor, float]] = {}
            for p in planned:
                lin = self.model.get_submodule(p.module)
                if is_quantized(lin):
                    raise ModelError("merge history needs an unquantized transformer", hpath)
                if id(p.lora) not in deltas:
                    deltas[id(p.lora)] = p.lora.merge_delta()
                full, scale = deltas[id(p.lora)]
                d = _rows(full, p).to(lin.weight.device)
                if p.module not in self.pristine:
                    self.pristine[p.module] = lin.weight.detach().clone()
                if p.module not in self.merged:
                    self.merged.append(p.module)
                how = switches.get("lora_merge", "aitk")
                with torch.no_grad():
                    w = merge_lora_weight(lin.weight.data, d, float(hm), scale, how)
                    lin.weight.data.copy_(merge_lora_weight(w, d, -float(hm), scale, how))
            done += 1
        return done

    def apply(self, path: str | Path, multiplier: float, application: str, switches: dict[str, str],
              state_key: tuple | None = None) -> LoraReport:
        """Apply one LoRA file (after `restore`); `state_key` names this state for the caller (`self.key`), so it
        can skip re-applying the same file, multiplier and switches."""
        if application not in ("merged", "live"):
            raise ValueError(f"lora_application must be merged or live, not {application!r}")
        modules = parse_lora(path)
        planned = plan(self.model, modules, path)
        if not planned:
            raise ModelError("LoRA matched no transformer modules", path)
        for p in planned:
            lin = self.model.get_submodule(p.module)
            if application == "merged" and is_quantized(lin):
                raise ModelError("cannot merge a LoRA into a quantized transformer; AI Toolkit applies it live when "
                                 "quantize is on (use lora_application=live)", path)
        deltas: dict[int, tuple[torch.Tensor, float]] = {}
        for p in planned:
            lin = self.model.get_submodule(p.module)
            m = p.lora
            scale = m.scale()
            if application == "merged":
                key = id(m)
                if key not in deltas:  # full-matrix product once, then row slices (as AI Toolkit's fused module)
                    deltas[key] = m.merge_delta()
                full, scale = deltas[key]
                d = _rows(full, p).to(lin.weight.device)
                if p.module not in self.pristine:
                    self.pristine[p.module] = lin.weight.detach().clone()
                with torch.no_grad():
                    lin.weight.data.copy_(merge_lora_weight(lin.weight.data, d, multiplier, scale,
                                                            switches.get("lora_merge", "aitk")))
                if p.module not in self.merged:
                    self.merged.append(p.module)
            else:
                how = switches.get("lokr_live", "aitk") if m.kind == "lokr" else switches.get("lora_live", "aitk")
                self.hooks.append(lin.register_forward_hook(_live_hook(p, multiplier, scale, how, lin.weight.device)))
        kinds = {m.kind for m in modules.values()}
        self.key = state_key
        self.report = LoraReport(file=str(path), format=kinds.pop(), modules_matched=len(modules),
                                 targets=len(planned), application=application, multiplier=float(multiplier),
                                 scales=tuple(sorted({m.scale() for m in modules.values()})))
        return self.report


def lokr_live_delta(x: torch.Tensor, f: LokrFactors, dtype: torch.dtype) -> torch.Tensor:
    """LoKr delta (..., out_l*out_k) for input x (..., in_m*in_n), every step in `dtype`, as AI Toolkit's
    factorized Linear forward computes it (toolkit/models/lokr.py `_call_forward_fast_linear`, L359-386):
    each factor cast to `dtype` on its own (w1 = w1_a@w1_b formed in fp32 first, L334; w2_a and w2_b never
    multiplied together), x viewed as (..., in_m, in_n), contracted with w2 (or w2_b then w2_a), then with
    `w1.to(dtype) * scale` (scale an fp32 0-dim tensor, so the product stays in `dtype`, L385), flattened in
    (out_l, out_k) order, i.e. kron(w1, w2) rows. Each einsum rounds to `dtype`, which is why this differs from
    F.linear with a bf16 Kronecker weight. The contractions are laid out as AI Toolkit's (same operand order
    and output layout) so torch picks the same kernels and the bits agree."""
    xq = x.to(dtype).unflatten(-1, (f.w1.shape[1], -1))                # (..., in_m, in_n)
    if f.w2 is not None:
        u = torch.einsum("...ij,kj->...ik", xq, f.w2.to(dtype))         # (..., in_m, out_k)
    else:
        u = torch.einsum("...ij,rj->...ir", xq, f.w2_b.to(dtype))       # (..., in_m, r)
        u = torch.einsum("...ir,kr->...ik", u, f.w2_a.to(dtype))        # (..., in_m, out_k)
    w1s = f.w1.to(dtype) * f.scale                                      # (out_l, in_m), in dtype
    return torch.einsum("...ik,li->...lk", u, w1s).flatten(-2, -1)      # (..., out_l*out_k)


def lokr_live_output(base_out: torch.Tensor, x: torch.Tensor, f: LokrFactors, multiplier: float,
                     path: str = "aitk", index: torch.Tensor | None = None) -> torch.Tensor:
    """A Linear's output with the live LoKr branch added. `index` picks (and orders) the fused BFL module's
    outputs this diffusers module produces (q/k/v thirds, swapped adaLN halves); None = all.
    aitk (toolkit/models/lokr.py L340-397; network_mixins.py L301-302 sends LoKr straight there): the delta in
    the base output's dtype (`lokr_live_delta`), times the multiplier as a tensor of that dtype (the network's
    fp32 `torch_multiplier`, network_mixins.py L792-832, averaged and cast: L394-395), added to the base output
    in that dtype, the sum cast to x's dtype (L397).
    fp32 (ablation): the same product from an fp32 input in fp32, times the multiplier in fp32, rounded once to
    the base dtype and added (as the LoRA live branch is)."""
    if float(multiplier) == 0.0:  # network_mixins.py L289-295: a zero multiplier skips the adapter entirely
        return base_out
    dt = base_out.dtype
    m = torch.tensor(float(multiplier), dtype=torch.float32, device=base_out.device)
    if path == "aitk":
        delta = lokr_live_delta(x, f, dt)
        if index is not None:
            delta = delta.index_select(-1, index)
        return (base_out + delta * m.to(dt)).to(x.dtype)
    delta = lokr_live_delta(x.float(), f, torch.float32)
    if index is not None:
        delta = delta.index_select(-1, index)
    return base_out + (delta * m).to(dt)


def _live_hook(p: _Planned, multiplier: float, scale: float, path: str, device):
    """Forward hook adding the side branch. LoRA: fp32 B_rows(A(x_fp32)) rounded once (`lora_live`); LoKr: the
    factorized Kronecker product in the base dtype (`lokr_live`)."""
    m = p.lora
    if m.kind == "lora":
        A = m.tensors["A"].float().to(device)
        B = _rows(m.tensors["B"].float(), p).to(device)

        def add(out, x):
            branch = torch.nn.functional.linear(torch.nn.functional.linear(x.float(), A), B)
            return live_lora_output(out, branch, multiplier, scale, path)
    else:
        f = m.lokr_factors().to(device)
        full = _rows(torch.arange(f.out_features), p)
        index = None if full.equal(torch.arange(f.out_features)) else full.to(device)

        def add(out, x):
            return lokr_live_output(out, x, f, multiplier, path, index)

    def hook(module, args, out):
        x = args[0]
        if hasattr(x, "dequantize") and type(x).__name__ != "Tensor":
            x = x.dequantize()
        return add(out, x)

    return hook
