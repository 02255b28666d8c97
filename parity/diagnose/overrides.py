"""`--set KEY=VALUE` overrides and a case's `inference.set`: canonical keys, aliases, coercion and ranges all come
from the knob registry (parity.knobs); this module parses the pairs and mappings."""

from __future__ import annotations

from typing import Any, Mapping

from parity import knobs
from parity.coerce import QTYPES  # noqa: F401 - re-exported
from parity.errors import ConfigError


def canonical_key(key: str) -> str:
    """The setting an override key names; ConfigError listing valid keys if unknown."""
    return knobs.canonical_key(key)


def coerce_value(key: str, value: Any, where: str | None = None) -> Any:
    """Type-check one setting value (a string from the command line or a YAML/JSON scalar) for canonical `key`."""
    return knobs.setting(key).parse(value, where)


def parse_overrides(pairs: list[str] | tuple[str, ...], where: str | None = None) -> dict[str, Any]:
    """`["steps=25", "cfg=4"]` -> `{"sample_steps": 25, "guidance_scale": 4.0}` (canonical keys, typed values).
    A later pair wins over an earlier one for the same key. Bad syntax, keys or values raise ConfigError."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if not isinstance(pair, str) or "=" not in pair:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}; valid keys: {', '.join(knobs.valid_keys())}",
                              where)
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
