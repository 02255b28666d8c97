"""Typed setting values: one coercer per kind of value, each `(key, value, where) -> typed value`, raising a
ConfigError that names the key and what was expected. The knob registry (parity.knobs) gives each setting one;
`--set`, a case's `inference.set` and the job reader's registry-declared settings go through it.

A value may be a string from the command line or a YAML/JSON scalar. Torch-free."""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping

from parity.errors import ConfigError

# (key, value, where) -> typed value
Coercer = Callable[[str, Any, "str | None"], Any]

# optimum-quanto weight qtypes AI Toolkit's `qtype` accepts for FLUX.2 (plus "none").
QTYPES: tuple[str, ...] = ("qfloat8", "qfloat8_e4m3fn", "qfloat8_e5m2", "qint8", "qint4", "qint2")
_GENERATOR_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_STATIC_RE = re.compile(r"^static:(.+)$")
_NONE_WORDS = ("", "none", "null", "false", "off", "no")


def bad(key: str, value: Any, expected: str, where: str | None) -> ConfigError:
    return ConfigError(f"setting {key}={value!r}: expected {expected}", where)


def as_int(key: str, value: Any, where: str | None) -> int:
    if isinstance(value, bool):
        raise bad(key, value, "an integer", where)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise bad(key, value, "an integer", where)


def as_float(key: str, value: Any, where: str | None) -> float:
    if isinstance(value, bool):
        raise bad(key, value, "a number", where)
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            raise bad(key, value, "a number", where) from None
    else:
        raise bad(key, value, "a number", where)
    if not math.isfinite(out):
        raise bad(key, value, "a finite number", where)
    return out


def is_none_word(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)


def positive_int(key: str, value: Any, where: str | None) -> int:
    v = as_int(key, value, where)
    if v < 1:
        raise bad(key, value, "a positive integer", where)
    return v


def seed(key: str, value: Any, where: str | None) -> int:
    v = as_int(key, value, where)
    if v < 0:
        raise bad(key, value, "a seed >= 0 (-1 means a random seed, which cannot reproduce a preview)", where)
    return v


def choice(choices: tuple[str, ...], aliases: Mapping[str, str] | None = None) -> Coercer:
    """A coercer to one of `choices` (case-insensitive), after `aliases`."""
    def coerce(key: str, value: Any, where: str | None) -> str:
        v = str(value).strip().lower()
        v = (aliases or {}).get(v, v)
        if v not in choices:
            raise bad(key, value, f"one of {', '.join(choices)}", where)
        return v
    return coerce


def quantization(key: str, value: Any, where: str | None) -> str | None:
    if is_none_word(value):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in ("true", "yes", "on")):
        return "qfloat8"  # AI Toolkit's `quantize: true` means model.qtype, default qfloat8 (section A.5)
    v = str(value).strip().lower()
    if v not in QTYPES:
        raise bad(key, value, f"none, true or one of {', '.join(QTYPES)}", where)
    return v


def schedule(names: tuple[str, ...]) -> Coercer:
    """A coercer to one of the schedule `names` or a static shift "static:S" (S > 0)."""
    def coerce(key: str, value: Any, where: str | None) -> str:
        v = str(value).strip().lower()
        m = _STATIC_RE.match(v)
        if m:
            shift = as_float(key, m.group(1), where)
            if shift <= 0:
                raise bad(key, value, "static:S with a shift S > 0", where)
            return f"static:{shift:g}"
        if v not in names:
            raise bad(key, value, f"one of {', '.join(names)} or static:S", where)
        return v
    return coerce


def generator(key: str, value: Any, where: str | None) -> str:
    v = str(value).strip().lower()
    if not _GENERATOR_RE.match(v):
        raise bad(key, value, "cpu, cuda, cuda:N or mps", where)
    return v


def text(key: str, value: Any, where: str | None) -> str:
    if not isinstance(value, str):
        raise bad(key, value, "a string", where)
    return value


def path_or_none(key: str, value: Any, where: str | None) -> str | None:
    return None if is_none_word(value) else str(value)


def numerics(key: str, value: Any, where: str | None) -> tuple[tuple[str, str], ...]:
    """`detail:choice,detail:choice` (or a mapping) -> sorted tuple of pairs, as RenderSpec.numerics holds them."""
    if isinstance(value, Mapping):
        items = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, str):
        items = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            k, sep, v = part.partition(":")
            if not sep or not k.strip() or not v.strip():
                raise bad(key, value, "detail:choice pairs separated by commas", where)
            items.append((k.strip(), v.strip()))
    else:
        raise bad(key, value, "detail:choice pairs separated by commas", where)
    return tuple(sorted(dict(items).items()))
