"""Inference settings under test: what the user's inference stack would render for each preview.

Three ways to say it, plus explicit overrides on top:

- `preview` (default): the preview's own render spec -- a pure parity check of the reference pipeline.
- a request file in the reference inference server's JSON format (runcomfy-com/ai-toolkit-inference, model `flux2`;
  aitk-flux2-previews.md section D.4): prompt i of the request pairs with sample i of the job.
- a named profile: `reference-server` (that server's defaults applied to the job's own prompts) or `diffusers`
  (stock diffusers `Flux2Pipeline`).
- `--set KEY=VALUE` overrides (RenderSpec field names or friendly aliases), applied last.

Every value of the resulting spec records where it came from (parity.spec.SOURCES).
No torch here: this module only builds plain RenderSpecs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from parity.errors import ConfigError
from parity.spec import DTYPES, LORA_APPLICATIONS, SCHEDULES, SEMANTICS, RenderSpec, ResolvedSpec

# ----------------------------------------------------------------------------------------------------------------
# The reference inference server's defaults (aitk-flux2-previews.md section D.1/D.2).
# flux2.py L66-73: resolution_divisor=16, default_steps=25, default_guidance_scale=4.0, lora_merge_method=CUSTOM.
# base.py L114-118: width/height 1024, default_seed=42, default_network_multiplier=1.0.
SERVER_STEPS = 25
SERVER_GUIDANCE = 4.0
SERVER_SIZE = 1024
SERVER_SEED = 42
SERVER_MULTIPLIER = 1.0
# The server floors sizes to 16 since commit f89a43c (2026-01-29); its docs and the class docstring (flux2.py L62)
# still say 32. We follow the code and let users pick the divisor (docs/inference-settings.md).
SERVER_RESOLUTION_DIVISOR = 16

# diffusers' Flux2Pipeline.__call__ defaults: num_inference_steps=50, guidance_scale=4.0 (section E / G).
DIFFUSERS_STEPS = 50
DIFFUSERS_GUIDANCE = 4.0

PROFILES: tuple[str, ...] = ("reference-server", "diffusers")

# Request schema limits (src/schemas/request.py, section D.4).
_LIMITS = {
    "width": (64, 4096),
    "height": (64, 4096),
    "guidance_scale": (0.0, 20.0),
    "sample_steps": (1, 150),
    "network_multiplier": (-2.0, 2.0),
}

# ----------------------------------------------------------------------------------------------------------------
# Override keys: RenderSpec field names plus friendly aliases, and the one extra setting resolution_divisor.
ALIASES: dict[str, str] = {
    "steps": "sample_steps",
    "guidance": "guidance_scale",
    "cfg": "guidance_scale",
    "lora_scale": "network_multiplier",
    "multiplier": "network_multiplier",
    "lora": "lora_path",
    "checkpoint": "lora_path",
    "quantization": "quantize",
}
_SPEC_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RenderSpec))
EXTRA_SETTINGS: tuple[str, ...] = ("resolution_divisor",)
VALID_KEYS: tuple[str, ...] = tuple(sorted(set(_SPEC_FIELDS) | set(ALIASES) | set(EXTRA_SETTINGS)))

# optimum-quanto weight qtypes AI Toolkit's `qtype` accepts for FLUX.2 (plus "none").
QTYPES: tuple[str, ...] = ("qfloat8", "qfloat8_e4m3fn", "qfloat8_e5m2", "qint8", "qint4", "qint2")
_GENERATOR_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_STATIC_RE = re.compile(r"^static:(.+)$")


def canonical_key(key: str) -> str:
    """The RenderSpec field (or extra setting) an override key names; ConfigError listing valid keys if unknown."""
    k = key.strip().lower().replace("-", "_")
    k = ALIASES.get(k, k)
    if k not in _SPEC_FIELDS and k not in EXTRA_SETTINGS:
        raise ConfigError(f"unknown setting {key!r}; valid keys: {', '.join(VALID_KEYS)}")
    return k


def _bad(key: str, value: Any, expected: str, where: str | None) -> ConfigError:
    return ConfigError(f"setting {key}={value!r}: expected {expected}", where)


def _as_int(key: str, value: Any, where: str | None) -> int:
    if isinstance(value, bool):
        raise _bad(key, value, "an integer", where)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise _bad(key, value, "an integer", where)


def _as_float(key: str, value: Any, where: str | None) -> float:
    if isinstance(value, bool):
        raise _bad(key, value, "a number", where)
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            raise _bad(key, value, "a number", where) from None
    else:
        raise _bad(key, value, "a number", where)
    if not math.isfinite(out):
        raise _bad(key, value, "a finite number", where)
    return out


def _is_none_word(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "none", "null", "false", "off", "no"))


def coerce_value(key: str, value: Any, where: str | None = None) -> Any:
    """Type-check one setting value (a string from the command line or a YAML/JSON scalar) for canonical `key`."""
    if key in ("width", "height", "sample_steps", "resolution_divisor", "seed"):
        v = _as_int(key, value, where)
        if key == "seed" and v < 0:
            raise _bad(key, value, "a seed >= 0 (-1 means a random seed, which cannot reproduce a preview)", where)
        if key in ("width", "height", "sample_steps", "resolution_divisor") and v < 1:
            raise _bad(key, value, "a positive integer", where)
        return v
    if key in ("guidance_scale", "network_multiplier"):
        return _as_float(key, value, where)
    if key == "dtype":
        v = str(value).strip().lower()
        v = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "half": "fp16", "float": "fp32"}.get(v, v)
        if v not in DTYPES:
            raise _bad(key, value, f"one of {', '.join(DTYPES)}", where)
        return v
    if key in ("quantize", "quantize_te"):
        if _is_none_word(value):
            return None
        if value is True or (isinstance(value, str) and value.strip().lower() in ("true", "yes", "on")):
            return "qfloat8"  # AI Toolkit's `quantize: true` means model.qtype, default qfloat8 (section A.5)
        v = str(value).strip().lower()
        if v not in QTYPES:
            raise _bad(key, value, f"none, true or one of {', '.join(QTYPES)}", where)
        return v
    if key == "semantics":
        v = str(value).strip().lower()
        if v not in SEMANTICS:
            raise _bad(key, value, f"one of {', '.join(SEMANTICS)}", where)
        return v
    if key == "schedule":
        v = str(value).strip().lower()
        m = _STATIC_RE.match(v)
        if m:
            shift = _as_float(key, m.group(1), where)
            if shift <= 0:
                raise _bad(key, value, "static:S with a shift S > 0", where)
            return f"static:{shift:g}"
        if v not in SCHEDULES:
            raise _bad(key, value, f"one of {', '.join(SCHEDULES)} or static:S", where)
        return v
    if key == "lora_application":
        v = str(value).strip().lower()
        if v not in LORA_APPLICATIONS:
            raise _bad(key, value, f"one of {', '.join(LORA_APPLICATIONS)}", where)
        return v
    if key == "generator":
        v = str(value).strip().lower()
        if not _GENERATOR_RE.match(v):
            raise _bad(key, value, "cpu, cuda, cuda:N or mps", where)
        return v
    if key == "lora_path":
        return None if _is_none_word(value) else str(value)
    if key == "prompt":
        if not isinstance(value, str):
            raise _bad(key, value, "a string", where)
        return value
    if key == "numerics":
        return _parse_numerics(value, where)
    raise ConfigError(f"unknown setting {key!r}; valid keys: {', '.join(VALID_KEYS)}", where)  # pragma: no cover


def _parse_numerics(value: Any, where: str | None) -> tuple[tuple[str, str], ...]:
    """`detail:choice,detail:choice` (or a mapping) -> sorted tuple of pairs, as RenderSpec.numerics holds them."""
    if isinstance(value, Mapping):
        items = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, str):
        items = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            if ":" not in part:
                raise _bad("numerics", value, "detail:choice pairs separated by commas", where)
            k, v = part.split(":", 1)
            if not k.strip() or not v.strip():
                raise _bad("numerics", value, "detail:choice pairs separated by commas", where)
            items.append((k.strip(), v.strip()))
    else:
        raise _bad("numerics", value, "detail:choice pairs separated by commas", where)
    return tuple(sorted(dict(items).items()))


def parse_overrides(pairs: list[str] | tuple[str, ...], where: str | None = None) -> dict[str, Any]:
    """`["steps=25", "cfg=4"]` -> `{"sample_steps": 25, "guidance_scale": 4.0}` (canonical keys, typed values).
    A later pair wins over an earlier one for the same key. Bad syntax, keys or values raise ConfigError."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if not isinstance(pair, str) or "=" not in pair:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}; valid keys: {', '.join(VALID_KEYS)}", where)
        key, value = pair.split("=", 1)
        k = canonical_key(key)
        out[k] = coerce_value(k, value, where)
    return out


