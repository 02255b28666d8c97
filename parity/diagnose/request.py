"""Request files in the reference inference server's JSON format (runcomfy-com/ai-toolkit-inference, model
`flux2`; aitk-flux2-previews.md section D.4): parsed and checked against the server's own schema limits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from parity import knobs
from parity.errors import ConfigError
from parity.family import DEFAULT_ARCH, arches, is_member, other_hint

MAX_REQUEST_BYTES = 8 * 2**20   # a request file is a few KB


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
    # registry-only settings the request sets (parity.knobs `Setting.request_limit`), as (key, value) pairs
    extra: tuple[tuple[str, Any], ...] = ()


# The reference server's FLUX.2-family model ids (src/schemas/models.py ModelType; src/pipelines/flux2_klein.py:
# the klein pipelines subclass its flux2 pipeline with Qwen3, no guidance distillation, the same 25 / 4.0 / 16
# defaults) equal AI Toolkit's arch names (parity.family), so a request's model is the RenderSpec arch.


@dataclass(frozen=True)
class Request:
    path: str
    model: str
    prompts: tuple[RequestPrompt, ...]
    trigger_word: str | None = None
    lora_path: str | None = None
    network_multiplier: float | None = None


def _req_number(obj: Mapping, key: str, where: str, path: str) -> int | float | None:
    """A number of the request, typed and within the server's schema limit (the registry's `request_limit`)."""
    if key not in obj or obj[key] is None:
        return None
    s, v = knobs.setting(key), obj[key]
    kind = "an integer" if s.value_type is int else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (s.value_type is int and not isinstance(v, int)) \
            or not math.isfinite(v):
        raise ConfigError(f"{where}.{key}: expected {kind}, got {v!r}", path)
    if s.request_limit is not None and not s.request_limit.holds(v):
        raise ConfigError(f"{where}.{key}: {v} is outside the allowed range {s.request_limit.text()}", path)
    return s.value_type(v)


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
    model = _model(data, path)
    trigger = _req_str(data, "trigger_word", "request", path)
    prompts_raw = data.get("prompts")
    if not isinstance(prompts_raw, list) or not prompts_raw:
        raise ConfigError("prompts: required, expected a list with at least one prompt", path)
    prompts = tuple(_prompt(p, f"prompts[{i}]", path) for i, p in enumerate(prompts_raw))
    lora_path, multiplier = _lora(data.get("loras"), base, path)
    return Request(path=path, model=model, prompts=prompts, trigger_word=trigger,
                   lora_path=lora_path, network_multiplier=multiplier)


def _model(data: Mapping, path: str) -> str:
    """The request's `model`: one the server runs with AI Toolkit's FLUX.2 semantics."""
    model = data.get("model")
    if not isinstance(model, str):
        raise ConfigError(f"model: required, expected the string \"{DEFAULT_ARCH}\"", path)
    if not is_member(model):
        hint = f" ({other_hint(model)})" if other_hint(model) else ""
        raise ConfigError(f"model: {model!r} is not supported; parity checks "
                          f"{', '.join(repr(m) for m in arches())}{hint}", path)
    return model


def _prompt(p: Any, where: str, path: str) -> RequestPrompt:
    """One entry of `prompts`, its numbers within the server's limits."""
    if not isinstance(p, Mapping):
        raise ConfigError(f"{where}: expected an object with at least \"prompt\"", path)
    text = p.get("prompt")
    if not isinstance(text, str):
        raise ConfigError(f"{where}.prompt: required, expected a string", path)
    given = [k for k in ("ctrl_img", "ctrl_img_1", "ctrl_img_2", "ctrl_img_3") if p.get(k)]
    if given:
        # how the server turns these into reference images is not modelled: refuse rather than drop them
        raise ConfigError(f"{where}.{given[0]}: reference images in requests are not supported by parity yet", path)
    seed = _req_number(p, "seed", where, path)
    if seed == -1:
        # base.py L812-814: -1 draws a random seed; such a render can never be compared with a preview.
        raise ConfigError(f"{where}.seed: -1 asks the server for a random seed, which cannot reproduce a preview", path)
    return RequestPrompt(
        prompt=text,
        width=_req_number(p, "width", where, path),
        height=_req_number(p, "height", where, path),
        seed=seed,
        sample_steps=_req_number(p, "sample_steps", where, path),
        guidance_scale=_req_number(p, "guidance_scale", where, path),
        neg=_req_str(p, "neg", where, path),
        trigger_word=_req_str(p, "trigger_word", where, path),
        extra=tuple((s.key, v) for s in knobs.extra_settings() if s.request_limit is not None
                    and (v := _req_number(p, s.key, where, path)) is not None),
    )


def _lora(loras: Any, base: Path, path: str) -> tuple[str | None, float | None]:
    """(LoRA file, multiplier) of `loras` (at most one; (None, None) when empty); a relative path is taken from
    `base`."""
    if not isinstance(loras, list):
        raise ConfigError("loras: required, expected a list of {path, network_multiplier} (may be empty)", path)
    if len(loras) > 1:
        raise ConfigError(f"loras: {len(loras)} LoRAs given; parity checks one LoRA per request", path)
    if not loras:
        return None, None
    lo = loras[0]
    if not isinstance(lo, Mapping):
        raise ConfigError("loras[0]: expected an object with path and network_multiplier", path)
    lp = lo.get("path")
    if not isinstance(lp, str) or not lp:
        raise ConfigError("loras[0].path: required, expected a file path", path)
    if "://" in lp:
        raise ConfigError("loras[0].path: URLs are not fetched; download the LoRA and give its local path", path)
    lora_path = str(Path(lp) if Path(lp).is_absolute() else (base / lp))
    return lora_path, _req_number(lo, "network_multiplier", "loras[0]", path)


def load_request(path: str | Path, base_dir: str | Path | None = None) -> Request:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("request file not found", p) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the request file: {e}", p) from None
    from parity.jsonio import parse_json

    data = parse_json(text, p, max_bytes=MAX_REQUEST_BYTES)
    return parse_request(data, p, base_dir if base_dir is not None else p.parent)
