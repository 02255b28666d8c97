"""Find and load FLUX.2 weights from local paths only (never downloads).

Layouts (aitk-flux2-previews.md section H):
  - diffusers: `model_index.json` + transformer/ vae/ text_encoder/ tokenizer/ scheduler/ (a snapshot folder, or a
    Hugging Face cache folder `models--black-forest-labs--FLUX.2-dev`, whose `snapshots/<rev>` is used);
  - BFL single files: `flux2-dev.safetensors` + `ae.safetensors` at the root (what AI Toolkit loads,
    flux2_model.py L50-51), with the text encoder + tokenizer from a separate folder
    (AI Toolkit: mistralai/Mistral-Small-3.1-24B-Instruct-2503).
Configs: a folder's own `transformer/config.json` / `vae/config.json` / `scheduler/scheduler_config.json` win; a
BFL-only folder falls back to its family member's pinned values (parity.engine.fullsize) and the FLUX.2 VAE and
scheduler values below. Only safetensors are loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from parity import fileio
from parity.engine.fullsize import TEXT_ENCODER_CONFIGS, TRANSFORMER_CONFIGS, text_encoder_class
from parity.errors import ConfigError, InputFileError, ModelError
from parity.family import DEFAULT_ARCH, FAMILIES, family, guess_member
from parity.jsonio import read_json


def published_transformer_config(arch: str) -> dict:
    """The real transformer config of a family member (parity.engine.fullsize, pinned with its sources): used
    only when the base folder has no config of its own."""
    return dict(TRANSFORMER_CONFIGS[family(arch).transformer_config])


# Real FLUX.2 VAE config (aitk-flux2-previews.md section H; AutoencoderKLFlux2 defaults).
FLUX2_DEV_VAE_CONFIG: dict = {
    "_class_name": "AutoencoderKLFlux2",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 32,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "force_upcast": True,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "batch_norm_eps": 1e-4,
    "batch_norm_momentum": 0.1,
    "patch_size": [2, 2],
}

BFL_VAE_FILE = "ae.safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str):
    """'fp32' | 'bf16' | 'fp16' -> torch dtype (ValueError otherwise)."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[name])


def refuse_pickle(path: str | Path) -> None:
    """Raise InputFileError for pickle-based weight files (they can run code when loaded)."""
    if str(path).lower().endswith(PICKLE_SUFFIXES):
        raise InputFileError(
            "pickle-based weights are refused: loading them can run arbitrary code; convert to .safetensors", path
        )


