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
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from parity.errors import InputFileError, ParityError
from parity.jsonio import dumps, number, to_jsonable  # noqa: F401 - dumps/to_jsonable re-exported
from parity.record import ItemRecord

SCHEMA = "parity.results/1"
JOURNAL_NAME = "results.jsonl"
SNAPSHOT_NAME = "results.json"
PATH_KEYS: tuple[str, ...] = ("preview", "render", "heatmap_diff", "heatmap_ssim")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------- JSON helpers
def dumps_results(doc: dict[str, Any]) -> str:
    """A results document as text: compact JSON with one item per line (diff- and grep-friendly, and fast: the
    C encoder does not run with `indent`)."""
    head = dumps({k: v for k, v in doc.items() if k != "items"})
    items = doc.get("items", [])
    body = ",\n".join(dumps(it) for it in items)
    sep = ", " if head != "{}" else ""
    return head[:-1] + (sep + '"items": [\n' + body + "\n]}\n" if items else sep + '"items": []}\n')


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary sibling + fsync + os.replace: readers see the old or the new file,
    never half of one. os.replace swaps the directory entry, so a symlink at `path` is replaced, not followed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------- data model
@dataclass
class Results:
    """A run and its items as plain dicts (the results.json shape). `base_dir` is the directory item paths are
    relative to (None when they are absolute, e.g. after a merge). `warnings` lists what loading skipped."""

    run: dict[str, Any]
    items: list[dict[str, Any]]
    base_dir: Path | None = None
    source: Path | None = None
    warnings: list[str] = field(default_factory=list)
    schema: str = SCHEMA

    @property
    def complete(self) -> bool:
        return bool(self.run.get("complete"))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "run": self.run, "items": self.items}

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {it["id"]: it for it in self.items}

    def records(self) -> list[ItemRecord]:
        """The items as typed records (they were validated when loaded or added)."""
        return [ItemRecord.from_dict(it) for it in self.items]


def _check_type(value: Any, types: type | tuple[type, ...], what: str, where: str | Path | None) -> None:
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise InputFileError(f"{what} should be {names}, got {type(value).__name__}", where)


def normalize_item(item: dict[str, Any] | ItemRecord, run: dict[str, Any] | None = None, *,
                   where: str | Path | None = None) -> dict[str, Any]:
    """A complete item dict, validated through the typed record (parity.record.ItemRecord.from_dict): missing
    optional fields filled, the tier checked, `gate` (the item's, else the run's `settings.gate`) and `passed`
    derived. Raises InputFileError naming `where` for a malformed item (no id, unknown tier, wrong types)."""
    if isinstance(item, ItemRecord):
        item = item.to_dict()
    gate = ((run or {}).get("settings") or {}).get("gate")
    return ItemRecord.from_dict(item, default_gate=gate, where=where).to_dict()


def _normalize_run(run: Any, where: str | Path | None) -> dict[str, Any]:
    if run is None:
        run = {}
    _check_type(run, dict, "'run'", where)
    run = dict(run)
    run.setdefault("id", "")
    run["complete"] = bool(run.get("complete", False))
    return run


# ----------------------------------------------------------------------------------------------- loading
def _parse_journal(path: Path) -> Results:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputFileError(f"cannot read the results journal ({e.strerror})", path) from None
    lines = data.split(b"\n")
    warnings: list[str] = []
    if lines and lines[-1].strip():
        warnings.append("ignored a torn last line (the run was interrupted while writing it)")
    lines = lines[:-1]  # whatever follows the last newline is torn (or empty)
    run: dict[str, Any] | None = None
    items: dict[str, dict[str, Any]] = {}
    complete = False
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            warnings.append(f"line {n}: not valid JSON, skipped")
            continue
        if not isinstance(rec, dict):
            warnings.append(f"line {n}: not a record, skipped")
            continue
        kind = rec.get("type")
        if kind == "run":
            if rec.get("schema") != SCHEMA:
                raise InputFileError(f"unsupported schema {rec.get('schema')!r} (expected {SCHEMA!r})", path)
            run = _normalize_run(rec.get("run"), path)
        elif kind == "item":
            item = rec.get("item")
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                items.pop(item["id"], None)  # a retried item moves to where it finished last
                items[item["id"]] = item
            else:
                warnings.append(f"line {n}: item record without an id, skipped")
        elif kind == "finish":
            complete = True
            if run is not None:
                for key in ("finished", "timings"):
                    if rec.get(key) is not None:
                        run[key] = rec[key]
        elif kind == "resume":
            complete = False
            if run is not None:
                run.setdefault("resumed", []).append(rec.get("at"))
    if run is None:
        raise InputFileError("no run record (the file is empty or not a parity results journal)", path)
    run["complete"] = complete
    norm = []
    for it in items.values():  # a journal is read tolerantly: one bad record must not hide the others
        try:
            norm.append(normalize_item(it, run, where=path))
        except InputFileError as e:
            warnings.append(f"skipped an item: {e.message}")
    return Results(run=run, items=norm, base_dir=path.parent, source=path, warnings=warnings)


