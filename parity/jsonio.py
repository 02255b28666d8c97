"""Strict JSON for every file parity writes: the one policy for values JSON cannot hold.

Non-finite floats (the PSNR of two identical images is inf) become the strings "inf", "-inf" and "nan"; numbers
read back from metrics turn them into floats again (`number`). Tuples become lists, Paths strings, numpy scalars
Python numbers. results.json, the journal, `parity compare --json` and the HTML report's embedded data all go
through `dumps`, so one image pair is written the same way everywhere (docs/results-schema.md, "Strict JSON").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan, "Infinity": math.inf, "-Infinity": -math.inf,
             "NaN": math.nan}


def _float(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def to_jsonable(obj: Any) -> Any:
    """A copy of `obj` that strict JSON can hold (see the module docstring); dict keys become strings."""
    t = type(obj)
    if t is str or t is int or t is bool or obj is None:
        return obj
    if t is float:
        return _float(obj)
    if t is dict:
        return {k if type(k) is str else str(k): to_jsonable(v) for k, v in obj.items()}
    if t is list or t is tuple:
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return _float(float(obj))
    if isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, dict):
        return to_jsonable(dict(obj))
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars, without importing numpy
        return to_jsonable(obj.item())
    return str(obj)


def dumps(obj: Any, **kw: Any) -> str:
    """Strict JSON text of `obj` (see to_jsonable); the C encoder's fast path when `obj` is already clean."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, **kw)
    except (ValueError, TypeError):
        return json.dumps(to_jsonable(obj), ensure_ascii=False, allow_nan=False, **kw)


def number(v: Any) -> Any:
    """A metric value as read back from JSON: "inf"/"-inf"/"nan" become floats; anything else is kept."""
    return NONFINITE.get(v, v) if isinstance(v, str) else v


# ------------------------------------------------------------------------------------------ reading untrusted JSON
# Every JSON document parity did not just write itself (a renders manifest, results.json for `report merge`, an
# inference server's reply, a request file, a model's config.json) is read here: bounded in size before it is
# read, and in depth after (the C parser stops at Python's recursion limit with a RecursionError; parity's own
# walkers recurse too, so the limit is the job configs' one). tests/test_structural.py keeps it the only reader.
MAX_READ_BYTES = 256 * 2**20     # a results.json of 100,000 items is ~200 MB; a manifest or reply a few KB
MAX_DEPTH = 200                  # parity's own documents are < 10 deep; YAML configs have the same limit


def parse_json(text: str | bytes, where: Any, *, max_bytes: int = MAX_READ_BYTES, unique_keys: bool = False) -> Any:
    """`text` as JSON, or ConfigError (exit 2) naming `where` (a file, or what was read, e.g. a URL) and the
    problem: not JSON, larger than `max_bytes`, nested deeper than MAX_DEPTH, or (with `unique_keys`) a key twice
    in one object."""
    from parity.errors import ConfigError

    if len(text) > max_bytes:
        raise ConfigError(f"JSON of {len(text)} bytes is over parity's limit of {max_bytes}", where)
    hook = _unique_pairs(where) if unique_keys else None
    try:
        doc = json.loads(text, object_pairs_hook=hook)
    except RecursionError:
        doc = None
        deep = True
    except json.JSONDecodeError as e:
        raise ConfigError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}", where) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"invalid JSON ({short_text(str(e))})", where) from None
    else:
        deep = _deeper_than(doc, MAX_DEPTH)
    if deep:
        raise ConfigError(f"JSON nested too deeply (more than {MAX_DEPTH} levels)", where)
    return doc


def read_json(path: Path, *, max_bytes: int = MAX_READ_BYTES, unique_keys: bool = False) -> Any:
    """A JSON file (see parse_json); its size is checked before anything is read. OSError propagates."""
    from parity.errors import ConfigError

    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ConfigError(f"file is {size} bytes; parity reads JSON files of at most {max_bytes}", path)
    with path.open("rb") as f:
        return parse_json(f.read(max_bytes + 1), path, max_bytes=max_bytes, unique_keys=unique_keys)


def _unique_pairs(where: Any):
    from parity.errors import ConfigError

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        doc = dict(items)
        if len(doc) != len(items):
            seen: set[str] = set()
            key = next(k for k, _ in items if k in seen or seen.add(k))
            raise ConfigError(f"the key {short_text(repr(key))} appears twice in one JSON object", where)
        return doc
    return pairs


def _deeper_than(doc: Any, limit: int) -> bool:
    """Whether lists/objects nest more than `limit` levels (iterative: no recursion on hostile input)."""
    todo = [(doc, 1)]
    while todo:
        node, depth = todo.pop()
        if type(node) is dict:
            children = [v for v in node.values() if type(v) in (dict, list)]
        elif type(node) is list:
            children = [v for v in node if type(v) in (dict, list)]
        else:
            continue
        if depth > limit:
            return True
        todo.extend((c, depth + 1) for c in children)
    return False


def short_text(text: str, limit: int = 200) -> str:
    """A message part cut to `limit` characters (an id or a key may be megabytes long)."""
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} characters)"
