"""results.json text (one item per line) and the run folder's file names; written whole by parity.fileio.

Item paths: in memory every path is absolute (the runner makes them so; `absolute_paths` resolves a file's relative
ones when it is read). `item_on_disk` is the one place they turn relative: when an item is written into a file
(results.json, the journal, a `--json` copy), a path inside that file's folder is written relative to it, with /
separators, so the folder can move; a path outside it stays absolute (a `../..` path breaks as soon as it moves).
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Callable

from parity.fileio import write_text_atomic  # noqa: F401 - its first home; every writer is parity.fileio now
from parity.jsonio import dumps

SCHEMA = "parity.results/1"
JOURNAL_NAME = "results.jsonl"
SNAPSHOT_NAME = "results.json"
PATH_KEYS: tuple[str, ...] = ("preview", "render", "heatmap_diff", "heatmap_ssim")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def dumps_results(doc: dict[str, Any], folder: str | Path) -> str:
    """A results document as text for a file in `folder` (item paths as `item_on_disk` writes them): compact JSON
    with one item per line (diff- and grep-friendly, and fast: the C encoder does not run with `indent`)."""
    head = dumps({k: v for k, v in doc.items() if k != "items"})
    items = doc.get("items", [])
    body = ",\n".join(dumps(item_on_disk(it, folder)) for it in items)
    sep = ", " if head != "{}" else ""
    return head[:-1] + (sep + '"items": [\n' + body + "\n]}\n" if items else sep + '"items": []}\n')


def _map_paths(item: dict[str, Any], fix: Callable[[str], str]) -> dict[str, Any]:
    """A copy of `item` whose `paths` values (strings, lists and dicts of them) went through `fix`."""
    def walk(p: Any) -> Any:  # a path, or lists and dicts of paths (JSON as the item holds it)
        if isinstance(p, list):
            return [walk(x) for x in p]
        if isinstance(p, dict):
            return {k: walk(v) for k, v in p.items()}
        return fix(p) if isinstance(p, str) and p else p

    return dict(item, paths={k: walk(v) for k, v in (item.get("paths") or {}).items()})


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def item_on_disk(item: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """The item as written into a file in `folder`: its absolute paths inside `folder` relative to it (with /
    separators), the others as they are. The one place item paths turn relative (see the module docstring)."""
    base = os.path.abspath(folder)

    def fix(p: str) -> str:
        if not os.path.isabs(p):
            return p
        p = os.path.normpath(p)
        return os.path.relpath(p, base).replace(os.sep, "/") if _inside(p, base) else p

    return _map_paths(item, fix)


def absolute_paths(item: dict[str, Any], folder: str | Path | None) -> dict[str, Any]:
    """The item as held in memory: relative paths, as read from a file in `folder`, resolved against it."""
    if folder is None:
        return item
    base = os.path.abspath(folder)
    return _map_paths(item, lambda p: p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p)))
