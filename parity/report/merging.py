"""Merging shard (or xdist worker) results into one run."""

from __future__ import annotations

from typing import Any, Iterable

from parity.errors import ParityError
from parity.jsonio import dumps

from .results import Results


def _comparable(item: dict[str, Any]) -> str:
    # Paths differ between shards' directories and timings between machines; the verdict must not.
    return dumps({k: v for k, v in item.items() if k not in ("timings", "paths", "original_paths")}, sort_keys=True)


def merge(results_list: Iterable[Results]) -> Results:
    """Merge shard results into one run: every item exactly once (their paths are absolute, as loaded). The same
    id with different content in two shards is a ParityError naming both."""
    results_list = list(results_list)
    if not results_list:
        raise ParityError("nothing to merge")
    items: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    warnings: list[str] = []
    for res in results_list:
        src = str(res.source or res.base_dir or "?")
        for it in res.items:
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