def load_safetensors(path: str | Path) -> dict:
    """Load a safetensors file to CPU tensors; a clear InputFileError for pickles, missing or broken files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise InputFileError("file not found", path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputFileError(f"not a readable safetensors file ({exc})", path) from None


@dataclass(frozen=True)
class BaseLayout:
    """Where each component of a base model lives. `kind` is 'diffusers' or 'bfl'."""

    root: Path
    kind: str
    transformer: Path            # transformer/ folder (diffusers) or the BFL single file (Family.single_file)
    vae: Path                    # vae/ folder or ae.safetensors
    transformer_config: dict
    vae_config: dict
    scheduler_config: dict
    text_encoder: Path | None    # folder with config.json + *.safetensors
    tokenizer: Path | None       # folder with tokenizer files
    arch: str = DEFAULT_ARCH     # a parity.family arch (see detect_arch)

    @property
    def klein(self) -> bool:
        return family(self.arch).klein


def _hf_cache_snapshot(path: Path) -> Path:
    """A Hugging Face cache repo folder (`models--org--name`) -> its snapshot for refs/main (or the only one)."""
    snaps = path / "snapshots"
    if not snaps.is_dir():
        return path
    ref = path / "refs" / "main"
    if ref.is_file():
        cand = snaps / ref.read_text().strip()
        if cand.is_dir():
            return cand
    found = sorted(p for p in snaps.iterdir() if p.is_dir())
    if len(found) == 1:
        return found[0]
    raise ModelError(f"Hugging Face cache folder has {len(found)} snapshots and no refs/main; pass one snapshot", path)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable config ({exc})", path) from None
    except ConfigError as exc:
        raise ModelError(f"unreadable config ({exc.message})", path) from None


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def _pickles_only(folder: Path) -> bool:
    return folder.is_dir() and not _has_weights(folder) and any(
        p.suffix.lower() in PICKLE_SUFFIXES for p in folder.iterdir())


def _text_folders(root: Path | None) -> tuple[Path | None, Path | None]:
    """(text-encoder folder, tokenizer folder) inside a diffusers root or a plain Mistral folder."""
    if root is None:
        return None, None
    te = root / "text_encoder" if (root / "text_encoder").is_dir() else root
    tok = root / "tokenizer" if (root / "tokenizer").is_dir() else te
    return te, tok


def _single_files() -> str:
    return ", ".join(f.single_file for f in FAMILIES.values())


def _bfl_file(root: Path) -> tuple[str | None, Path | None]:
    """(arch, path) of the first BFL single file present at the root, FLUX.2-dev first."""
    for fam in FAMILIES.values():
        if (root / fam.single_file).is_file():
            return fam.arch, root / fam.single_file
    return None, None


def detect_arch(root: Path, tcfg: dict | None, bfl_arch: str | None) -> str:
    """Which FLUX.2 family member a base folder holds: the BFL file name when there is no diffusers transformer,
    else parity.family.guess_member from the pipeline class, the guidance embedding, the file name and the
    context width."""
    if bfl_arch is not None and not (root / "transformer").is_dir():
        return bfl_arch
    index = _read_json(root / "model_index.json") or {}
    return guess_member(index.get("_class_name"), None if tcfg is None else bool(tcfg.get("guidance_embeds", True)),
                        (tcfg or {}).get("joint_attention_dim"), named=bfl_arch).arch


def check_config_agrees(arch: str, tcfg: dict, config_file: Path) -> None:
    """A transformer config whose guidance embedding contradicts the member the folder holds (a [klein] file or
    pipeline with a guidance-embedding config, or the reverse) would render another model: ModelError."""
    member = family(arch)
    has = bool(tcfg.get("guidance_embeds", True))
    if has != member.guidance_embeds:
        raise ModelError(f"guidance_embeds is {str(has).lower()} but the base model is {member.label} ({arch}), "
                         f"which {'runs true CFG without' if member.true_cfg else 'is guidance-distilled with'} a "
                         "guidance embedding: a config of another model", config_file)


def resolve_base(base_model: str | Path, *, text_encoder: str | Path | None = None,
                 layout: str = "auto") -> BaseLayout:
    """Work out the layout of a local base-model folder. layout: 'auto' (diffusers when transformer/ has
    safetensors, else BFL files), 'diffusers' or 'bfl'. Raises ModelError naming the folder and what is missing."""
    root = Path(os.path.expanduser(str(base_model)))
    if root.is_file():
        refuse_pickle(root)
        if root.name.endswith(".safetensors"):
            root = root.parent  # a flux2-dev.safetensors path: use its folder
    if not root.is_dir():
        raise ModelError("base model folder not found (weights are never downloaded; give a local path)", root)
    root = _hf_cache_snapshot(root)
    has_diffusers = _has_weights(root / "transformer")
    bfl_arch, bfl_path = _bfl_file(root)
    has_bfl = bfl_path is not None
    if layout == "auto":
        layout = "diffusers" if has_diffusers else "bfl" if has_bfl else ""
    if layout not in ("diffusers", "bfl"):
        if _pickles_only(root / "transformer") or any(root.glob("*.ckpt")) or any(root.glob("*.pt")):
            raise InputFileError("only pickle weights (.ckpt/.pt/.bin) found; they are refused because loading them "
                                 "can run code: convert to safetensors", root)
        raise ModelError(f"no FLUX.2 transformer: expected transformer/*.safetensors (diffusers layout) or "
                         f"one of {_single_files()} + {BFL_VAE_FILE} (BFL layout)", root)

    own_tcfg = _read_json(root / "transformer" / "config.json")
    arch = detect_arch(root, own_tcfg, bfl_arch)
    if own_tcfg is not None:
        check_config_agrees(arch, own_tcfg, root / "transformer" / "config.json")
    tcfg = own_tcfg or published_transformer_config(arch)
    vcfg = _read_json(root / "vae" / "config.json") or dict(FLUX2_DEV_VAE_CONFIG)
    from parity.engine.schedule import FLUX2_SCHEDULER_CONFIG

    scfg = _read_json(root / "scheduler" / "scheduler_config.json") or dict(FLUX2_SCHEDULER_CONFIG)

    if layout == "diffusers":
        if not has_diffusers:
            raise ModelError("diffusers layout requested but transformer/ has no .safetensors weights", root)
        transformer = root / "transformer"
        vae = root / "vae"
        if not _has_weights(vae):
            raise ModelError("missing vae/*.safetensors", root)
    else:
        if bfl_path is None:
            raise ModelError(f"missing the BFL transformer: one of {_single_files()}", root)
        transformer, vae = bfl_path, root / BFL_VAE_FILE
        if not vae.is_file():
            raise ModelError(f"missing {BFL_VAE_FILE} (the BFL-format VAE next to {transformer.name})", root)

    te_root = Path(os.path.expanduser(str(text_encoder))) if text_encoder else None
    if te_root is not None and not te_root.is_dir():
        raise ModelError("text encoder folder not found", te_root)
    if te_root is None and (root / "text_encoder").is_dir():
        te_root = root
    te, tok = _text_folders(te_root)
    return BaseLayout(root=root, kind=layout, transformer=transformer, vae=vae, transformer_config=tcfg,
                      vae_config=vcfg, scheduler_config=scfg, text_encoder=te, tokenizer=tok, arch=arch)


def _config_kwargs(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def load_transformer(layout: BaseLayout, dtype):
    """Flux2Transformer2DModel in `dtype` on CPU, from the diffusers folder or the BFL single file (converted by
    diffusers' own single-file converter, with the local/real config written to a temporary folder)."""
    import tempfile

    from diffusers import Flux2Transformer2DModel

    if layout.kind == "diffusers":
        try:
            return Flux2Transformer2DModel.from_pretrained(str(layout.transformer), dtype=dtype,
                                                           local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"cannot load the transformer ({type(exc).__name__}: {exc})", layout.transformer) from None
    sd = load_safetensors(layout.transformer)
    prefix = "model.diffusion_model."  # ComfyUI-style prefix: diffusers' converter does not strip it (notes sec. 4)
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
    if "single_stream_modulation.lin.weight" not in sd:
        raise ModelError("not a FLUX.2 BFL transformer (no single_stream_modulation.lin.weight)", layout.transformer)
    with tempfile.TemporaryDirectory(prefix="parity-flux2-cfg-") as tmp:
        cfg_dir = Path(tmp) / "transformer"
        cfg_dir.mkdir()
        cfg = dict(layout.transformer_config)
        cfg["_class_name"] = "Flux2Transformer2DModel"
        fileio.write_text(cfg_dir / "config.json", json.dumps(cfg))
        try:
            return Flux2Transformer2DModel.from_single_file(sd, config=tmp, subfolder="transformer", dtype=dtype,
                                                            local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"cannot load the BFL transformer ({type(exc).__name__}: {exc})",
                             layout.transformer) from None


def load_vae(layout: BaseLayout, dtype):
    """AutoencoderKLFlux2 in `dtype` (BN buffers included, as AI Toolkit's `.to(dtype)` does)."""
    from diffusers import AutoencoderKLFlux2

    if layout.kind == "diffusers":
        try:
            vae = AutoencoderKLFlux2.from_pretrained(str(layout.vae), dtype=dtype, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"cannot load the VAE ({type(exc).__name__}: {exc})", layout.vae) from None
        return _cast_all(vae, dtype).eval()
    from parity.engine import keymap

    sd = load_safetensors(layout.vae)
    try:
        converted = keymap.bfl_to_diffusers_vae(sd)
    except KeyError as exc:
        raise ModelError(f"not a FLUX.2 BFL VAE (unknown key {exc})", layout.vae) from None
    vae = AutoencoderKLFlux2.from_config(_config_kwargs(layout.vae_config))
    missing, unexpected = vae.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ModelError(f"VAE keys do not fit the config: missing {missing[:3]}, unexpected {unexpected[:3]}",
                         layout.vae)
    return _cast_all(vae, dtype).eval()


def _cast_all(model, dtype):
    """Parameters and floating buffers (the latent BN statistics) in `dtype`, as AI Toolkit's `vae.to(dtype)`."""
    for name, buf in list(model.named_buffers()):
        if buf.is_floating_point() and buf.dtype != dtype:
            mod_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(mod_name) if mod_name else model, attr, buf.to(dtype))
    if any(p.dtype != dtype for p in model.parameters()):
        model = model.to(dtype)
    return model


