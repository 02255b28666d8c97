"""Read AI Toolkit job configs: the user's YAML, the UI's `.job_config.json`, and the `config.yaml` copy AI
Toolkit writes into `{training_folder}/{name}/`. Extract the model/train/network/save facts that decide the
pixels of a preview. No torch.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from parity import yamlsafe
from parity.errors import ConfigError
from parity.family import aitk_arch, arches, family, is_member, other_label
from parity.jsonio import parse_json


class _AitkLoader(yaml.SafeLoader):
    """yaml.SafeLoader plus AI Toolkit's extra float resolver (toolkit/config.py L51-61), which makes
    exponent floats without a dot (`1e-4`, `4e0`) floats instead of strings. Still a safe loader."""


_AitkLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _ordered_dict(loader: yaml.SafeLoader, node: yaml.Node) -> dict:
    # An OrderedDict dumped by a PyYAML without oyaml's representer: `!!python/object/apply:
    # collections.OrderedDict [[[k, v], ...]]`. Built as a plain dict from data only (nothing is imported).
    seq = loader.construct_sequence(node, deep=True)
    pairs = seq[0] if len(seq) == 1 and isinstance(seq[0], list) else seq
    try:
        return {k: v for k, v in pairs}
    except (TypeError, ValueError):
        raise yaml.constructor.ConstructorError(None, None, "malformed OrderedDict", node.start_mark) from None


_AitkLoader.add_constructor("tag:yaml.org,2002:python/object/apply:collections.OrderedDict", _ordered_dict)

_ENV = re.compile(r"\$\{([^}]+)\}")


def read_config_file(path: Path) -> tuple[dict, str]:
    """Parse a job config file. Returns (raw dict, kind) with kind "config.yaml" (AI Toolkit's copy, already
    preprocessed), "job_json" (.json/.jsonc) or "yaml" (a user YAML). Malformed text -> ConfigError with line
    and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file: {e}", path) from None
    suffix = path.suffix.lower()
    is_copy = path.name == "config.yaml" and (path.parent / "samples").is_dir()
    if not is_copy:
        # ${VAR} placeholders are replaced from the environment before parsing (toolkit/config.py L19-33,
        # L127); the config.yaml copy is written after that, so it never holds them.
        def env(m: re.Match) -> str:
            value = os.environ.get(m.group(1))
            if value is None:
                raise ConfigError(f"environment variable {m.group(1)} is not set (used as ${{{m.group(1)}}})", path)
            return value

        text = _ENV.sub(env, text)
    if suffix in (".json", ".jsonc"):
        yamlsafe.check_size(text, path)
        # plain JSON, as AI Toolkit's json.loads (toolkit/config.py L128-129): no comments even in .jsonc
        data = parse_json(text, path, max_bytes=yamlsafe.MAX_BYTES)
        kind = "job_json"
    elif suffix in (".yaml", ".yml"):
        try:
            data = yamlsafe.load(text, path, loader=_AitkLoader, duplicates="warn")  # a SafeLoader subclass
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"invalid YAML{where}: {e.problem or e.context}", path) from None
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML: {e}", path) from None
        kind = "config.yaml" if is_copy else "yaml"
    else:
        raise ConfigError("config must be .yaml, .yml, .json or .jsonc (as AI Toolkit requires)", path)
    if not isinstance(data, dict):
        raise ConfigError(f"top level must be a mapping, got {type(data).__name__}", path)
    return data, kind


def preprocess(data: dict, path: Path, *, apply: bool = True) -> dict:
    """AI Toolkit's preprocess_config (toolkit/config.py L36-47): every `[name]` anywhere in the config,
    sample prompts included, becomes `config.name` by a text replace on the JSON dump, before any process
    sees it. So in a prompt `[name]` is the JOB NAME whether or not a trigger word is set (the trigger
    injection's own `[name]` rule never sees one). `run.py --name` could override the name; that is not
    recorded anywhere, so config.name is assumed."""
    if "job" not in data:
        raise ConfigError("missing top-level 'job' key (AI Toolkit requires it)", path)
    if not isinstance(data.get("config"), dict):
        raise ConfigError("missing 'config' section (a mapping with name and process)", path)
    name = data["config"].get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("missing config.name (AI Toolkit requires a job name)", path)
    if not apply:  # the config.yaml copy is dumped after preprocessing (BaseTrainProcess.py L75-79)
        return data
    try:
        text = json.dumps(data).replace("[name]", name)
        return parse_json(text, path, max_bytes=2**31)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"AI Toolkit's [name] preprocessing fails on this config: {e}", path) from None


