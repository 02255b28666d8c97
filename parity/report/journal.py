"""Writing a run: `ResultsStore` appends each finished item to the journal (fsync'd line by line) and keeps the
results.json snapshot current (see parity.report.store for the on-disk format)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from parity.errors import ParityError
from parity.jsonio import dumps, to_jsonable
from parity.record import ItemRecord
from parity.tier import ERROR

from .jsonfile import (JOURNAL_NAME, SCHEMA, SNAPSHOT_NAME, absolute_paths, dumps_results, item_on_disk, now_iso,
                       write_text_atomic)
from .lock import RunLock
from .results import Results, _parse_journal, normalize_item

def input_differences(old: Any, new: Any) -> list[str]:
    """The run inputs (the `inputs` block of the run record) that differ, as "key: old -> new"; none when either
    run did not record its inputs (written by an older version, or not by the command line)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


class ResultsStore:
    """Writes one run's results into `run_dir` as items finish (see the module docstring for the format).

        store = ResultsStore(run_dir)
        store.start({"id": ..., "versions": {...}, ...}, resume=args.resume)
        for item in todo:
            if item.id in store.done_ids(): continue
            store.add(result_dict)              # durable when it returns
        store.finish(timings={...})
    """

    def __init__(self, run_dir: str | Path, *, snapshot_every: float = 10.0):
        self.run_dir = Path(run_dir)
        self.journal = self.run_dir / JOURNAL_NAME
        self.snapshot = self.run_dir / SNAPSHOT_NAME
        self.snapshot_every = snapshot_every
        self.run: dict[str, Any] = {}
        self._items: dict[str, dict[str, Any]] = {}
        self._pending: set[str] = set()  # ids whose latest record is a first pass awaiting follow-ups
        self._fd: int | None = None
        self._last_snapshot = 0.0
        self._lock = RunLock(self.run_dir)

    # -- life cycle
    def start(self, run_meta: dict[str, Any], *, resume: bool = False, overwrite: bool = False,
              force: bool = False) -> "ResultsStore":
        """Open the run. With an existing journal: `resume=True` keeps its items (cutting off a torn last line),
        `overwrite=True` discards it, otherwise ParityError (a night's results are never dropped silently).
        A resume whose `inputs` differ from the journal's run is refused unless `force`."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire(now_iso())  # before reading the journal: a second writer is refused, not interleaved
        try:
            return self._start(run_meta, resume=resume, overwrite=overwrite, force=force)
        except BaseException:
            self.close()
            raise

    def _start(self, run_meta: dict[str, Any], *, resume: bool, overwrite: bool, force: bool) -> "ResultsStore":
        if self.journal.exists() and self.journal.stat().st_size > 0 and not overwrite:
            if not resume:
                raise ParityError("results of an earlier run are here; pass --resume to continue it or choose "
                                  "another output directory", self.journal)
            self._cut_torn_tail()
            old = _parse_journal(self.journal)
            changed = input_differences(old.run.get("inputs"), to_jsonable(run_meta).get("inputs"))
            if changed and not force:
                raise ParityError(f"--resume with other settings than the interrupted run ({'; '.join(changed)}); "
                                  f"resume with the same options, pass --force-resume to mix them, or choose "
                                  f"another output directory", self.journal)
            self.run = old.run
            self.run.update({k: v for k, v in to_jsonable(run_meta).items() if k not in ("id", "started")})
            self.run["complete"] = False
            self._items = {it["id"]: it for it in old.items}
            self._pending = set(old.pending) & set(self._items)
            self._open()
            resumed: dict[str, Any] = {"type": "resume", "at": now_iso()}
            if changed:  # forced: the journal says which settings the later items used
                resumed.update(inputs=self.run.get("inputs"), changed=changed)
                self.run.setdefault("forced_resume", []).extend(changed)
            self._append(resumed)
        else:
            self.run = dict(to_jsonable(run_meta))
            self.run.setdefault("id", self.run_dir.name)
            self.run.setdefault("started", now_iso())
            self.run["complete"] = False
            self._items, self._pending = {}, set()
            if self.journal.exists():
                self.journal.unlink()
            self._open()
            self._append({"type": "run", "schema": SCHEMA, "run": self.run})
        self.write_snapshot()
        return self

    def add(self, item: ItemRecord | dict[str, Any], pending: list[str] | None = None) -> dict[str, Any]:
        """Record one finished item durably (fsync'd before returning). Returns the normalised item (paths
        absolute, as in memory; a relative path given here is relative to this folder). `pending` names
        follow-ups still to run (a first-pass record: compared, not yet attributed); a later record of the same id
        replaces it."""
        if self._fd is None:
            raise RuntimeError("ResultsStore.add() before start()")
        clean = absolute_paths(to_jsonable(item.to_dict() if isinstance(item, ItemRecord) else item), self.run_dir)
        norm = normalize_item(clean, self.run, where=self.journal)
        line = item_on_disk(clean, self.run_dir)
        self._append({"type": "item", "item": line, **({"pending": list(pending)} if pending else {})})
        if pending:
            self._pending.add(norm["id"])
        else:
            self._pending.discard(norm["id"])
        self._items.pop(norm["id"], None)
        self._items[norm["id"]] = norm
        if time.monotonic() - self._last_snapshot >= self.snapshot_every:
            self.write_snapshot()
        return norm

    def finish(self, *, timings: dict[str, Any] | None = None) -> Results:
        """Mark the run complete, write the final results.json and close the journal."""
        finished = now_iso()
        rec: dict[str, Any] = {"type": "finish", "finished": finished}
        if timings is not None:
            rec["timings"] = to_jsonable(timings)
            self.run["timings"] = rec["timings"]
        self._append(rec)
        self.run["finished"] = finished
        self.run["complete"] = True
        self.write_snapshot()
        self.close()
        return self.results()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._lock.release()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            self.write_snapshot()
        self.close()

    # -- queries
    def done_ids(self, *, include_errors: bool = True) -> set[str]:
        """Ids already recorded (for --resume); `include_errors=False` leaves ERROR items out so they are retried."""
        return {i for i, it in self._items.items() if include_errors or it["tier"] != ERROR.name}

    def compared_records(self) -> dict[str, ItemRecord]:
        """First-pass records of an interrupted run (compared, follow-ups not done), by id, for --resume."""
        return {i: ItemRecord.from_dict(self._items[i]) for i in self._pending}

    def results(self) -> Results:
        return Results(run=dict(self.run), items=list(self._items.values()), base_dir=self.run_dir,
                       source=self.snapshot)

    def write_snapshot(self) -> None:
        res = self.results()
        write_text_atomic(self.snapshot, dumps_results(res.to_dict(), self.run_dir))
        self._last_snapshot = time.monotonic()

    @staticmethod
    def write_merged(run_dir: str | Path, results: Results) -> Path:
        """Write merged results (e.g. xdist workers' or shards') as `run_dir`/results.json. Returns the file's
        path."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / SNAPSHOT_NAME
        write_text_atomic(path, dumps_results(results.to_dict(), run_dir))
        return path

    # -- internals
    def _open(self) -> None:
        self._fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _append(self, rec: dict[str, Any]) -> None:
        # One write() of a whole line then fsync: a kill leaves either the full line or a torn tail with no
        # newline, which load() ignores and a resume cuts off.
        data = (dumps(rec) + "\n").encode("utf-8")
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)

    def _cut_torn_tail(self) -> None:
        data = self.journal.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.journal, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
