"""The results store: one run's items, written incrementally and atomically, read back tolerantly.

On disk a run directory holds
    results.jsonl  the journal: one JSON record per line, appended with O_APPEND and fsync'd line by line;
                   it is the crash-safe source of truth (a SIGKILL loses at most the item being written,
                   and a torn last line is ignored on load and cut off when the run resumes);
    results.json   a snapshot `{"schema": "parity.results/1", "run": {...}, "items": [...]}` rewritten via a
                   temporary file + os.replace (never half-written) at start, at finish and at most every
                   `snapshot_every` seconds in between.

Journal records: {"type": "run", "schema", "run"} first; then {"type": "item", "item"} per finished item
(a later record with the same id replaces an earlier one: a retried item); {"type": "resume", "at"} when a run
is resumed; {"type": "finish", "finished", "timings"} last. Without a finish record the run is incomplete.

Non-finite floats (an identical pair's PSNR is inf) are not JSON; they are written as the strings "inf",
"-inf" and "nan" and read back as floats inside `metrics`. See docs/results-schema.md.

The code is split by job: jsonfile.py (results.json text, atomic writes), results.py (Results, validation,
loading), journal.py (ResultsStore, the writer), merging.py (shards). This module keeps the names importable.
"""

from __future__ import annotations

from parity.jsonio import dumps, to_jsonable  # noqa: F401
from parity.report.journal import ResultsStore  # noqa: F401
from parity.report.jsonfile import (  # noqa: F401
    JOURNAL_NAME, PATH_KEYS, SCHEMA, SNAPSHOT_NAME, absolute_paths, dumps_results, item_on_disk, now_iso,
    write_text_atomic,
)
from parity.report.merging import merge  # noqa: F401
from parity.report.results import Results, load, normalize_item  # noqa: F401

# Names other modules use (pytest plugin).
load_results = load
merge_results = merge