def _text_encoder_class(folder: Path, arch: str):
    """The transformers class of the member's text encoder (its pinned config's `architectures`:
    Mistral3ForConditionalGeneration for FLUX.2-dev, Qwen3ForCausalLM for [klein], flux2_klein_model.py L41-44);
    a folder whose config names another model type is a ModelError (it would encode something else)."""
    member = family(arch)
    pinned = TEXT_ENCODER_CONFIGS[member.text_encoder_config]
    mtype = (_read_json(folder / "config.json") or {}).get("model_type")
    if mtype is not None and mtype != pinned["model_type"]:
        raise ModelError(f"text encoder is {mtype!r} but this base model needs {pinned['model_type']!r} "
                         f"({member.text_encoder_repo} for {member.label})", folder)
    return text_encoder_class(pinned)


def load_text_encoder(layout: BaseLayout, dtype, cast_path: str = "aitk"):
    """Mistral3ForConditionalGeneration (FLUX.2-dev) or Qwen3ForCausalLM ([klein]) from the text-encoder folder.
    te_cast 'aitk': loaded with `dtype` and then `.to(dtype)`, as AI Toolkit's flux2_model.py does; the second cast
    also rounds the rotary `inv_freq` buffer, which `from_pretrained(dtype=...)` keeps in fp32
    (bit-exact-numerics.md detail 3). 'diffusers': from_pretrained only."""
    folder = layout.text_encoder
    if folder is None:
        raise ModelError("no text encoder: the base folder has no text_encoder/ and none was given "
                         f"(AI Toolkit uses {family(layout.arch).text_encoder_repo})", layout.root)
    if not _has_weights(folder):
        if _pickles_only(folder):
            raise InputFileError("text encoder has only pickle weights; refused (can run code)", folder)
        raise ModelError("text encoder folder has no .safetensors weights", folder)
    cls = _text_encoder_class(folder, layout.arch)
    try:
        te = cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load the text encoder ({type(exc).__name__}: {exc})", folder) from None
    if cast_path == "aitk":
        te = te.to(dtype)
    return te.eval()


