"""A run's results in memory (`Results`) and reading them back: results.json, the journal, or a run folder.

Reading is tolerant where a crash can leave marks (a torn last journal line, an incomplete snapshot with its
journal beside it) and strict about everything else: each item is validated as a parity.record.ItemRecord, and
every problem is an InputFileError naming the file. The format is docs/results-schema.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.errors import InputFileError, ParityError
from parity.jsonio import parse_json
from parity.record import ItemRecord, check_type

from .jsonfile import JOURNAL_NAME, SCHEMA, SNAPSHOT_NAME, absolute_paths

@dataclass
class Results:
    """A run and its items as plain dicts (the results.json shape), item paths absolute (a file's relative ones
    are resolved when it is read, and made relative again only when written: parity.report.jsonfile). `base_dir`
    is the folder the results were read from or are written to (None after a merge). `warnings` lists what
    loading skipped."""

    run: dict[str, Any]
    items: list[dict[str, Any]]
    base_dir: Path | None = None
    source: Path | None = None
    warnings: list[str] = field(default_factory=list)
    schema: str = SCHEMA
    run_dirs: list[Path] = field(default_factory=list)  # after a merge: the shards' folders (images may be copied)
    pending: list[str] = field(default_factory=list)  # journal: ids whose last record awaits its follow-ups

    @property
    def own_dirs(self) -> list[Path]:
        """The folders this run wrote into: its own, or every merged shard's."""
        return list(self.run_dirs) or ([self.base_dir] if self.base_dir is not None else [])

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


def normalize_item(item: dict[str, Any] | ItemRecord, run: dict[str, Any] | None = None, *,
                   where: str | Path | None = None) -> dict[str, Any]:
    """A complete item dict, validated through the typed record (parity.record.ItemRecord.from_dict): missing
    optional fields filled, the tier checked, `gate` (the item's, else the run's `settings.gate`) and `passed`
    derived. Raises InputFileError naming `where` for a malformed item (no id, unknown tier, wrong types)."""
    if isinstance(item, ItemRecord):
        item = item.to_dict()
    gate = ((run or {}).get("settings") or {}).get("gate")
    return ItemRecord.from_dict(item, default_gate=gate, where=where).to_dict()


# The run block's known fields and their types (docs/results-schema.md); None is allowed for each. Checked when a
# file is read, so a malformed block is one error before the report writes anything.
_NUMBER = (int, float)
_RUN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str, "started": str, "finished": str, "complete": bool, "versions": dict, "device": str,
    "base_model": (dict, str), "loras": dict, "settings": dict, "timings": dict, "shard": (dict, str),
    "shards": list, "resumed": list, "versions_differ": bool, "inputs": dict, "cases": list, "argv": list,
    "platform": str, "device_name": str, "entry": str, "forced_resume": list, "cpu_numerics": dict}
# {name: value} blocks whose values are shown as they are (strings) or as seconds (numbers)
_RUN_MAPS: dict[str, type | tuple[type, ...]] = {"versions": (str, *_NUMBER), "timings": _NUMBER, "loras": str}


def _check_run_fields(run: dict[str, Any], where: str | Path | None) -> None:
    for key, types in _RUN_FIELDS.items():
        if run.get(key) is not None:
            check_type(run[key], types, f"'run.{key}'", where)
    for key, types in _RUN_MAPS.items():
        for name, v in (run.get(key) or {}).items():
            if v is not None and (not isinstance(v, types) or isinstance(v, bool)):
                raise InputFileError(f"'run.{key}.{name}' should be "
                                     f"{'a number' if types is _NUMBER else 'a string'}, got {type(v).__name__}",
                                     where)


def _normalize_run(run: Any, where: str | Path | None) -> dict[str, Any]:
    if run is None:
        run = {}
    check_type(run, dict, "'run'", where)
    _check_run_fields(run, where)
    run = dict(run)
    run.setdefault("id", "")
    run["complete"] = bool(run.get("complete", False))
    return run


def _check_size(path: Path) -> None:
    """Before reading a results file whole: at most the JSON reader's limit (a 6 GB file is refused unread)."""
    from parity.jsonio import MAX_READ_BYTES

    try:
        size = path.stat().st_size
    except OSError:
        return   # the read below says why
    if size > MAX_READ_BYTES:
        raise InputFileError(f"file is {size} bytes; parity reads results files of at most {MAX_READ_BYTES}", path)


