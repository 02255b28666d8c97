"""An AI Toolkit adapter file read from its safetensors header alone (torch-free, nothing unpickled): which BFL
transformer module each key belongs to, the role of the key (LoRA factor, LoKr factor, DoRA magnitude, alpha), the
alpha values (decoded from their few bytes), and the scale AI Toolkit trained each module with.

Key forms AI Toolkit writes for FLUX.2 (ostris/ai-toolkit 27a03a91):
  - `diffusion_model.<BFL module>.<param>`: the peft format every FLUX.2 network is saved in (lora_special.py
    L422-433 forces it; network_mixins.py L607-622 renames lora_down/up to lora_A/B and drops alpha, except for
    LoKr; flux2_model.py L508-513 renames `transformer.` to `diffusion_model.`);
  - `lycoris_<BFL module with dots as underscores>.<param>`: a FLUX.2-dev LoKr with `network.old_lokr_format: true`
    (network_mixins.py L627-634; base_model.py L191 keeps the old format allowed, flux2_klein_model.py L35 forbids
    it for klein);
  - a DoRA network (`network.type: dora`) adds `<module>.magnitude` [out] to lora_A/lora_B (DoRA.py, the
    `magnitude` parameter, saved under its own name).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from parity.errors import InputFileError

# suffix -> role, longest first so `.lokr_w1_a` wins over `.lokr_w1`
ROLE_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora_down.weight", "A"), (".lora_up.weight", "B"),
    (".lokr_w1_a", "w1_a"), (".lokr_w1_b", "w1_b"), (".lokr_w2_a", "w2_a"), (".lokr_w2_b", "w2_b"),
    (".lokr_w1", "w1"), (".lokr_w2", "w2"), (".lokr_t2", "t2"),
    (".magnitude", "magnitude"), (".dora_scale", "magnitude"), (".alpha", "alpha"),
)
DOTTED_PREFIXES = ("diffusion_model.", "transformer.", "model.diffusion_model.")
UNDERSCORED_PREFIXES = ("lycoris_", "lora_transformer_", "lora_unet_")

# BFL sub-module names inside a block (keymap's table), so `img_attn_qkv` can be read back as `img_attn.qkv`
_DOUBLE_PARTS = ("img_attn.qkv", "img_attn.proj", "img_mlp.0", "img_mlp.2", "txt_attn.qkv", "txt_attn.proj",
                 "txt_mlp.0", "txt_mlp.2", "img_mod.lin", "txt_mod.lin")
_SINGLE_PARTS = ("linear1", "linear2", "modulation.lin")
_GLOBAL_PARTS = ("img_in", "txt_in", "time_in.in_layer", "time_in.out_layer", "guidance_in.in_layer",
                 "guidance_in.out_layer", "double_stream_modulation_img.lin", "double_stream_modulation_txt.lin",
                 "single_stream_modulation.lin", "final_layer.linear", "final_layer.adaLN_modulation.1")

PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


@dataclass
class Module:
    """One BFL module's keys in a file: role -> full key and role -> shape; alpha when the file has one."""

    bfl: str
    keys: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    alpha: float | None = None

    @property
    def kind(self) -> str:
        if any(r.startswith("w") for r in self.keys):
            return "lokr"
        return "dora" if "magnitude" in self.keys else "lora"

    @property
    def rank(self) -> int | None:
        """LoRA rank (lora_A rows); LoKr: the decomposed factors' inner size (None when both are full)."""
        if "A" in self.shapes:
            return self.shapes["A"][0]
        for name in ("w2_b", "w1_b"):
            if name in self.shapes:
                return self.shapes[name][0]
        return None

    def out_in(self) -> tuple[int, int] | None:
        """(out, in) of the module's weight delta, from the factor shapes."""
        s = self.shapes
        if "A" in s and "B" in s:
            return s["B"][0], s["A"][1]

        def side(n: str) -> tuple[int, int] | None:
            if n in s:
                return s[n][0], s[n][1]
            if f"{n}_a" in s and f"{n}_b" in s:
                return s[f"{n}_a"][0], s[f"{n}_b"][1]
            return None

        w1, w2 = side("w1"), side("w2")
        return None if w1 is None or w2 is None else (w1[0] * w2[0], w1[1] * w2[1])

    def aitk_scale(self) -> float:
        """The scale AI Toolkit applies. LoRA/DoRA: alpha/rank, 1 without alpha (DoRA.py __init__; LoRAModule the
        same). LoKr (toolkit/models/lokr.py L178-215): both factors full -> 1; else alpha/rank, alpha 0 or absent
        meaning alpha = rank."""
        if self.kind != "lokr":
            return 1.0 if self.alpha is None else self.alpha / self.shapes["A"][0]
        rank = self.rank
        if rank is None or self.alpha is None or self.alpha == 0.0:
            return 1.0
        return self.alpha / rank


