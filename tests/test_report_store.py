"""The results store: atomic incremental writes, tolerant loading, resume after SIGKILL, shard merging."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from parity.errors import InputFileError, ParityError
from parity.report import SCHEMA, ResultsStore, load, merge, write_report
from parity.report.store import JOURNAL_NAME


def _item(i: int, tier: str = "NEAR", **kw) -> dict:
    d = {"id": f"case-a[step{i * 100}-p0]", "case": "case-a", "step": i * 100, "index": 0, "prompt": f"p {i}",
         "tier": tier, "metrics": {"ssim": 0.9 + i / 1000, "psnr": 30.0}, "paths": {"preview": f"img/{i}.jpg"}}
    d.update(kw)
    return d


def _strict_json(text: str):
    def bad(tok):
        raise AssertionError(f"non-standard JSON constant {tok}")
    return json.loads(text, parse_constant=bad)


def test_round_trip_and_snapshot_is_strict_json(tmp_path):
    store = ResultsStore(tmp_path).start({"id": "r1", "settings": {"gate": "NEAR"}})
    store.add(_item(1, "EXACT", metrics={"ssim": 1.0, "psnr": math.inf}))
    store.add(_item(2, "DRIFT"))
    store.finish(timings={"total": 1.5})
    doc = _strict_json((tmp_path / "results.json").read_text())
    assert doc["schema"] == SCHEMA and doc["run"]["complete"] is True
    assert [it["id"] for it in doc["items"]] == ["case-a[step100-p0]", "case-a[step200-p0]"]
    assert doc["items"][0]["metrics"]["psnr"] == "inf"
    for line in (tmp_path / JOURNAL_NAME).read_text().splitlines():
        _strict_json(line)
    res = load(tmp_path / "results.json")
    assert res.complete and res.run["timings"] == {"total": 1.5}
    assert res.items[0]["metrics"]["psnr"] == math.inf
    # gate from the run's settings; DRIFT is worse than NEAR
    assert [it["passed"] for it in res.items] == [True, False]
    assert res.items[1]["gate"] == "NEAR"


def test_torn_last_line_is_ignored_and_run_marked_incomplete(tmp_path):
    store = ResultsStore(tmp_path).start({"id": "r"})
    for i in range(3):
        store.add(_item(i))
    store.close()
    with open(tmp_path / JOURNAL_NAME, "ab") as f:
        f.write(b'{"type": "item", "item": {"id": "torn", "ti')  # killed mid-write
    res = load(tmp_path)
    assert not res.complete
    assert len(res.items) == 3 and "torn" not in res.by_id()
    assert any("torn" in w for w in res.warnings)
    # results.json (snapshot) of an unfinished run defers to the journal, which has every item
    assert len(load(tmp_path / "results.json").items) == 3


def test_resume_cuts_torn_tail_and_keeps_done_items(tmp_path):
    store = ResultsStore(tmp_path).start({"id": "r"})
    store.add(_item(0))
    store.add(_item(1, "ERROR", error="boom", metrics={}))
    store.close()
    with open(tmp_path / JOURNAL_NAME, "ab") as f:
        f.write(b'{"type": "it')
    with pytest.raises(ParityError, match="--resume"):
        ResultsStore(tmp_path).start({"id": "r"})
    store = ResultsStore(tmp_path).start({"id": "r"}, resume=True)
    assert store.done_ids() == {_item(0)["id"], _item(1)["id"]}
    assert store.done_ids(include_errors=False) == {_item(0)["id"]}
    store.add(_item(1, "NEAR"))  # the retried item replaces the error
    store.add(_item(2))
    res = store.finish()
    loaded = load(tmp_path)
    assert loaded.complete and [it["tier"] for it in loaded.items] == ["NEAR", "NEAR", "NEAR"]
    assert loaded.warnings == []  # the torn fragment was cut, not glued to the next record
    assert loaded.run.get("resumed") and res.complete


def test_overwrite_discards_old_journal(tmp_path):
    old = ResultsStore(tmp_path).start({"id": "a"})
    old.add(_item(0))
    old.close()  # the earlier run ended (a run still holding the folder is refused: test_run_integrity.py)
    store = ResultsStore(tmp_path).start({"id": "b"}, overwrite=True)
    assert store.done_ids() == set()
    store.finish()
    assert load(tmp_path).run["id"] == "b" and load(tmp_path).items == []


_WRITER = textwrap.dedent("""
    import sys, time
    sys.modules["torch"] = None  # the store must not need torch
    from parity.report import ResultsStore
    run_dir, n, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    store = ResultsStore(run_dir, snapshot_every=0.0).start({"id": "kill-test"}, resume=resume)
    for i in range(n):
        iid = f"c[step{i}-p0]"
        if iid in store.done_ids():
            continue
        store.add({"id": iid, "case": "c", "step": i, "index": 0, "tier": "NEAR", "prompt": "x" * 2000,
                   "metrics": {"ssim": 0.97}})
        time.sleep(0.02)
    store.finish()