def parse_override_mapping(mapping: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
    """The case file's `set: {key: value}` mapping, checked like --set."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        k = canonical_key(str(key))
        out[k] = coerce_value(k, value, where)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The request file.


@dataclass(frozen=True)
class RequestPrompt:
    prompt: str
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    sample_steps: int | None = None
    guidance_scale: float | None = None
    neg: str | None = None
    trigger_word: str | None = None


# The reference server's FLUX.2-family model ids (src/schemas/models.py ModelType; src/pipelines/flux2_klein.py:
# the klein pipelines subclass its flux2 pipeline with Qwen3, no guidance distillation, the same 25 / 4.0 / 16
# defaults). They equal AI Toolkit's arch names, so a request's model is the RenderSpec arch.
SERVER_MODELS: tuple[str, ...] = ("flux2", "flux2_klein_4b", "flux2_klein_9b")


@dataclass(frozen=True)
class Request:
    path: str
    model: str
    prompts: tuple[RequestPrompt, ...]
    trigger_word: str | None = None
    lora_path: str | None = None
    network_multiplier: float | None = None


def _req_int(obj: Mapping, key: str, where: str, path: str, lo: int | None, hi: int | None) -> int | None:
    if key not in obj or obj[key] is None:
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{where}.{key}: expected an integer, got {v!r}", path)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"{lo}..{hi}"
        raise ConfigError(f"{where}.{key}: {v} is outside the allowed range {rng}", path)
    return v


def _req_float(obj: Mapping, key: str, where: str, path: str, lo: float, hi: float) -> float | None:
    if key not in obj or obj[key] is None:
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}.{key}: expected a number, got {v!r}", path)
    if v < lo or v > hi:
        raise ConfigError(f"{where}.{key}: {v} is outside the allowed range {lo:g}..{hi:g}", path)
    return float(v)


def _req_str(obj: Mapping, key: str, where: str, path: str) -> str | None:
    if key not in obj or obj[key] is None:
        return None
    if not isinstance(obj[key], str):
        raise ConfigError(f"{where}.{key}: expected a string, got {obj[key]!r}", path)
    return obj[key]


def parse_request(data: Any, path: str | Path, base_dir: str | Path | None = None) -> Request:
    """Validate a request object (already JSON-decoded) against the server's schema (section D.4)."""
    path = str(path)
    base = Path(base_dir) if base_dir is not None else Path(path).parent
    if not isinstance(data, Mapping):
        raise ConfigError("request: expected a JSON object with model, prompts and loras", path)
    model = data.get("model")
    if not isinstance(model, str):
        raise ConfigError("model: required, expected the string \"flux2\"", path)
    if model not in SERVER_MODELS:
        hint = " (flux2_diffusers wraps diffusers' pipeline with divisor 32: use the diffusers profile with --set resolution_divisor=32)" if model == "flux2_diffusers" else ""
        raise ConfigError(f"model: {model!r} is not supported; parity checks "
                          f"{', '.join(repr(m) for m in SERVER_MODELS)}{hint}", path)
    trigger = _req_str(data, "trigger_word", "request", path)
    prompts_raw = data.get("prompts")
    if not isinstance(prompts_raw, list) or not prompts_raw:
        raise ConfigError("prompts: required, expected a list with at least one prompt", path)
    prompts = []
    for i, p in enumerate(prompts_raw):
        where = f"prompts[{i}]"
        if not isinstance(p, Mapping):
            raise ConfigError(f"{where}: expected an object with at least \"prompt\"", path)
        text = p.get("prompt")
        if not isinstance(text, str):
            raise ConfigError(f"{where}.prompt: required, expected a string", path)
        given = [k for k in ("ctrl_img", "ctrl_img_1", "ctrl_img_2", "ctrl_img_3") if p.get(k)]
        if given:
            # how the server turns these into reference images is not modelled: refuse rather than drop them
            raise ConfigError(f"{where}.{given[0]}: reference images in requests are not supported by parity yet", path)
        seed = _req_int(p, "seed", where, path, -1, None)
        if seed == -1:
            # base.py L812-814: -1 draws a random seed; such a render can never be compared with a preview.
            raise ConfigError(f"{where}.seed: -1 asks the server for a random seed, which cannot reproduce a preview", path)
        prompts.append(RequestPrompt(
            prompt=text,
            width=_req_int(p, "width", where, path, *_LIMITS["width"]),
            height=_req_int(p, "height", where, path, *_LIMITS["height"]),
            seed=seed,
            sample_steps=_req_int(p, "sample_steps", where, path, *_LIMITS["sample_steps"]),
            guidance_scale=_req_float(p, "guidance_scale", where, path, *_LIMITS["guidance_scale"]),
            neg=_req_str(p, "neg", where, path),
            trigger_word=_req_str(p, "trigger_word", where, path),
        ))
    loras = data.get("loras")
    if not isinstance(loras, list):
        raise ConfigError("loras: required, expected a list of {path, network_multiplier} (may be empty)", path)
    lora_path = multiplier = None
    if len(loras) > 1:
        raise ConfigError(f"loras: {len(loras)} LoRAs given; parity checks one LoRA per request", path)
    if loras:
        lo = loras[0]
        if not isinstance(lo, Mapping):
            raise ConfigError("loras[0]: expected an object with path and network_multiplier", path)
        lp = lo.get("path")
        if not isinstance(lp, str) or not lp:
            raise ConfigError("loras[0].path: required, expected a file path", path)
        if "://" in lp:
            raise ConfigError("loras[0].path: URLs are not fetched; download the LoRA and give its local path", path)
        lora_path = str(Path(lp) if Path(lp).is_absolute() else (base / lp))
        multiplier = _req_float(lo, "network_multiplier", "loras[0]", path, *_LIMITS["network_multiplier"])
    return Request(path=path, model=model, prompts=tuple(prompts), trigger_word=trigger,
                   lora_path=lora_path, network_multiplier=multiplier)


def load_request(path: str | Path, base_dir: str | Path | None = None) -> Request:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("request file not found", p) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the request file: {e}", p) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", p) from None
    return parse_request(data, p, base_dir if base_dir is not None else p.parent)


