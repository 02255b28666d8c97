"""The images a report holds (issue 34): hard links where safe, copies otherwise, never changed by what happens to
the originals afterwards; results.json points at them with the originals as provenance; a rebuild after the
originals are gone still finds them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from parity.report import load, synthetic_results, write_report
from parity import fileio


def _preview_of(doc: dict, out: Path) -> tuple[Path, Path]:
    it = doc["items"][0]
    return out / it["paths"]["preview"], Path(it["original_paths"]["preview"])


def test_copies_outlive_a_replaced_or_deleted_original(tmp_path):
    from PIL import Image

    run = tmp_path / "run"
    res = load(synthetic_results(6, run, image_size=32))
    out = tmp_path / "report"
    write_report(res, out, thumbnails=False)
    doc = json.loads((out / "results.json").read_text())
    copy, original = _preview_of(doc, out)
    assert copy.parent == out / "images" and original.is_file() and run in original.parents
    assert copy.read_bytes() == original.read_bytes()
    assert os.stat(copy).st_ino == os.stat(original).st_ino  # same file system, readable: a hard link
    before = copy.read_bytes()
    # a rerun rewrites the original by atomic replacement (as the runner does): the report keeps what it showed
    fileio.save_image(original, Image.new("RGB", (32, 32), (255, 0, 0)))
    assert copy.read_bytes() == before and original.read_bytes() != before
    # a rebuild from the run's results takes the new original; the old copy was not changed in place
    write_report(res, out, thumbnails=False)
    assert copy.read_bytes() == original.read_bytes() != before
    # the original gone, a rebuild from the report's own results.json still links the copy
    original.unlink()
    write_report(load(out / "results.json"), out, thumbnails=False)
    again = json.loads((out / "results.json").read_text())
    assert _preview_of(again, out) == (copy, original)


def test_an_original_not_readable_by_others_is_copied_not_linked(tmp_path):
    run = tmp_path / "run"
    res = load(synthetic_results(3, run, image_size=32))
    for p in (run / "images").iterdir():
        p.chmod(0o600)
    out = tmp_path / "report"
    write_report(res, out, thumbnails=False)
    copy, original = _preview_of(json.loads((out / "results.json").read_text()), out)
    assert os.stat(copy).st_ino != os.stat(original).st_ino
    assert os.stat(copy).st_mode & 0o777 == 0o644 and os.stat(original).st_mode & 0o777 == 0o600  # theirs untouched
    made = os.stat(copy).st_ino
    write_report(res, out, thumbnails=False)
    assert os.stat(copy).st_ino == made  # current: not copied again


def test_thumbnails_are_made_worst_first_while_the_report_is_written(tmp_path):
    from parity.report.html import Thumbnails, report_json_blob
    from parity.report.summary import summarize

    res = load(synthetic_results(30, tmp_path / "run", image_size=48))
    out = tmp_path / "report"
    out.mkdir()
    worst = summarize(res.items, res.run).worst
    items = [dict(it, paths={k: str(res.base_dir / v) for k, v in it["paths"].items() if isinstance(v, str)})
             for it in worst]
    thumbs = Thumbnails(items[:4], out, 64, budget_s=None, workers=2).result()
    assert len(thumbs) == sum(1 for it in items[:4] for k in it["paths"] if k != "checkpoint")
    assert all(url and dims == (48, 48) for url, dims in thumbs.values())
    # the whole report: no budget -> every image has one; then a rebuild finds all of them cached
    blob = report_json_blob(write_report(res, out, thumb_budget_s=None).index.read_text())
    made = sorted((out / "thumbs").iterdir())
    assert all(all(v for v in it.get("t", {}).values()) for it in blob["items"])
    write_report(load(out / "results.json"), out, thumb_budget_s=0.0)
    assert sorted((out / "thumbs").iterdir()) == made