""")


def _run_writer(run_dir, n, resume):
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(run_dir), str(n), "1" if resume else "0"])


@pytest.mark.slow  # another Python process
def test_sigkill_loses_at_most_the_item_in_flight_and_resume_completes(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = _run_writer(killed, 60, False)
    journal = killed / JOURNAL_NAME
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 12:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lines_on_disk = journal.read_bytes().count(b"\n")
    part = load(killed)
    assert not part.complete
    assert len(part.items) >= 10 and len(part.items) == lines_on_disk - 1  # every fsync'd item survived
    _strict_json((killed / "results.json").read_text())  # the snapshot is whole, whatever moment the kill hit
    # the report can be built from the partial results, marked incomplete
    paths = write_report(part, tmp_path / "partial-report", thumbnails=False)
    assert "Incomplete run" in paths.index.read_text()
    assert "Incomplete run" in paths.markdown.read_text()
    assert _run_writer(killed, 60, True).wait(120) == 0
    assert _run_writer(clean, 60, False).wait(120) == 0
    a, b = load(killed), load(clean)
    assert a.complete and b.complete
    assert a.items == b.items


def test_merge_shards(tmp_path):
    s0 = ResultsStore(tmp_path / "s0").start({"id": "run", "shard": {"index": 0, "count": 2}})
    s1 = ResultsStore(tmp_path / "s1").start({"id": "run", "shard": {"index": 1, "count": 2}})
    for i in range(4):
        (s0 if i % 2 == 0 else s1).add(_item(i))
    s0.add(_item(1))  # an overlapping identical item is kept once
    s0.finish()
    s1.close()  # shard 1 did not finish
    merged = merge([load(tmp_path / "s0"), load(tmp_path / "s1")])
    assert sorted(it["id"] for it in merged.items) == sorted(_item(i)["id"] for i in range(4))
    assert not merged.complete and len(merged.run["shards"]) == 2
    # relative paths were made absolute against each shard's directory
    p = merged.by_id()[_item(3)["id"]]["paths"]["preview"]
    assert p == str((tmp_path / "s1" / "img" / "3.jpg").resolve())


def test_merge_conflicting_duplicate_is_a_clear_error(tmp_path):
    a = ResultsStore(tmp_path / "a").start({"id": "r"})
    a.add(_item(0, "NEAR"))
    a.finish()
    b = ResultsStore(tmp_path / "b").start({"id": "r"})
    b.add(_item(0, "DIFFERENT"))
    b.finish()
    with pytest.raises(ParityError, match=r"case-a\[step0-p0\].*differs between"):
        merge([load(tmp_path / "a"), load(tmp_path / "b")])


@pytest.mark.parametrize("text,match", [
    ('{"schema": "parity.results/1", "items": [', "line 1, column"),
    ('{"schema": "other/9", "items": []}', "unsupported schema"),
    ('{"schema": "parity.results/1", "items": [{"id": "x", "tier": "GREAT"}]}', "tier 'GREAT'"),
    ('{"schema": "parity.results/1", "items": [{"tier": "NEAR"}]}', "no string 'id'"),
    ('{"schema": "parity.results/1", "items": [{"id": "x", "tier": "NEAR", "metrics": []}]}', "'metrics' should be dict"),
    ('[1, 2]', "not a parity results file"),
])
def test_bad_results_files_name_the_file(tmp_path, text, match):
    p = tmp_path / "results.json"
    p.write_text(text)
    with pytest.raises(InputFileError, match=match) as e:
        load(p)
    assert str(p) in str(e.value)


def test_missing_file_and_empty_dir(tmp_path):
    with pytest.raises(InputFileError, match="no such results file"):
        load(tmp_path / "nope.json")
    with pytest.raises(InputFileError, match="no results.json"):
        load(tmp_path)


def test_every_truncation_of_a_journal_loads_or_fails_cleanly(tmp_path):
    """Cut the journal at every byte (a crash at any moment): load gives a prefix of the items, or a clear
    InputFileError while even the run record is incomplete."""
    src = tmp_path / "src"
    store = ResultsStore(src).start({"id": "t"})
    for i in range(3):
        store.add(_item(i, metrics={"ssim": 0.5, "psnr": math.inf}))
    store.finish()
    data = (src / JOURNAL_NAME).read_bytes()
    ids = [_item(i)["id"] for i in range(3)]
    first_nl = data.index(b"\n")
    cut = tmp_path / "cut"
    cut.mkdir()
    for n in range(len(data) + 1):
        (cut / JOURNAL_NAME).write_bytes(data[:n])
        if n <= first_nl:
            with pytest.raises(InputFileError):
                load(cut)
            continue
        res = load(cut)
        got = [it["id"] for it in res.items]
        assert got == ids[: len(got)]
        assert res.complete == (n == len(data))


def test_a_bad_item_in_the_journal_is_skipped_with_a_warning(tmp_path):
    store = ResultsStore(tmp_path).start({"id": "t"})
    store.add(_item(0))
    store.close()
    with open(tmp_path / JOURNAL_NAME, "a") as f:
        f.write(json.dumps({"type": "item", "item": {"id": "bad", "tier": "SUPER"}}) + "\n")
        f.write("\x00garbage\n")
        f.write(json.dumps({"type": "item", "item": _item(1)}) + "\n")
    res = load(tmp_path)
    assert [it["id"] for it in res.items] == [_item(0)["id"], _item(1)["id"]]
    assert len(res.warnings) == 2 and any("SUPER" in w for w in res.warnings)
    assert any("line 4" in w for w in res.warnings)
