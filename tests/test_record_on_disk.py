"""The item record on disk (issue 30): results.json keeps its schema byte for byte now that the render source, the
noise floor and the suspects are typed parts of the record, and item paths are absolute everywhere in memory and
turn relative at exactly one boundary, when a record is written into a file.

tests/data/results-before-typed-record/results.json was written by parity before the typed record (eddde76): two
demo items (engine renders, report copies with `original_paths`, attribution) and three items whose parts the demo
does not reach, each made by that version's own producers (a measured and a failed noise floor, a parameter
search's suspects with its case's spend; folder, endpoint and manifest sources)."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

from parity.record import ItemRecord, NoiseFloorRecord, RenderSource, SuspectsRecord
from parity.report.store import ResultsStore, dumps_results, load, merge

FIXTURE = Path(__file__).parent / "data" / "results-before-typed-record" / "results.json"
PACKAGE = Path(__file__).resolve().parents[1] / "parity"


def _fixture_items() -> list[dict]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))["items"]


def _item_lines(text: str) -> list[str]:
    """The item lines of a results.json (one item per line after the run block)."""
    return [line.rstrip(",") for line in text.splitlines()[1:-1]]


def test_a_results_json_written_before_reads_and_writes_back_byte_for_byte():
    res = load(FIXTURE)
    assert dumps_results(res.to_dict(), FIXTURE.parent) == FIXTURE.read_text(encoding="utf-8")
    for before, rec in zip(res.items, res.records()):
        assert rec.to_dict() == before  # dict -> typed record -> dict changes nothing


def test_the_parts_are_typed_in_the_record():
    recs = {r.id: r for r in load(FIXTURE).records()}
    engine = recs["demo-parity[step0-p0]"]
    assert engine.source == RenderSource(kind="engine") and not engine.external_render
    floor = recs["demo-parity[step200-p7]"]
    assert isinstance(floor.noise_floor, NoiseFloorRecord) and floor.noise_floor.applied
    assert floor.noise_floor.tier_before == "DRIFT" and floor.noise_floor.draws == [0.991, 0.993]
    assert floor.source.kind == "folder" and floor.source.file == "/data/mine/x.png" and floor.external_render
    failed = recs["demo-parity[step200-p8]"]
    assert failed.noise_floor.error == "OSError: disk full" and not failed.noise_floor.applied
    assert (failed.source.kind, failed.source.request_id, failed.source.extra) == ("endpoint", "r-17", {"seed": None})
    searched = recs["demo-parity[step200-p9]"]
    assert isinstance(searched.suspects, SuspectsRecord) and searched.suspects.explained
    assert searched.suspects.verdict == "previews look like 12 steps, not 20"
    assert (searched.suspects.extra_renders, searched.suspects.case_renders) == (7, 7)
    assert searched.suspects.best[0]["knob"] == "steps" and searched.source.kind == "manifest"


def test_a_store_writes_each_record_as_parity_wrote_it_before(tmp_path):
    """Records handed to the store as the runner hands them (typed, paths absolute) are journaled and written to
    results.json exactly as the earlier version wrote the same items."""
    run = tmp_path / "run"
    store = ResultsStore(run).start({"id": "again"})
    for item in load(FIXTURE).items:   # absolute paths into the fixture's folder: rebased onto this run
        paths = {k: _rebased(v, FIXTURE.parent, run) for k, v in item["paths"].items()}
        store.add(ItemRecord.from_dict(dict(item, paths=paths)))
    store.finish()
    before = _item_lines(FIXTURE.read_text(encoding="utf-8"))
    assert _item_lines((run / "results.json").read_text(encoding="utf-8")) == before
    journaled = [json.loads(line)["item"] for line in (run / "results.jsonl").read_text().splitlines()
                 if json.loads(line)["type"] == "item"]
    assert journaled == _fixture_items()


def _rebased(v, old: Path, new: Path):
    if isinstance(v, list):
        return [_rebased(x, old, new) for x in v]
    return str(new / os.path.relpath(v, old)) if v.startswith(str(old)) else v


def test_paths_are_absolute_in_memory_and_relative_only_in_files(tmp_path, monkeypatch):
    """A relative --out: in memory every path is absolute (store, loaded results, merged results); each file
    holds them relative to its own folder, or absolute where they leave it."""
    monkeypatch.chdir(tmp_path)
    outside = tmp_path / "job" / "samples" / "p.jpg"
    rec = ItemRecord(id="c[step1-p0]", tier="NEAR", paths={"preview": str(outside),
                                                           "render": str(tmp_path / "out" / "renders" / "r.png")})
    store = ResultsStore(Path("out")).start({"id": "r"})
    added = store.add(rec)
    store.finish()
    expected = {"preview": str(outside), "render": str(tmp_path / "out" / "renders" / "r.png")}
    assert added["paths"] == expected and store.results().items[0]["paths"] == expected
    on_disk = json.loads(Path("out/results.json").read_text())["items"][0]["paths"]
    assert on_disk == {"preview": str(outside), "render": "renders/r.png"}
    loaded = load(Path("out/results.json"))
    assert loaded.items[0]["paths"] == expected
    assert store.compared_records() == {} and loaded.records()[0].paths == expected
    ResultsStore.write_merged(tmp_path / "merged", merge([loaded]))
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())["items"][0]["paths"]
    assert merged == {"preview": str(outside), "render": str(tmp_path / "out" / "renders" / "r.png")}
    assert load(tmp_path / "merged" / "results.json").items[0]["paths"] == expected


# --------------------------------------------------------------------------------------------- one boundary
# Where item paths turn relative: jsonfile.item_on_disk, called by what writes an item into a file. The report's
# `url_for` makes links (not record paths) relative; `parity init` writes a case file's job path; `parity
# make-tiny` prints the files it wrote.
RELATIVE_MAKERS = {"parity/report/jsonfile.py::item_on_disk", "parity/report/html.py::url_for",
                   "parity/commands/init.py::starter_case", "parity/commands/make_tiny.py::run"}
WRITERS = {"parity/report/jsonfile.py::dumps_results", "parity/report/journal.py::add",
           "parity/commands/_execute.py::_write_json_copy"}
READERS = {"parity/report/results.py::_parse_journal", "parity/report/results.py::_parse_snapshot",
           "parity/report/journal.py::add"}


def _calls(root: Path) -> dict[str, set[str]]:
    """'file::function' -> the names it calls (os.path.relpath as 'relpath', x.relative_to(...) as 'relative_to')."""
    out: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tops = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        tops += [m for c in tree.body if isinstance(c, ast.ClassDef) for m in c.body
                 if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for fn in tops:   # a nested function's calls count as its enclosing function's
            names = {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "")
                     for c in ast.walk(fn) if isinstance(c, ast.Call)}
            out.setdefault(f"{path.relative_to(root.parent).as_posix()}::{fn.name}", set()).update(names)
    return out


def boundary_problems(root: Path = PACKAGE) -> list[str]:
    calls = _calls(root)
    found = [f"{fn} makes a path relative" for fn, names in calls.items()
             if names & {"relpath", "relative_to"} and fn not in RELATIVE_MAKERS]
    found += [f"{fn} writes item paths" for fn, names in calls.items()
              if "item_on_disk" in names and fn not in WRITERS]
    found += [f"{fn} resolves item paths" for fn, names in calls.items()
              if "absolute_paths" in names and fn not in READERS]
    return found


def test_item_paths_turn_relative_at_one_boundary():
    assert boundary_problems() == []


def test_the_boundary_check_sees_a_second_place(tmp_path):
    (tmp_path / "parity").mkdir()
    (tmp_path / "parity" / "html.py").write_text(
        "import os\ndef rebase(p, b):\n    return os.path.relpath(p, b)\n"
        "def report(it):\n    return item_on_disk(absolute_paths(it, None), '.')\n", encoding="utf-8")
    assert boundary_problems(tmp_path / "parity") == [
        "parity/html.py::rebase makes a path relative", "parity/html.py::report writes item paths",
        "parity/html.py::report resolves item paths"]


def test_a_noise_floor_written_without_later_keys_keeps_its_keys():
    """A file written before `draws` existed (or by the synthetic report) is written back with its own keys."""
    from parity.report.synthetic import _noise_floor

    old = _noise_floor(["lora_precision"], 0.99)
    assert "draws" not in old
    assert NoiseFloorRecord.from_dict(old, "x", None).to_dict() == old
    assert list(NoiseFloorRecord.from_dict(old, "x", None).to_dict()) == list(old)
    later = dict(old, written_by="a later parity")
    assert NoiseFloorRecord.from_dict(later, "x", None).to_dict() == later


def test_suspects_written_by_an_earlier_search_keep_their_keys():
    old = {"baseline": 0.9, "best": [], "explained": False, "verdict": "", "extra_renders": 3}   # no not_searched
    assert list(SuspectsRecord.from_dict(old).to_dict()) == list(old)
    rec = SuspectsRecord.from_dict(old)
    rec.case_renders = 5
    assert rec.to_dict() == dict(old, case_renders=5)
