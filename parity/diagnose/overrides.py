"""`--set KEY=VALUE` overrides and a case's `inference.set`: canonical keys (RenderSpec field names plus friendly
aliases) and typed, checked values, one coercer per setting."""

from __future__ import annotations

import math
import re
from dataclasses import fields
from typing import Any, Mapping

from parity import limits
from parity.errors import ConfigError
from parity.spec import DTYPES, LORA_APPLICATIONS, SCHEDULES, SEMANTICS, RenderSpec

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


def _int_setting(key: str, value: Any, where: str | None) -> int:
    v = _as_int(key, value, where)
    if key == "seed" and v < 0:
        raise _bad(key, value, "a seed >= 0 (-1 means a random seed, which cannot reproduce a preview)", where)
    if key != "seed" and v < 1:
        raise _bad(key, value, "a positive integer", where)
    _check_limits(key, v, value, where)
    return v


def _bounded_float(key: str, value: Any, where: str | None) -> float:
    v = _as_float(key, value, where)
    _check_limits(key, v, value, where)
    return v


_LIMIT_ARGS = {"width": "width", "height": "height", "sample_steps": "steps", "guidance_scale": "guidance",
               "network_multiplier": "multiplier"}


def _check_limits(key: str, v: Any, value: Any, where: str | None) -> None:
    """parity's render limits (parity/limits.py), so `--set sample_steps=1000000000` is a usage error up front."""
    if key in _LIMIT_ARGS:
        bad = limits.problem(**{_LIMIT_ARGS[key]: v})
        if bad:
            raise _bad(key, value, f"a value parity can render ({bad})", where)


def _choice(choices: tuple[str, ...], aliases: Mapping[str, str] | None = None):
    """A coercer to one of `choices` (case-insensitive), after `aliases`."""
    def coerce(key: str, value: Any, where: str | None) -> str:
        v = str(value).strip().lower()
        v = (aliases or {}).get(v, v)
        if v not in choices:
            raise _bad(key, value, f"one of {', '.join(choices)}", where)
        return v
    return coerce


def _quantization(key: str, value: Any, where: str | None) -> str | None:
    if _is_none_word(value):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in ("true", "yes", "on")):
        return "qfloat8"  # AI Toolkit's `quantize: true` means model.qtype, default qfloat8 (section A.5)
    v = str(value).strip().lower()
    if v not in QTYPES:
        raise _bad(key, value, f"none, true or one of {', '.join(QTYPES)}", where)
    return v


def _schedule(key: str, value: Any, where: str | None) -> str:
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


def _generator(key: str, value: Any, where: str | None) -> str:
    v = str(value).strip().lower()
    if not _GENERATOR_RE.match(v):
        raise _bad(key, value, "cpu, cuda, cuda:N or mps", where)
    return v


def _prompt(key: str, value: Any, where: str | None) -> str:
    if not isinstance(value, str):
        raise _bad(key, value, "a string", where)
    return value


_DTYPE_WORDS = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "half": "fp16", "float": "fp32"}

# canonical key -> coercer(key, value, where): one row per setting
_COERCERS: dict[str, Any] = {
    **{k: _int_setting for k in ("width", "height", "sample_steps", "resolution_divisor", "seed")},
    "guidance_scale": _bounded_float, "network_multiplier": _bounded_float,
    "dtype": _choice(DTYPES, _DTYPE_WORDS),
    "quantize": _quantization, "quantize_te": _quantization,
    "semantics": _choice(SEMANTICS),
    "schedule": _schedule,
    "lora_application": _choice(LORA_APPLICATIONS),
    "generator": _generator,
    "lora_path": lambda key, value, where: None if _is_none_word(value) else str(value),
    "prompt": _prompt,
    "numerics": lambda key, value, where: _parse_numerics(value, where),
}


def coerce_value(key: str, value: Any, where: str | None = None) -> Any:
    """Type-check one setting value (a string from the command line or a YAML/JSON scalar) for canonical `key`."""
    coerce = _COERCERS.get(key)
    if coerce is None:  # pragma: no cover - canonical_key admits only known keys
        raise ConfigError(f"unknown setting {key!r}; valid keys: {', '.join(VALID_KEYS)}", where)
    return coerce(key, value, where)


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