_DTYPES = {  # get_torch_dtype spellings (toolkit/train_tools.py L37-49)
    "float": "fp32", "fp32": "fp32", "single": "fp32", "float32": "fp32",
    "fp16": "fp16", "half": "fp16", "float16": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
}


def normalise_dtype(value: Any, key: str, path: Path) -> str:
    d = _DTYPES.get(value) if isinstance(value, str) else None
    if d is None:
        raise ConfigError(f"{key} {value!r} is not a dtype AI Toolkit renders in (fp32/bf16/fp16 spellings)", path)
    return d


@dataclass(frozen=True)
class JobFacts:
    """Model/train/network/save facts that matter for parity (reference §A.5-A.7), with code defaults."""

    job_name: str               # config.name: checkpoint file names (BaseSDTrainProcess.py L516-543 use job.name)
    process_name: str           # process-level `name` or config.name: the output folder (BaseProcess.py L21)
    process_type: str
    training_folder: str | None
    arch: str
    name_or_path: str | None
    dtype: str                  # train.dtype (code default fp32, config_modules.py L395), normalised
    quantize: bool
    quantize_te: bool           # defaults to quantize; FLUX.2 quantizes Mistral with `qtype`, not qtype_te
    qtype: str | None           # effective transformer qtype, None when not quantized
    qtype_te: str | None        # effective text-encoder qtype: `qtype` for FLUX.2-dev (flux2_model.py L108-111),
                                # `qtype_te` for [klein] (flux2_klein_model.py L46-48); None when not quantized
    accuracy_recovery_adapter: str | None
    layer_offloading: bool
    low_vram: bool              # model.low_vram: for [klein] it skips the text encoder's `.to(device, dtype)`
    network_type: str
    save_dtype: str             # save.dtype (code default float16), normalised
    trigger_word: str | None
    sample_every: Any
    sample_start_step: Any
    steps: int                  # train.steps (code default 1000): final sample label
    start_step: int | None      # train.start_step: the step the run starts at (BaseSDTrainProcess.py L2172-2174)
    skip_first_sample: bool
    force_first_sample: bool
    disable_sampling: bool
    save_every: Any
    use_ema: bool
    # sample prompts pre-encoded once from the `sample` block (train.unload_text_encoder, train.
    # cache_text_embeddings or a dataset's cache_text_embeddings: SDTrainer.py L351-365, BaseSDTrainProcess.py
    # L153-186); sample() then takes embedding i from that cache for every group (base_model.py L544-546)
    caches_sample_prompts: bool
    pretrained_lora_path: str | None  # network.pretrained_lora_path: loaded before the baseline (L2052-2056)
    sources: dict[str, str]     # "block" or "default" for dtype, quantize, quantize_te, qtype, trigger_word, steps


PROCESS_TYPES: tuple[str, ...] = ("sd_trainer", "diffusion_trainer", "ui_trainer")


def process_of(data: dict, path: Path) -> dict:
    procs = data["config"].get("process")
    if not isinstance(procs, list) or not procs:
        raise ConfigError("config.process must be a non-empty list", path)
    proc = procs[0]
    if not isinstance(proc, dict):
        raise ConfigError("config.process[0] must be a mapping", path)
    ptype = proc.get("type")
    # sd_trainer (YAML), diffusion_trainer and ui_trainer (the UI; UITrainer subclasses SDTrainer and keeps its
    # sample(): extensions_built_in/sd_trainer/__init__.py L23-37) all render previews the same way
    if ptype not in PROCESS_TYPES:
        raise ConfigError(
            f"config.process[0].type is {ptype!r}; expected one of {', '.join(map(repr, PROCESS_TYPES))}", path
        )
    return proc


def _section(proc: dict, key: str, path: Path) -> dict:
    value = proc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"process[0].{key} must be a mapping, got {type(value).__name__}", path)
    return value


def check_arch(model: dict, path: Path) -> str:
    """Only the FLUX.2 family (parity.family) is supported; the arch is read as AI Toolkit reads it
    (parity.family.aitk_arch: `:tag` stripped, `flex1` is FLUX.1, legacy is_* flags, else sd1)."""
    arch = aitk_arch(model)
    if not is_member(arch):
        raise ConfigError(
            f"not a FLUX.2 job: model.arch is {other_label(arch)} (found {model.get('arch')!r}); parity supports "
            f"{', '.join(repr(a) for a in arches())}",
            path,
        )
    return arch


def caches_sample_prompts(train: dict, datasets) -> bool:
    """Whether SDTrainer pre-encodes the sample prompts (SDTrainer.py L351-365)."""
    if train.get("unload_text_encoder") or train.get("cache_text_embeddings"):
        return True
    return any(isinstance(d, dict) and d.get("cache_text_embeddings") for d in (datasets or []))


