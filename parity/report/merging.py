"""Merging shard (or xdist worker) results into one run, and moving item paths between run folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from parity.errors import ParityError
from parity.jsonio import dumps

from .results import Results

def absolute_paths(item: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """A copy of `item` whose relative paths are resolved against `base_dir` (absolute paths kept)."""
    if base_dir is None:
        return item
    out = dict(item)

    def fix(p: Any) -> Any:
        if isinstance(p, str) and p and not os.path.isabs(p):
            return os.path.normpath(os.path.join(os.path.abspath(base_dir), p))
        if isinstance(p, list):
            return [fix(x) for x in p]
        if isinstance(p, dict):
            return {k: fix(v) for k, v in p.items()}
        return p

    out["paths"] = {k: fix(v) for k, v in item.get("paths", {}).items()}
    return out


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def relative_paths(item: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A copy of `item` whose absolute paths inside `base_dir` are made relative to it (with / separators);
    paths outside it stay absolute, so the folder can move without its links turning into wrong `../..` paths."""
    base = os.path.abspath(base_dir)

    def fix(p: Any) -> Any:
        if isinstance(p, str) and p and os.path.isabs(p):
            p = os.path.normpath(p)
            return os.path.relpath(p, base).replace(os.sep, "/") if _inside(p, base) else p
        if isinstance(p, list):
            return [fix(x) for x in p]
        if isinstance(p, dict):
            return {k: fix(v) for k, v in p.items()}
        return p

    out = dict(item)
    out["paths"] = {k: fix(v) for k, v in item.get("paths", {}).items()}
    return out


def _comparable(item: dict[str, Any]) -> str:
    # Paths differ between shards' directories and timings between machines; the verdict must not.
    return dumps({k: v for k, v in item.items() if k not in ("timings", "paths", "original_paths")}, sort_keys=True)


def merge(results_list: Iterable[Results]) -> Results:
    """Merge shard results into one run: every item exactly once (paths made absolute so they survive the move
    to a new report directory). The same id with different content in two shards is a ParityError naming both."""
    results_list = list(results_list)
    if not results_list:
        raise ParityError("nothing to merge")
    items: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    warnings: list[str] = []
    for res in results_list:
        src = str(res.source or res.base_dir or "?")
        for it in res.items:
            it = absolute_paths(it, res.base_dir)
            prev = items.get(it["id"])
            if prev is not None:
                if _comparable(prev) != _comparable(it):
                    raise ParityError(f"item {it['id']!r} differs between {origin[it['id']]} and {src}; "
                                      "the shards overlap with different results")
                continue
            items[it["id"]] = it
            origin[it["id"]] = src
        warnings += [f"{src}: {w}" for w in res.warnings]
    runs = [r.run for r in results_list]
    first = dict(runs[0])
    ids = [str(r.get("id", "")) for r in runs]
    first["id"] = ids[0] if len(set(ids)) == 1 else "+".join(dict.fromkeys(ids))
    first["complete"] = all(r.complete for r in results_list)
    starts = [r["started"] for r in runs if r.get("started")]
    ends = [r["finished"] for r in runs if r.get("finished")]
    first["started"] = min(starts) if starts else None
    first["finished"] = max(ends) if ends and first["complete"] else None
    first["shards"] = [{"id": r.get("id"), "source": str(res.source) if res.source else None,
                        "shard": r.get("shard"), "complete": res.complete, "items": len(res.items)}
                       for r, res in zip(runs, results_list)]
    first.pop("shard", None)
    versions = [dumps(r.get("versions", {}), sort_keys=True) for r in runs]
    if len(set(versions)) > 1:
        warnings.append("shards ran with different versions: " + "; ".join(dict.fromkeys(versions)))
        first["versions_differ"] = True
    run_dirs = [d for res in results_list for d in res.own_dirs]
    return Results(run=first, items=list(items.values()), base_dir=None, source=None, warnings=warnings,
                   run_dirs=run_dirs)