@dataclass
class AdapterFile:
    """What a safetensors adapter file holds, read from its header."""

    path: Path
    modules: dict[str, Module]
    order: list[str]                     # every key, in the order safetensors lists them (sorted)
    prefix: str                          # the key form, e.g. "diffusion_model." or "lycoris_"
    unknown: list[str] = field(default_factory=list)   # keys that are no adapter key of a FLUX.2 module

    @property
    def kind(self) -> str:
        kinds = {m.kind for m in self.modules.values()}
        return kinds.pop() if len(kinds) == 1 else "+".join(sorted(kinds))

    @property
    def ranks(self) -> list[int]:
        return sorted({m.rank for m in self.modules.values() if m.rank is not None})

    def describe(self) -> str:
        ranks = self.ranks
        rank = "" if not ranks else f", rank {ranks[0]}" if len(ranks) == 1 else f", ranks {'/'.join(map(str, ranks))}"
        return f"{self.kind}, {len(self.modules)} modules, keys {self.prefix}*{rank}"


def _entries(path: Path) -> tuple[dict[str, dict], int]:
    """The header entries and the data offset (parity.doctor.headers); a pickle / torch.save zip is named as such
    from its first bytes and never opened further."""
    from parity.doctor.headers import header_entries

    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise InputFileError(f"cannot read ({exc.strerror or exc})", path) from None
    if head.startswith(PICKLE_MAGIC):
        raise InputFileError("a pickle / torch.save checkpoint, not safetensors: not loaded (pickles can run code; "
                             "save the adapter as .safetensors)", path)
    return header_entries(path)


def _scalar(path: Path, data_start: int, info: dict) -> float:
    """One scalar tensor's value read from its bytes (F32/F16/BF16/F64), torch-free."""
    begin, end = (int(x) for x in info["data_offsets"])
    with path.open("rb") as f:
        f.seek(data_start + begin)
        raw = f.read(end - begin)
    dtype = info["dtype"]
    if dtype == "BF16" and len(raw) == 2:
        return struct.unpack("<f", b"\x00\x00" + raw)[0]
    fmt = {"F32": "<f", "F16": "<e", "F64": "<d"}.get(dtype)
    if fmt is None or len(raw) != struct.calcsize(fmt):
        raise InputFileError(f"alpha tensor of dtype {dtype} with {len(raw)} bytes is not a float scalar", path)
    return struct.unpack(fmt, raw)[0]


def split_key(key: str) -> tuple[str, str, str] | None:
    """(prefix, BFL module, role) of an adapter key, or None when it is not one."""
    role = next(((suf, r) for suf, r in ROLE_SUFFIXES if key.endswith(suf)), None)
    if role is None:
        return None
    base = key[: -len(role[0])]
    for p in DOTTED_PREFIXES:
        if base.startswith(p):
            return p, base[len(p):], role[1]
    for p in UNDERSCORED_PREFIXES:
        if base.startswith(p):
            module = dotted_module(base[len(p):])
            return None if module is None else (p, module, role[1])
    return None


def dotted_module(underscored: str) -> str | None:
    """`double_blocks_0_img_attn_qkv` -> `double_blocks.0.img_attn.qkv` (None for an unknown name)."""
    m = re.fullmatch(r"(double|single)_blocks_(\d+)_(.+)", underscored)
    parts = {"double": _DOUBLE_PARTS, "single": _SINGLE_PARTS}
    if m:
        part = next((p for p in parts[m.group(1)] if p.replace(".", "_") == m.group(3)), None)
        return None if part is None else f"{m.group(1)}_blocks.{m.group(2)}.{part}"
    return next((p for p in _GLOBAL_PARTS if p.replace(".", "_") == underscored), None)


def is_flux2_module(bfl: str) -> bool:
    m = re.fullmatch(r"(double|single)_blocks\.\d+\.(.+)", bfl)
    if m:
        return m.group(2) in (_DOUBLE_PARTS if m.group(1) == "double" else _SINGLE_PARTS)
    return bfl in _GLOBAL_PARTS


def read_adapter(path: str | Path) -> AdapterFile:
    """The adapter file's modules from its header; InputFileError (one line, naming the file) when it is not a
    safetensors file, is truncated, or holds no FLUX.2 LoRA/LoKr/DoRA key."""
    path = Path(path)
    tensors, data_start = _entries(path)
    modules: dict[str, Module] = {}
    unknown, prefixes = [], []
    for key in sorted(tensors):
        parsed = split_key(key)
        if parsed is None or not is_flux2_module(parsed[1]):
            unknown.append(key)
            continue
        prefix, bfl, role = parsed
        prefixes.append(prefix)
        mod = modules.setdefault(bfl, Module(bfl))
        mod.keys[role] = key
        mod.shapes[role] = tuple(int(d) for d in tensors[key]["shape"])
        if role == "alpha":
            mod.alpha = _scalar(path, data_start, tensors[key])
    adapters = {b: m for b, m in modules.items() if set(m.keys) - {"alpha", "magnitude"}}
    unknown += sorted(k for b, m in modules.items() if b not in adapters for k in m.keys.values())
    if not adapters:
        what = f"{len(tensors)} tensors, e.g. {sorted(tensors)[0]!r}" if tensors else "no tensors"
        raise InputFileError(f"no AI Toolkit FLUX.2 LoRA/LoKr/DoRA keys (BFL module names; {what})", path)
    prefix = max(set(prefixes), key=prefixes.count)
    return AdapterFile(path, adapters, sorted(tensors), prefix, sorted(unknown))