def job_facts(data: dict, path: Path) -> JobFacts:
    proc = process_of(data, path)
    model = _section(proc, "model", path)
    train = _section(proc, "train", path)
    network = _section(proc, "network", path)
    save = _section(proc, "save", path)
    sample = _section(proc, "sample", path)
    arch = check_arch(model, path)
    job_name = data["config"]["name"]
    quantization = _quantization(model, arch)
    steps = _train_steps(train, path)
    trigger = proc.get("trigger_word")
    if trigger is not None and not isinstance(trigger, str):
        raise ConfigError(f"process[0].trigger_word must be a string, got {trigger!r}", path)
    net_type = network.get("type", "lora") if network else "none"
    return JobFacts(
        job_name=job_name,
        process_name=proc.get("name", job_name),
        process_type=proc["type"],
        training_folder=proc.get("training_folder", data["config"].get("training_folder")),
        arch=arch,
        name_or_path=model.get("name_or_path"),
        dtype=normalise_dtype(train.get("dtype", "fp32"), "process[0].train.dtype", path),
        **quantization,
        low_vram=bool(model.get("low_vram", False)),
        network_type=str(net_type).lower(),
        # informational (previews use the fp32 training weights); keep unknown spellings as written
        save_dtype=_DTYPES.get(save.get("dtype", "float16"), str(save.get("dtype"))),
        trigger_word=trigger,
        sample_every=sample.get("sample_every", 100),
        sample_start_step=sample.get("sample_start_step", 0),
        steps=steps,
        start_step=_start_step(train, path),
        skip_first_sample=bool(train.get("skip_first_sample", False)),
        force_first_sample=bool(train.get("force_first_sample", False)),
        disable_sampling=bool(train.get("disable_sampling", False)),
        save_every=save.get("save_every", 1000),
        use_ema=bool((train.get("ema_config") or {}).get("use_ema", False))
        if isinstance(train.get("ema_config") or {}, dict) else False,
        caches_sample_prompts=caches_sample_prompts(train, proc.get("datasets")),
        pretrained_lora_path=network.get("pretrained_lora_path") or None,
        sources=_fact_sources(proc, model, train, arch),
    )


def _quantization(model: dict, arch: str) -> dict[str, Any]:
    """JobFacts' quantization fields from the `model` section, as AI Toolkit's ModelConfig reads them."""
    quantize = bool(model.get("quantize", False))
    quantize_te = bool(model.get("quantize_te", quantize))  # config_modules.py: quantize_te defaults to quantize
    qtype = model.get("qtype", "qfloat8")
    qtype_te = model.get("qtype_te", "qfloat8")
    ara = model.get("accuracy_recovery_adapter")
    if isinstance(qtype, str) and "|" in qtype:  # "qtype|ara_path" (config_modules.py L747-749)
        qtype, ara = qtype.split("|", 1)
    layer_offloading = bool(model.get("layer_offloading", model.get("auto_memory", False)))
    if layer_offloading and qtype == "qfloat8":  # quanto -> torchao float8 (config_modules.py L714-717)
        qtype = "float8"
    te_qtype = {"qtype": qtype, "qtype_te": qtype_te}[family(arch).te_qtype_key]
    return dict(quantize=quantize, quantize_te=quantize_te,
                qtype=qtype if (quantize or quantize_te) else None,
                qtype_te=te_qtype if quantize_te else None,
                accuracy_recovery_adapter=ara, layer_offloading=layer_offloading)


def _train_steps(train: dict, path: Path) -> int:
    steps = train.get("steps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"process[0].train.steps must be a non-negative integer, got {steps!r}", path)
    return steps


def _start_step(train: dict, path: Path) -> int | None:
    start = train.get("start_step")
    if start is not None and (isinstance(start, bool) or not isinstance(start, int) or start < 0):
        raise ConfigError(f"process[0].train.start_step must be a non-negative integer, got {start!r}", path)
    return start


def _fact_sources(proc: dict, model: dict, train: dict, arch: str) -> dict[str, str]:
    """Where each job-level knob came from: written in its section ("block") or AI Toolkit's code default."""
    return {
        "dtype": "block" if "dtype" in train else "default",
        "quantize": "block" if "quantize" in model else "default",
        "quantize_te": "block" if "quantize_te" in model else ("block" if "quantize" in model else "default"),
        "qtype": "block" if "qtype" in model else "default",
        "qtype_te": "block" if family(arch).te_qtype_key in model else "default",
        "trigger_word": "block" if "trigger_word" in proc else "default",
        "steps": "block" if "steps" in train else "default",
    }
