"""Input checks of `parity doctor`, from safetensors headers only: the base model's transformer and VAE, the text
encoder, and LoRA files, each against the tensor names and shapes its configuration needs (the full-size model
built on the meta device: parity.engine.fullsize)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from parity.doctor.headers import Completeness, compare, folder_tensors, read_header
from parity.errors import ParityError
from parity.jsonio import read_json


@dataclass(frozen=True)
class Check:
    """One line of the doctor's verdict. status: ok | warn | fail."""

    name: str
    status: str
    detail: str
    where: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _shapes(state_dict: dict) -> dict[str, tuple[int, ...]]:
    # BatchNorm's step counter is not a weight; checkpoints may or may not carry it.
    return {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


def expected_transformer(cfg: dict, kind: str) -> dict[str, tuple[int, ...]]:
    """Tensor names/shapes of the transformer for `cfg`: diffusers names, or BFL names for kind 'bfl'."""
    from parity.engine import fullsize, keymap

    sd = fullsize.meta_transformer(cfg).state_dict()
    return _shapes(keymap.diffusers_to_bfl_transformer(sd) if kind == "bfl" else sd)


def expected_vae(cfg: dict, kind: str) -> dict[str, tuple[int, ...]]:
    from parity.engine import fullsize, keymap

    sd = fullsize.meta_vae(cfg).state_dict()
    return _shapes(keymap.diffusers_to_bfl_vae(sd) if kind == "bfl" else sd)


_BFL_PREFIX = "model.diffusion_model."


def _strip_bfl_prefix(found: dict) -> dict:
    return {k[len(_BFL_PREFIX):] if k.startswith(_BFL_PREFIX) else k: v for k, v in found.items()}


def check_transformer(layout) -> Check:
    """Every tensor the transformer config needs, in the layout's names, with its shape."""
    path = layout.transformer
    if layout.kind == "bfl":
        c = compare(expected_transformer(layout.transformer_config, "bfl"), _strip_bfl_prefix(read_header(path)))
    else:
        c = compare(expected_transformer(layout.transformer_config, "diffusers"), folder_tensors(path))
    return _verdict("transformer weights", c, path)


def check_vae(layout) -> Check:
    path = layout.vae
    found = read_header(path) if layout.kind == "bfl" else folder_tensors(path)
    return _verdict("VAE weights", compare(expected_vae(layout.vae_config, layout.kind), found), path)


def _verdict(name: str, c: Completeness, where) -> Check:
    return Check(name, "ok" if c.complete else "fail", c.summary(), str(where))


# ------------------------------------------------------------------------------------------------ text encoder
_TE_CANON = (
    (re.compile(r"^model\.language_model\."), "language_model."),   # transformers 5 names (save_pretrained)
    (re.compile(r"^language_model\.model\."), "language_model."),   # transformers 4 / hub checkpoint names
    (re.compile(r"^language_model\.lm_head\."), "lm_head."),
    (re.compile(r"^model\.vision_tower\."), "vision_tower."),
    (re.compile(r"^model\.multi_modal_projector\."), "multi_modal_projector."),
)


def canonical_te_name(name: str) -> str:
    """One name for a text-encoder tensor whichever transformers version wrote the checkpoint (the hub's
    Mistral-Small-3.1 files use the 4.x names that transformers 5 renames while loading)."""
    for pattern, repl in _TE_CANON:
        if pattern.match(name):
            return pattern.sub(repl, name, count=1)
    return name


def expected_text_encoder(cfg: dict) -> dict[str, tuple[int, ...]]:
    from parity.engine import fullsize

    model = fullsize.meta_text_encoder(cfg)
    shapes = {canonical_te_name(k): s for k, s in _shapes(model.state_dict()).items()}
    if getattr(model.config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)  # tied: the checkpoint need not store it
    return shapes


_TOKENIZER_FILES = ("tokenizer.json", "tekken.json", "tokenizer_config.json", "tokenizer.model")


def check_text_encoder(layout) -> list[Check]:
    folder = layout.text_encoder
    if folder is None:
        return [Check("text encoder", "fail", "none found: give --text-encoder or $PARITY_TEXT_ENCODER (or a base "
                      "folder with text_encoder/)", str(layout.root))]
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return [Check("text encoder", "fail", "no config.json", str(folder))]
    try:
        cfg = read_json(cfg_path)
    except (OSError, ValueError, ParityError) as exc:
        return [Check("text encoder", "fail", f"unreadable config.json ({exc})", str(cfg_path))]
    found = {canonical_te_name(k): v for k, v in folder_tensors(folder).items()}
    checks = [_verdict(f"text encoder weights ({cfg.get('model_type', '?')})", compare(expected_text_encoder(cfg),
                                                                                        found), folder)]
    tok = layout.tokenizer
    has_tok = tok is not None and any((tok / f).is_file() for f in _TOKENIZER_FILES)
    checks.append(Check("tokenizer", "ok" if has_tok else "fail",
                        "found" if has_tok else f"none of {', '.join(_TOKENIZER_FILES)}", str(tok or folder)))
    return checks


# ------------------------------------------------------------------------------------------------------- LoRA
def lora_modules_from_header(found: dict) -> tuple[dict[str, dict[str, tuple]], list[str]]:
    """({BFL module: {role: shape}}, keys that are not AI Toolkit FLUX.2 adapter keys), as parse_lora reads them."""
    from parity.engine.lora import _LORA_SUFFIXES, _PREFIXES

    modules: dict[str, dict[str, tuple]] = {}
    unknown = []
    for key, info in found.items():
        role = next(((suf, r) for suf, r in _LORA_SUFFIXES.items() if key.endswith(suf)), None)
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if role is None or prefix is None:
            unknown.append(key)
            continue
        modules.setdefault(key[len(prefix): -len(role[0])], {})[role[1]] = tuple(info.shape)
    return modules, unknown


def _out_in(roles: dict[str, tuple]) -> tuple[int, int] | None:
    """(out_features, in_features) of the delta a module's factors make; None when the factors are incomplete."""
    if "A" in roles and "B" in roles:
        return roles["B"][0], roles["A"][1]

    def side(name: str) -> tuple[int, int] | None:
        if name in roles:
            return roles[name]
        if f"{name}_a" in roles and f"{name}_b" in roles:
            return roles[f"{name}_a"][0], roles[f"{name}_b"][1]
        return None

    w1, w2 = side("w1"), side("w2")
    return None if w1 is None or w2 is None else (w1[0] * w2[0], w1[1] * w2[1])


def _module_problem(bfl: str, roles: dict, needed: dict[str, tuple[int, ...]]) -> str | None:
    from parity.engine import keymap

    oi = _out_in(roles)
    if oi is None:
        return f"{bfl}: incomplete factors ({', '.join(sorted(roles))})"
    try:
        targets = keymap.bfl_module_targets(bfl, oi[0])
    except KeyError:
        return f"{bfl}: not a FLUX.2 transformer module"
    rows = 0
    for t in targets:
        shape = needed.get(f"{t.module}.weight")
        if shape is None:
            return f"{bfl}: maps to {t.module}, which this base model does not have"
        if shape[1] != oi[1]:
            return f"{bfl}: input size {oi[1]} vs {t.module} {shape[1]}"
        rows += shape[0]
    return None if rows == oi[0] else f"{bfl}: output size {oi[0]} vs the base model's {rows}"


def check_lora(path: Path, needed: dict[str, tuple[int, ...]]) -> Check:
    """Every key of a LoRA file maps onto the base model (names and shapes), read from its header only."""
    try:
        found = read_header(path)
    except ParityError as exc:
        return Check("LoRA keys", "fail", str(exc), str(path))
    modules, unknown = lora_modules_from_header(found)
    problems = [f"key {k!r} is not an AI Toolkit FLUX.2 adapter key" for k in unknown]
    problems += [p for m, r in sorted(modules.items()) if (p := _module_problem(m, r, needed))]
    if problems:
        return Check("LoRA keys", "fail", f"{len(problems)} of {len(modules) + len(unknown)} modules/keys map "
                     f"nowhere on this base model, e.g. {problems[0]}", str(path))
    return Check("LoRA keys", "ok", f"all {len(modules)} modules map onto the base model", str(path))