# ----------------------------------------------------------------------------------------------------------------
# The settings object.


@dataclass(frozen=True)
class InferenceSettings:
    """What to render for each preview. `kind` is preview | request | profile; `name` the profile name or the
    request path; `overrides` canonical key -> typed value (applied last); `resolution_divisor` None = no extra
    floor beyond the engine's 16 (the preview kind), else sizes are floored to it."""

    kind: str = "preview"
    name: str = "preview"
    request: Request | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    resolution_divisor: int | None = None

    @property
    def override_dict(self) -> dict[str, Any]:
        return dict(self.overrides)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "InferenceSettings":
        merged = dict(self.overrides)
        merged.update(overrides)
        div = merged.pop("resolution_divisor", None)
        return replace(self, overrides=tuple(merged.items()),
                       resolution_divisor=div if div is not None else self.resolution_divisor)

    def describe(self) -> str:
        text = {"preview": "the preview's own settings", "profile": f"profile {self.name}",
                "request": f"request {self.name}"}[self.kind]
        if self.overrides:
            text += " with " + ", ".join(f"{k}={v}" for k, v in self.overrides)
        if self.resolution_divisor is not None:
            text += f" (sizes floored to {self.resolution_divisor})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "overrides": dict(self.overrides),
                "resolution_divisor": self.resolution_divisor}

    @classmethod
    def preview(cls) -> "InferenceSettings":
        return cls()

    @classmethod
    def profile(cls, name: str, where: str | None = None) -> "InferenceSettings":
        name = name.strip().lower()
        if name not in PROFILES:
            raise ConfigError(f"unknown inference profile {name!r}; expected preview, {', '.join(PROFILES)} or a request .json file", where)
        div = SERVER_RESOLUTION_DIVISOR if name == "reference-server" else 16  # diffusers floors to 16 (section G)
        return cls(kind="profile", name=name, resolution_divisor=div)

    @classmethod
    def from_request_file(cls, path: str | Path, base_dir: str | Path | None = None) -> "InferenceSettings":
        req = load_request(path, base_dir)
        return cls(kind="request", name=req.path, request=req, resolution_divisor=SERVER_RESOLUTION_DIVISOR)

    @classmethod
    def from_case_value(cls, value: Any, base_dir: str | Path | None = None, where: str | None = None) -> "InferenceSettings":
        """Interpret a case file's `inference:` value (or the CLI's --inference): None/"preview", a profile name,
        a path to a request .json, or a mapping {profile | request, set: {...}}. Relative paths resolve against
        `base_dir` (the case file's folder)."""
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        if value is None:
            return cls.preview()
        if isinstance(value, str):
            v = value.strip()
            if v.lower() in ("", "preview"):
                return cls.preview()
            if v.lower() in PROFILES:
                return cls.profile(v, where)
            if v.lower().endswith(".json") or "/" in v or "\\" in v:
                p = Path(v) if Path(v).is_absolute() else base / v
                return cls.from_request_file(p)
            raise ConfigError(f"inference: unknown value {value!r}; expected preview, {', '.join(PROFILES)} or a request .json file", where)
        if isinstance(value, Mapping):
            unknown = set(value) - {"profile", "request", "set"}
            if unknown:
                raise ConfigError(f"inference: unknown key(s) {', '.join(sorted(map(str, unknown)))}; expected profile, request, set", where)
            if "profile" in value and "request" in value:
                raise ConfigError("inference: give either profile or request, not both", where)
            if "request" in value:
                if not isinstance(value["request"], str):
                    raise ConfigError("inference.request: expected a path to a request .json file", where)
                rp = Path(value["request"])
                settings = cls.from_request_file(rp if rp.is_absolute() else base / rp)
            elif "profile" in value:
                if not isinstance(value["profile"], str):
                    raise ConfigError("inference.profile: expected a profile name", where)
                settings = cls.from_case_value(value["profile"], base, where)
            else:
                settings = cls.preview()
            sets = value.get("set") or {}
            if isinstance(sets, list):
                return settings.with_overrides(parse_overrides(sets, where))
            if not isinstance(sets, Mapping):
                raise ConfigError("inference.set: expected a mapping of KEY: VALUE", where)
            return settings.with_overrides(parse_override_mapping(sets, where))
        raise ConfigError(f"inference: expected preview, a profile name, a request file or a mapping, got {value!r}", where)


