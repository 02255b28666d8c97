"""Item ids, case names, shards and the file names derived from them: the one place an id is made or turned into a
file name (no stage builds a path from anything else an item carries)."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

from parity.errors import ParityError


def item_id(case_name: str, step: int, index: int) -> str:
    return f"{case_name}[step{step}-p{index}]"


def job_case_name(job: str | Path) -> str:
    """The case name `parity diff JOB` gives a job (its folder's name, or the config file's folder's): the prefix
    of its item ids, which `parity plan JOB --json` prints too."""
    path = Path(job).resolve()
    return path.name if path.is_dir() else path.parent.name


def shard_of(item_id_: str, count: int) -> int:
    """Deterministic 1-based shard of an item (stable across machines and Python versions)."""
    return zlib.crc32(item_id_.encode("utf-8")) % count + 1


def parse_shard(value: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise ParityError(f"shard must be K/N, e.g. 1/4, got {value!r}") from None
    if not (n >= 1 and 1 <= k <= n):
        raise ParityError(f"shard {value!r}: need 1 <= K <= N")
    return k, n


def safe_name(text: str) -> str:
    """A file-name-safe version of an item id (no path separators, no traversal)."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip(".") or "item"
    if len(out) > 120:  # file systems cap names at 255 bytes; keep distinct ids distinct with a checksum
        out = f"{out[:110]}-{zlib.crc32(text.encode('utf-8')):08x}"
    return out


def item_file_name(item_id: str) -> str:
    """The file stem of an item's render and heatmaps: its safe name plus a short hash of the exact id, so ids
    that differ only in characters safe_name folds (`demo x` / `demo_x`) never share a file."""
    digest = hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:10]
    return f"{safe_name(item_id)[:100]}-{digest}"