def load_tokenizer(layout: BaseLayout):
    """The real PixtralProcessor where it loads (needs torchvision), else AutoTokenizer from the same folder
    (same token ids; cpu-stack-notes.md section 2)."""
    folder = layout.tokenizer
    if folder is None:
        raise ModelError("no tokenizer folder (tokenizer/ in the base folder or the text-encoder folder)", layout.root)
    from transformers import AutoProcessor, AutoTokenizer

    try:
        proc = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        if hasattr(proc, "apply_chat_template"):
            return proc
    except Exception:  # noqa: BLE001 - PixtralProcessor without torchvision raises assorted errors; fall back
        pass
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the tokenizer ({type(exc).__name__}: {exc})", folder) from None


def file_identity(folder: Path | None, patterns=("*.safetensors",)) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of the weight files of a folder: a cheap identity for cache keys."""
    if folder is None or not folder.is_dir():
        return []
    out = []
    for pat in patterns:
        for p in sorted(folder.glob(pat)):
            st = p.stat()
            out.append((p.name, st.st_size, st.st_mtime_ns))
    return out


def tokenizer_identity(folder: Path | None) -> str:
    """sha256 over the tokenizer folder's small files (tokenizer, template, processor configs)."""
    import hashlib

    h = hashlib.sha256()
    if folder is None or not folder.is_dir():
        return ""
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.endswith(".safetensors") and p.stat().st_size < 64 * 2**20:
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


BASE_MODEL_ENV = "PARITY_BASE_MODEL"
TEXT_ENCODER_ENV = "PARITY_TEXT_ENCODER"


def find_base_model(explicit: str | Path | None = None, job_name_or_path: str | None = None) -> Path:
    """The local base-model folder: the case's explicit path, else $PARITY_BASE_MODEL, else the job's
    `model.name_or_path` as a local folder or as a hub id found in the local Hugging Face cache
    ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub). Never downloads; ModelError when nothing is found."""
    for cand in (explicit, os.environ.get(BASE_MODEL_ENV), job_name_or_path):
        if not cand:
            continue
        p = Path(os.path.expanduser(str(cand)))
        if p.exists():
            return p
        if cand is job_name_or_path and "/" in str(cand) and not str(cand).startswith(("/", ".", "~")):
            hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
                os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
            cached = Path(hub) / ("models--" + str(cand).replace("/", "--"))
            if cached.is_dir():
                return cached
            raise ModelError(f"base model {cand!r} is not in the local Hugging Face cache ({hub}); weights are "
                             f"never downloaded: give a local path or set {BASE_MODEL_ENV}")
        if cand is explicit or cand is job_name_or_path:
            raise ModelError("base model folder not found", p)
    raise ModelError(f"no base model: give one in the case, set {BASE_MODEL_ENV}, or use a job whose "
                     f"model.name_or_path is a local folder")
