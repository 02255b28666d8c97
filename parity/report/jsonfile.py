"""results.json text (one item per line) and the run folder's file names; written whole by parity.fileio."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from parity.fileio import write_text_atomic  # noqa: F401 - its first home; every writer is parity.fileio now
from parity.jsonio import dumps

SCHEMA = "parity.results/1"
JOURNAL_NAME = "results.jsonl"
SNAPSHOT_NAME = "results.json"
PATH_KEYS: tuple[str, ...] = ("preview", "render", "heatmap_diff", "heatmap_ssim")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def dumps_results(doc: dict[str, Any]) -> str:
    """A results document as text: compact JSON with one item per line (diff- and grep-friendly, and fast: the
    C encoder does not run with `indent`)."""
    head = dumps({k: v for k, v in doc.items() if k != "items"})
    items = doc.get("items", [])
    body = ",\n".join(dumps(it) for it in items)
    sep = ", " if head != "{}" else ""
    return head[:-1] + (sep + '"items": [\n' + body + "\n]}\n" if items else sep + '"items": []}\n')