def _parse_snapshot(path: Path) -> Results:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputFileError("not UTF-8 text (is this a results.json?)", path) from None
    except OSError as e:
        raise InputFileError(f"cannot read results ({e.strerror or e})", path) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputFileError(f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}", path) from None
    if not isinstance(doc, dict) or "items" not in doc:
        raise InputFileError("not a parity results file (no 'items')", path)
    if doc.get("schema") != SCHEMA:
        raise InputFileError(f"unsupported schema {doc.get('schema')!r} (expected {SCHEMA!r})", path)
    run = _normalize_run(doc.get("run"), path)
    _check_type(doc["items"], list, "'items'", path)
    items = [normalize_item(it, run, where=path) for it in doc["items"]]
    seen: set[str] = set()
    for it in items:
        if it["id"] in seen:
            raise InputFileError(f"item id {it['id']!r} appears twice", path)
        seen.add(it["id"])
    return Results(run=run, items=items, base_dir=path.parent, source=path)


def load(path: str | Path) -> Results:
    """Read a run from results.json, results.jsonl or a run directory. An incomplete results.json with a journal
    beside it is read from the journal (which holds every finished item). Raises InputFileError naming the file."""
    path = Path(path)
    if path.is_dir():
        journal, snap = path / JOURNAL_NAME, path / SNAPSHOT_NAME
        if journal.exists():
            return _parse_journal(journal)
        if snap.exists():
            return _parse_snapshot(snap)
        raise InputFileError(f"no {SNAPSHOT_NAME} or {JOURNAL_NAME} in this directory", path)
    if not path.exists():
        raise InputFileError("no such results file", path)
    if path.suffix == ".jsonl":
        return _parse_journal(path)
    res = _parse_snapshot(path)
    journal = path.with_name(JOURNAL_NAME)
    if not res.complete and journal.exists():
        try:
            jres = _parse_journal(journal)
        except ParityError:
            return res
        if jres.run.get("id") == res.run.get("id") and len(jres.items) >= len(res.items):
            return jres
    return res


# ----------------------------------------------------------------------------------------------- writing
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
        self._fd: int | None = None
        self._last_snapshot = 0.0

    # -- life cycle
    def start(self, run_meta: dict[str, Any], *, resume: bool = False, overwrite: bool = False) -> "ResultsStore":
        """Open the run. With an existing journal: `resume=True` keeps its items (cutting off a torn last line),
        `overwrite=True` discards it, otherwise ParityError (a night's results are never dropped silently)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.journal.exists() and self.journal.stat().st_size > 0 and not overwrite:
            if not resume:
                raise ParityError("results of an earlier run are here; pass --resume to continue it or choose "
                                  "another output directory", self.journal)
            self._cut_torn_tail()
            old = _parse_journal(self.journal)
            self.run = old.run
            self.run.update({k: v for k, v in to_jsonable(run_meta).items() if k not in ("id", "started")})
            self.run["complete"] = False
            self._items = {it["id"]: it for it in old.items}
            self._open()
            self._append({"type": "resume", "at": now_iso()})
        else:
            self.run = dict(to_jsonable(run_meta))
            self.run.setdefault("id", self.run_dir.name)
            self.run.setdefault("started", now_iso())
            self.run["complete"] = False
            self._items = {}
            if self.journal.exists():
                self.journal.unlink()
            self._open()
            self._append({"type": "run", "schema": SCHEMA, "run": self.run})
        self.write_snapshot()
        return self

    def add(self, item: ItemRecord | dict[str, Any]) -> dict[str, Any]:
        """Record one finished item durably (fsync'd before returning). Returns the normalised item."""
        if self._fd is None:
            raise RuntimeError("ResultsStore.add() before start()")
        clean = to_jsonable(item.to_dict() if isinstance(item, ItemRecord) else item)
        norm = normalize_item(clean, self.run, where=self.journal)
        self._append({"type": "item", "item": clean})
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

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            self.write_snapshot()
        self.close()

    # -- queries
    def done_ids(self, *, include_errors: bool = True) -> set[str]:
        """Ids already recorded (for --resume); `include_errors=False` leaves ERROR items out so they are retried."""
        return {i for i, it in self._items.items() if include_errors or it["tier"] != "ERROR"}

    def results(self) -> Results:
        return Results(run=dict(self.run), items=list(self._items.values()), base_dir=self.run_dir,
                       source=self.snapshot)

    def write_snapshot(self) -> None:
        res = self.results()
        write_text_atomic(self.snapshot, dumps_results(res.to_dict()))
        self._last_snapshot = time.monotonic()

    @staticmethod
    def write_merged(run_dir: str | Path, results: Results) -> Path:
        """Write merged results (e.g. xdist workers' or shards') as `run_dir`/results.json, paths made relative
        to `run_dir`. Returns the file's path."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        items = [relative_paths(absolute_paths(it, results.base_dir), run_dir) for it in results.items]
        path = run_dir / SNAPSHOT_NAME
        write_text_atomic(path, dumps_results({"schema": results.schema, "run": results.run, "items": items}))
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


# ----------------------------------------------------------------------------------------------- merging
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


def relative_paths(item: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A copy of `item` whose absolute paths are made relative to `base_dir` (with / separators)."""
    base = os.path.abspath(base_dir)

    def fix(p: Any) -> Any:
        if isinstance(p, str) and p and os.path.isabs(p):
            return os.path.relpath(p, base).replace(os.sep, "/")
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
    return dumps({k: v for k, v in item.items() if k not in ("timings", "paths")}, sort_keys=True)


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
    return Results(run=first, items=list(items.values()), base_dir=None, source=None, warnings=warnings)


# Names other modules use (pytest plugin).
load_results = load
merge_results = merge