# ----------------------------------------------------------------------------------------------------------------
# Building the spec under test for one preview item.


@dataclass
class InferenceResolved(ResolvedSpec):
    """A ResolvedSpec plus the size asked for before the divisor floor (None when no floor applied)."""

    requested_size: tuple[int, int] | None = None


def replace_trigger_server(prompt: str, trigger_word: str | None) -> str:
    """The server's prompt processing (executor.py L682-689): only the literal `[trigger]`, only when a trigger
    word is set; `[name]` stays, `--flags` are not parsed and the prompt is not stripped (section D.5)."""
    if not trigger_word:
        return prompt
    return prompt.replace("[trigger]", trigger_word)


def floor_to(value: int, divisor: int) -> int:
    """The server's `(w // divisor) * divisor` (executor.py L599-629, base.py L800-810)."""
    return (value // divisor) * divisor


def inference_spec(
    item_resolved: ResolvedSpec,
    index: int,
    settings: InferenceSettings,
    *,
    raw_prompt: str | None = None,
    trigger_word: str | None = None,
) -> InferenceResolved:
    """The spec the inference stack under test renders for the preview item `index` (prompt index within its step).

    `item_resolved` is the preview's own spec (the job reader's); `raw_prompt` the sample's prompt text as written in
    the job (before trigger substitution, flag parsing and stripping) and `trigger_word` the job's trigger word,
    both used by the reference-server profile, which sends the job's own prompts to the server."""
    prev = item_resolved.spec
    sources: dict[str, str] = dict(item_resolved.sources)

    if settings.kind == "preview":
        spec = prev
    elif settings.kind == "profile" and settings.name == "reference-server":
        prompt = replace_trigger_server(raw_prompt, trigger_word) if raw_prompt is not None else prev.prompt
        # the job's own model and negative prompt go with its prompts (the server passes negative_prompt=neg or "")
        spec = _server_spec(prompt, None, index, prev.lora_path, None).with_(arch=prev.arch,
                                                                             negative_prompt=prev.negative_prompt)
        sources = {k: "profile" for k in _SPEC_FIELDS}
        sources["prompt"] = "item" if raw_prompt is not None else item_resolved.source("prompt")
        sources["seed"] = "walk"
        sources["lora_path"] = item_resolved.source("lora_path")
    elif settings.kind == "profile" and settings.name == "diffusers":
        # Stock Flux2Pipeline called with the job's prompt, size and seed and a CPU generator: its own defaults for
        # steps (50) and guidance (4.0), empirical mu, PEFT adapters (unfused = live), bf16, nothing quantized.
        spec = prev.with_(sample_steps=DIFFUSERS_STEPS, guidance_scale=DIFFUSERS_GUIDANCE, semantics="diffusers",
                          schedule="empirical", generator="cpu", lora_application="live", dtype="bf16",
                          quantize=None, quantize_te=None, numerics=())
        for k in ("sample_steps", "guidance_scale", "semantics", "schedule", "generator", "lora_application",
                  "dtype", "quantize", "quantize_te", "numerics"):
            sources[k] = "profile"
    elif settings.kind == "request":
        req = settings.request
        assert req is not None
        if index < 0 or index >= len(req.prompts):
            raise ConfigError(
                f"prompts[{index}]: missing; the request has {len(req.prompts)} prompt(s) but the job has a sample "
                f"at index {index} (prompt i of the request pairs with sample i of the job)", req.path)
        p = req.prompts[index]
        prompt = replace_trigger_server(p.prompt, p.trigger_word or req.trigger_word)
        spec = _server_spec(prompt, p, index, req.lora_path, req.network_multiplier).with_(
            arch=req.model, negative_prompt=p.neg or "")
        sources = {k: "profile" for k in _SPEC_FIELDS}
        sources["prompt"] = "request"
        for k in ("width", "height", "sample_steps", "guidance_scale"):
            if getattr(p, k) is not None:
                sources[k] = "request"
        sources["seed"] = "request" if p.seed is not None else "walk"
        sources["lora_path"] = "request"
        if req.network_multiplier is not None:
            sources["network_multiplier"] = "request"
    else:  # pragma: no cover - constructors guard this
        raise ConfigError(f"unknown inference settings kind {settings.kind!r}")

    # Overrides last (source "override").
    ov = settings.override_dict
    if ov:
        spec = spec.with_(**ov)
        for k in ov:
            sources[k] = "override"

    # Size floor to the divisor (the server floors before calling the pipeline; the engine floors to 16 after).
    requested = None
    div = settings.resolution_divisor
    if div is not None:
        w, h = floor_to(spec.width, div), floor_to(spec.height, div)
        if w < div or h < div:
            raise ConfigError(f"resolution_divisor {div}: the size {spec.width}x{spec.height} floors to {w}x{h}")
        if (w, h) != (spec.width, spec.height):
            requested = (spec.width, spec.height)
            if w != spec.width:
                sources["width"] = "floor"
            if h != spec.height:
                sources["height"] = "floor"
            spec = spec.with_(width=w, height=h)
    return InferenceResolved(spec=spec, sources=sources, requested_size=requested)


def _server_spec(prompt: str, p: RequestPrompt | None, index: int, lora_path: str | None,
                 multiplier: float | None) -> RenderSpec:
    """The reference server's render for one prompt: its defaults where a field is missing (section D.1/D.2),
    AI Toolkit's own sampling (it imports ai-toolkit's Flux2Pipeline: flux2.py L124-144), the saved LoRA merged into
    bf16 weights (flux2.py L377-432), bf16, nothing quantized (TE quantization commented out, flux2.py L262-268),
    a CPU generator (base.py L816-817)."""
    def pick(name: str, default: Any) -> Any:
        v = getattr(p, name) if p is not None else None
        return default if v is None else v

    return RenderSpec(
        prompt=prompt,
        width=pick("width", SERVER_SIZE),
        height=pick("height", SERVER_SIZE),
        seed=pick("seed", SERVER_SEED + index),  # executor.py L621-623: 42 + prompt index
        sample_steps=pick("sample_steps", SERVER_STEPS),
        guidance_scale=float(pick("guidance_scale", SERVER_GUIDANCE)),
        lora_path=lora_path,
        network_multiplier=SERVER_MULTIPLIER if multiplier is None else multiplier,
        lora_application="merged",
        dtype="bf16",
        quantize=None,
        quantize_te=None,
        semantics="aitk",
        schedule="aitk",
        generator="cpu",
        numerics=(),
    )