def _parse_journal(path: Path) -> Results:
    _check_size(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputFileError(f"cannot read the results journal ({e.strerror})", path) from None
    warnings: list[str] = []
    state = _Replay()
    for n, rec in _journal_records(data, warnings):
        state.apply(n, rec, path, warnings)
    if state.run is None:
        raise InputFileError("no run record (the file is empty or not a parity results journal)", path)
    run = state.run
    run["complete"] = state.complete
    norm = []
    for it in state.items.values():  # a journal is read tolerantly: one bad record must not hide the others
        try:
            norm.append(absolute_paths(normalize_item(it, run, where=path), path.parent))
        except InputFileError as e:
            warnings.append(f"skipped an item: {e.message}")
    return Results(run=run, items=norm, base_dir=path.parent, source=path, warnings=warnings,
                   pending=sorted(state.pending & {it["id"] for it in norm}))


def _journal_records(data: bytes, warnings: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every whole JSON-object line; what cannot be read is skipped with a warning."""
    lines = data.split(b"\n")
    if lines and lines[-1].strip():
        warnings.append("ignored a torn last line (the run was interrupted while writing it)")
    out = []
    for n, raw in enumerate(lines[:-1], 1):  # whatever follows the last newline is torn (or empty)
        if not raw.strip():
            continue
        try:
            rec = parse_json(raw, f"line {n}")
        except ParityError:
            warnings.append(f"line {n}: not valid JSON, skipped")
            continue
        if not isinstance(rec, dict):
            warnings.append(f"line {n}: not a record, skipped")
            continue
        out.append((n, rec))
    return out


@dataclass
class _Replay:
    """The run as the journal's records leave it, applied in order (a later record wins)."""

    run: dict[str, Any] | None = None
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)  # items journaled as a first pass, follow-ups not done
    complete: bool = False

    def apply(self, n: int, rec: dict[str, Any], path: Path, warnings: list[str]) -> None:
        kind = rec.get("type")
        if kind == "run":
            if rec.get("schema") != SCHEMA:
                raise InputFileError(f"unsupported schema {rec.get('schema')!r} (expected {SCHEMA!r})", path)
            self.run = _normalize_run(rec.get("run"), path)
        elif kind == "item":
            item = rec.get("item")
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                self.items.pop(item["id"], None)  # a retried item moves to where it finished last
                self.items[item["id"]] = item
                (self.pending.add if rec.get("pending") else self.pending.discard)(item["id"])
            else:
                warnings.append(f"line {n}: item record without an id, skipped")
        elif kind == "finish":
            self.complete = True
            if self.run is not None:
                for key in ("finished", "timings"):
                    if rec.get(key) is not None:
                        self.run[key] = rec[key]
        elif kind == "resume":
            self._resume(rec)

    def _resume(self, rec: dict[str, Any]) -> None:
        self.complete = False
        if self.run is not None:
            self.run.setdefault("resumed", []).append(rec.get("at"))
            if isinstance(rec.get("changed"), list):  # a --force-resume with other settings
                self.run["inputs"] = rec.get("inputs")
                self.run.setdefault("forced_resume", []).extend(str(c) for c in rec["changed"])


def _parse_snapshot(path: Path) -> Results:
    _check_size(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputFileError("not UTF-8 text (is this a results.json?)", path) from None
    except OSError as e:
        raise InputFileError(f"cannot read results ({e.strerror or e})", path) from None
    try:
        doc = parse_json(text, path)
    except ParityError as e:
        raise InputFileError(e.message, path) from None
    if not isinstance(doc, dict) or "items" not in doc:
        raise InputFileError("not a parity results file (no 'items')", path)
    if doc.get("schema") != SCHEMA:
        raise InputFileError(f"unsupported schema {doc.get('schema')!r} (expected {SCHEMA!r})", path)
    run = _normalize_run(doc.get("run"), path)
    check_type(doc["items"], list, "'items'", path)
    items = [absolute_paths(normalize_item(it, run, where=path), path.parent) for it in doc["items"]]
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
