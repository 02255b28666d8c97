"""AI Toolkit LoRA / LoKr files applied to diffusers' Flux2Transformer2DModel the way training sampled with them.

File formats (aitk-flux2-previews.md fact 12, cpu-stack-notes.md section 3): keys `diffusion_model.<BFL module>`
(or `transformer.<BFL module>` before AI Toolkit's save-time rename) with
  - LoRA: `.lora_A.weight` [r, in] / `.lora_B.weight` [out, r] (or `.lora_down` / `.lora_up`), optional `.alpha`
    (scale alpha/r; AI Toolkit drops alpha for FLUX.2, scale 1);
  - LoKr: `.lokr_w1`, `.lokr_w2` (full) or `.lokr_w1_a/_b`, `.lokr_w2_a/_b` (decomposed), `.alpha`
    (scale alpha/r for decomposed factors, 1 when both are full: toolkit/models/lokr.py).
BFL modules map onto diffusers modules with `keymap.bfl_module_targets` (fused qkv rows split into q/k/v, the final
adaLN rows swapped). diffusers 0.42.1's own loader drops or mis-maps several of these variants (notes section 3),
so the mapping is done here and every key must be accounted for.

Modes (toolkit/network_mixins.py): `merged` W = cast(float(W) + m*(B@A)*scale) with fp32 factors; `live`
y = base(x) + cast((B(A(x_fp32))*scale)*m), used by AI Toolkit whenever the transformer is quantized.
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
        """alpha / rank (1.0 without alpha, and for full-rank LoKr)."""
        alpha = self.tensors.get("alpha")
        if alpha is None:
            return 1.0
        if self.kind == "lora":
            return float(alpha) / self.tensors["A"].shape[0]
        if "w2_b" in self.tensors:
            return float(alpha) / self.tensors["w2_b"].shape[0]
        if "w1_b" in self.tensors:
            return float(alpha) / self.tensors["w1_b"].shape[0]
        return 1.0

    def factor(self, name: str) -> torch.Tensor:
        t = self.tensors
        if name in t:
            return t[name].float()
        a, b = t.get(f"{name}_a"), t.get(f"{name}_b")
        if a is None or b is None:
            raise KeyError(name)
        return a.float() @ b.float()

    def delta(self) -> torch.Tensor:
        """Unscaled fp32 dW (out, in) in BFL row order: B @ A, or kron(w1, w2) for LoKr."""
        if self.kind == "lora":
            return self.tensors["B"].float() @ self.tensors["A"].float()
        return torch.kron(self.factor("w1"), self.factor("w2"))


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
        modules.setdefault(mod, LoraModule(mod)).tensors[role] = value
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
        self.current: tuple | None = None

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
        self.current = None
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
            deltas: dict[int, torch.Tensor] = {}
            for p in planned:
                lin = self.model.get_submodule(p.module)
                if is_quantized(lin):
                    raise ModelError("merge history needs an unquantized transformer", hpath)
                if id(p.lora) not in deltas:
                    deltas[id(p.lora)] = p.lora.delta()
                d = _rows(deltas[id(p.lora)], p).to(lin.weight.device)
                if p.module not in self.pristine:
                    self.pristine[p.module] = lin.weight.detach().clone()
                if p.module not in self.merged:
                    self.merged.append(p.module)
                how = switches.get("lora_merge", "aitk")
                with torch.no_grad():
                    w = merge_lora_weight(lin.weight.data, d, float(hm), p.lora.scale(), how)
                    lin.weight.data.copy_(merge_lora_weight(w, d, -float(hm), p.lora.scale(), how))
            done += 1
        return done

    def apply(self, path: str | Path, multiplier: float, application: str, switches: dict[str, str]) -> LoraReport:
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
        deltas: dict[int, torch.Tensor] = {}
        for p in planned:
            lin = self.model.get_submodule(p.module)
            m = p.lora
            scale = m.scale()
            if application == "merged":
                key = id(m)
                if key not in deltas:  # full-matrix product once, then row slices (as AI Toolkit's fused module)
                    deltas[key] = m.delta()
                d = _rows(deltas[key], p).to(lin.weight.device)
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
        self.current = (str(path), multiplier, application)
        kinds = {m.kind for m in modules.values()}
        return LoraReport(file=str(path), format=kinds.pop(), modules_matched=len(modules), targets=len(planned),
                          application=application, multiplier=float(multiplier),
                          scales=tuple(sorted({m.scale() for m in modules.values()})))


def lokr_live_output(base_out: torch.Tensor, x: torch.Tensor, delta_fp32: torch.Tensor, multiplier: float,
                     scale: float, path: str = "aitk") -> torch.Tensor:
    """Live LoKr branch added to a Linear's output (delta_fp32: (out, in) kron(w1, w2) rows).
    aitk: AI Toolkit's LokrModule computes the Kronecker weight and applies it in the base output dtype (bf16),
    scaled by the multiplier in that dtype, and adds it to the base output (toolkit/models/lokr.py L340-397;
    aitk-flux2-previews.md section C "LoKr"): `out + F.linear(x.to(dt), (dW*scale).to(dt)) * m`.
    fp32: the branch computed in fp32 from an fp32 input and rounded once (as the LoRA path does)."""
    if path == "aitk":
        dt = base_out.dtype
        return base_out + torch.nn.functional.linear(x.to(dt), (delta_fp32 * scale).to(dt)) * multiplier
    return live_lora_output(base_out, torch.nn.functional.linear(x.float(), delta_fp32), multiplier, scale, "aitk")


def _live_hook(p: _Planned, multiplier: float, scale: float, path: str, device):
    """Forward hook adding the side branch. LoRA: fp32 B_rows(A(x_fp32)) rounded once (`lora_live`); LoKr: the
    Kronecker weight in the base dtype (`lokr_live`)."""
    m = p.lora
    if m.kind == "lora":
        A = m.tensors["A"].float().to(device)
        B = _rows(m.tensors["B"].float(), p).to(device)

        def add(out, x):
            branch = torch.nn.functional.linear(torch.nn.functional.linear(x.float(), A), B)
            return live_lora_output(out, branch, multiplier, scale, path)
    else:
        D = _rows(m.delta(), p).to(device)

        def add(out, x):
            return lokr_live_output(out, x, D, multiplier, scale, path)

    def hook(module, args, out):
        x = args[0]
        if hasattr(x, "dequantize") and type(x).__name__ != "Tensor":
            x = x.dequantize()
        return add(out, x)

    return hook
