"""Reports that travel (issue 16 A): a report folder written with a relative `--out` from any working directory,
then moved, still shows every image and resolves every link (checked in headless Chromium); the same for
`parity report merge`. Plus: files readable by others, `--report-url`, merge's exit code.

The browser test runs the real `parity diff` on the built demo (`python -m parity.cli demo --prepare`, which
`make test` does first; built here when missing)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from parity.report import load, synthetic_results, write_report

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "parity.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


# ----------------------------------------------------------------------------------------------- in the browser
# Every URL the page can show, read back in the page itself: <img> sources, hrefs, and every image URL of every
# item in the data blob (the item view shows them when opened), each loaded as an image by Chromium.
_PROBE = """
var done = arguments[arguments.length - 1];
var imgs = new Set(), links = new Set();
document.querySelectorAll('img').forEach(function (i) { if (i.getAttribute('src')) imgs.add(i.src); });
document.querySelectorAll('a[href]').forEach(function (a) {
  if (a.getAttribute('href').charAt(0) !== '#') links.add(a.href); });
var blob = JSON.parse(document.getElementById('parity-data').textContent);
function add(set, u) { if (typeof u === 'string' && u) set.add(new URL(u, document.baseURI).href); }
blob.items.forEach(function (it) {
  Object.values(it.u || {}).forEach(function (v) { (Array.isArray(v) ? v : [v]).forEach(function (x) { add(imgs, x); }); });
  Object.values(it.t || {}).forEach(function (x) { add(imgs, x); });
});
Promise.all(Array.from(imgs).map(function (u) {
  return new Promise(function (res) {
    var im = new Image();
    im.onload = function () { res([u, im.naturalWidth]); };
    im.onerror = function () { res([u, 0]); };
    im.src = u;
  });
})).then(function (loaded) { done({loaded: loaded, links: Array.from(links), items: blob.items.length}); });
"""


def _open_every_item(drv, index: Path) -> dict:
    """Open the report and each item's view in turn; the union of what every view showed."""
    from types import SimpleNamespace

    from test_report_browser import open_report

    open_report(drv, SimpleNamespace(index=index))
    seen = drv.execute_async_script(_PROBE)
    ids = drv.execute_script("return JSON.parse(document.getElementById('parity-data').textContent)"
                             ".items.map(function (i) { return i.id; })")
    for item_id in ids:
        drv.execute_script("location.hash = arguments[0]", "item=" + item_id)
        more = drv.execute_async_script(_PROBE)
        seen["loaded"] += more["loaded"]
        seen["links"] += more["links"]
    return seen


def _check_travelled(drv, report: Path, gone: list[Path]) -> int:
    """Every image in `report`/index.html loads and every link resolves to a file inside `report` (nothing may
    point into the folders in `gone`, which no longer exist). Returns how many images were checked."""
    seen = _open_every_item(drv, report / "index.html")
    assert seen["items"] > 0
    broken = sorted({u for u, w in seen["loaded"] if not w})
    assert not broken, f"{len(broken)} broken images, e.g. {broken[:3]}"
    for url in set(seen["links"]) | {u for u, _ in seen["loaded"]}:
        parts = urlsplit(url)
        assert parts.scheme == "file", url
        target = Path(unquote(parts.path)).resolve()
        assert target.is_file(), url
        assert report.resolve() in target.parents, f"{url} is outside the report folder"
    return len({u for u, _ in seen["loaded"]})


@pytest.fixture(scope="module")
def demo():
    from parity.demo import build_demo

    return build_demo(ROOT / "demo")


@pytest.mark.slow
@pytest.mark.browser
def test_moved_report_and_moved_merge_show_every_image(demo, tmp_path):
    from test_report_browser import chromium_driver

    drv = chromium_driver()
    try:
        work = tmp_path / "ci-job"
        work.mkdir()
        # two runs with relative --out, from a working directory that is neither the repo nor the report's parent
        for job, base, out in ((demo.job, demo.base_model, "reports/portrait"),
                               (demo.klein_job, demo.klein_base_model, "reports/klein")):
            r = _cli("diff", job, "--base-model", base, "--out", out, "--no-attribution", "-q",
                     "--json", f"copies/{Path(out).name}.json", cwd=work)
            assert r.returncode == 0, r.stdout + r.stderr
            # --json FILE: a results file elsewhere has its paths relative to its own folder (or absolute)
            copy = json.loads((work / "copies" / f"{Path(out).name}.json").read_text())
            for it in copy["items"]:
                for key in ("preview", "render", "heatmap_diff"):
                    assert (work / "copies" / it["paths"][key]).is_file(), (key, it["paths"][key])
        # upload + download as artifacts: the folders move, the working directory is gone
        moved = tmp_path / "downloaded"
        shutil.move(str(work / "reports"), str(moved))
        shutil.rmtree(work)
        n = _check_travelled(drv, moved / "portrait", [work])
        assert n >= 3 * 3  # 3 items x (preview, render, heatmaps ...)
        klein = json.loads((moved / "klein" / "results.json").read_text())
        refs = [r for it in klein["items"] for r in it["params"]["preview"]["reference_images"]["value"]]
        assert refs, "a klein demo preview is conditioned on a reference image (outside the report: absolute)"
        _check_travelled(drv, moved / "klein", [work])
        # merge the downloaded shards from yet another directory, relative --out, then move the merge
        other = tmp_path / "merge-job"
        other.mkdir()
        r = _cli("report", "merge", moved / "portrait" / "results.json", moved / "klein" / "results.json",
                 "--out", "merged", cwd=other)
        assert r.returncode == 0, r.stdout + r.stderr
        final = tmp_path / "published"
        shutil.move(str(other / "merged"), str(final))
        assert _check_travelled(drv, final, [other]) >= n
        merged = json.loads((final / "results.json").read_text())
        assert len(merged["items"]) == 6
        # results.json: paths inside the folder are relative to it, the others absolute
        for it in merged["items"]:
            for key, value in it["paths"].items():
                for p in value if isinstance(value, list) else [value]:  # reference_images: a list
                    if p is not None:
                        assert os.path.isabs(p) or (final / p).is_file(), (it["id"], key, p)
            assert not (it["paths"]["render"] or "").startswith("/"), "the render was copied into the report"
    finally:
        drv.quit()
        shutil.rmtree(drv._parity_profile, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.browser
def test_report_rebuilt_after_the_job_is_deleted_shows_every_image(demo, tmp_path):
    """Issue 34: a run's report folder is moved and its job folder deleted (a CI job's workspace is gone); then
    `parity report` rebuilds it, from the folder (the run's journal, which keeps the job's paths) and from its
    results.json. Every image still loads: results.json points at the copies, the originals kept as provenance."""
    from test_report_browser import chromium_driver

    drv = chromium_driver()
    try:
        work = tmp_path / "ci-job"
        for job, base, out in ((demo.job, demo.base_model, "reports/portrait"),
                               (demo.klein_job, demo.klein_base_model, "reports/klein")):
            copy = work / "jobs" / Path(job).name  # a job folder of its own, deleted below
            shutil.copytree(job, copy)
            r = _cli("diff", copy, "--base-model", base, "--out", out, "--no-attribution", "-q", cwd=work)
            assert r.returncode == 0, r.stdout + r.stderr
        moved = tmp_path / "downloaded"
        shutil.move(str(work / "reports"), str(moved))
        shutil.rmtree(work)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        for target in (moved / "portrait", moved / "klein" / "results.json"):
            r = _cli("report", target, cwd=elsewhere)
            assert r.returncode == 0, r.stdout + r.stderr
        # and written elsewhere from the moved folder's journal (which still names the deleted job's previews)
        r = _cli("report", moved / "portrait", "--out", "rebuilt", cwd=elsewhere)
        assert r.returncode == 0 and "not copied" not in r.stderr, r.stdout + r.stderr
        _check_travelled(drv, elsewhere / "rebuilt", [work])
        for name in ("portrait", "klein"):
            _check_travelled(drv, moved / name, [work])
            doc = json.loads((moved / name / "results.json").read_text())
            for it in doc["items"]:
                assert it["paths"]["preview"].startswith("images/"), it["paths"]
                assert it["original_paths"]["preview"].startswith(str(work / "jobs")), it.get("original_paths")
        klein = json.loads((moved / "klein" / "results.json").read_text())
        refs = [p for it in klein["items"] for p in it["paths"].get("reference_images", [])]
        assert refs and all(p.startswith("images/") for p in refs), refs
    finally:
        drv.quit()
        shutil.rmtree(drv._parity_profile, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- without a browser
def test_report_files_are_readable_by_others(tmp_path):
    res = load(synthetic_results(4, tmp_path / "run", image_size=32))
    paths = write_report(res, tmp_path / "out")
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"index.html", "junit.xml", "summary.md", "results.json"}
    assert any(p.parent.name == "images" for p in files)
    for p in files:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o044 == 0o044, f"{p.relative_to(tmp_path)} is {oct(mode)}"
    assert stat.S_IMODE(paths.dir.stat().st_mode) & 0o055 == 0o055


def test_report_url_makes_summary_and_junit_links_absolute(tmp_path):
    run = synthetic_results(6, tmp_path / "run", image_size=32)
    base = "https://ci.example.com/artifacts/run 7/"
    r = _cli("report", run, "--out", "rep", "--report-url", base, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "rep" / "summary.md").read_text()
    hrefs = [p.split(")")[0] for p in md.split("](")[1:]]
    assert hrefs and all(h.startswith("https://ci.example.com/artifacts/run%207/index.html") for h in hrefs), hrefs
    props = [p.get("value") for p in ET.parse(tmp_path / "rep" / "junit.xml").iter("property")
             if p.get("name") == "report"]
    assert props and all(v.startswith("https://ci.example.com/artifacts/run%207/index.html#item=") for v in props)
    # without it, links are relative to the report folder (where summary.md and junit.xml are)
    r = _cli("report", run, "--out", "rep2", cwd=tmp_path)
    md = (tmp_path / "rep2" / "summary.md").read_text()
    assert "](index.html" in md and "https://" not in md
    r = _cli("report", run, "--out", "rep3", "--report-url", "ci/artifacts", cwd=tmp_path)
    assert r.returncode == 2 and "--report-url" in r.stderr and "ci/artifacts" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "rep3").exists()


def test_merge_exits_1_when_a_merged_item_fails(tmp_path):
    shards = []
    for seed in (3, 4):
        res = load(synthetic_results(8, tmp_path / f"s{seed}", image_size=32, seed=seed))
        for it in res.items:  # distinct ids per shard, as a real split has
            it["id"] = f"{it['id']}-s{seed}"
        shards.append((res, tmp_path / f"s{seed}" / "results.json"))
    failing = [it for res, _ in shards for it in res.items if not it["passed"]]
    assert failing, "the synthetic shards hold failing items"
    from parity.report.store import ResultsStore

    for res, path in shards:
        ResultsStore.write_merged(path.parent, res)
    r = _cli("report", "merge", *(p for _, p in shards), "--out", "m", "--no-thumbnails", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{16 - len(failing)}/16 items meet their gate" in r.stdout
    # the same shards with only passing items merge with exit 0
    for res, path in shards:
        res.items[:] = [it for it in res.items if it["passed"]]
        ResultsStore.write_merged(path.parent, res)
    r = _cli("report", "merge", *(p for _, p in shards), "--out", "m2", "--no-thumbnails", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_link_images_keeps_absolute_links_to_the_originals(tmp_path):
    res = load(synthetic_results(3, tmp_path / "run", image_size=32))
    from parity.report.html import report_json_blob

    blob = report_json_blob(write_report(res, tmp_path / "out", copy_images=False, thumbnails=False)
                            .index.read_text())
    urls = [u for it in blob["items"] for u in it["u"].values() if isinstance(u, str)]
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls)
    assert all(Path(unquote(u)).is_file() and (tmp_path / "run") in Path(unquote(u)).parents for u in urls)
    assert not (tmp_path / "out" / "images").exists() or not any((tmp_path / "out" / "images").iterdir())


# ----------------------------------------------------------------------------------------------- charts
@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """Five cases, one prompt each, 100 training steps: the step timeline and the steps chart at their widest."""
    d = tmp_path_factory.mktemp("long-run")
    return load(synthetic_results(500, d / "run", image_size=24, cases=5, prompts=1)), d


def test_steps_chart_gives_each_case_its_own_lane(long_run):
    from parity.report.html import steps_plot
    from parity.report.summary import summarize

    res, _ = long_run
    plot = steps_plot(summarize(res.items, res.run))
    cases = {it["case"] for it in res.items}
    assert len(plot.series) == len(plot.bands) == len(cases) == 5
    for (t0, b0), (t1, _) in zip(plot.bands, plot.bands[1:]):
        assert b0 < t1  # lanes do not overlap
    for sr, (top, bottom) in zip(plot.series, plot.bands):
        ys = [float(p.split(" ")[1]) for p in sr["path"][1:].split("L")]
        assert 90 <= len(ys) <= 100 and all(top <= y <= bottom for y in ys), sr["label"]  # ERROR: no score
    xs = [x for x, _ in plot.xticks]
    assert all(b - a >= 40 for a, b in zip(xs, xs[1:])), plot.xticks  # step labels never overprint
    assert plot.xticks[-1][1] == f"{max(it['step'] for it in res.items):g}"
    assert all(x <= plot.width for x in xs)


@pytest.mark.browser
def test_no_horizontal_scroll_with_a_100_step_timeline(long_run):
    from urllib.parse import quote

    from test_report_browser import chromium_driver, open_report

    res, d = long_run
    paths = write_report(res, d / "report")
    drv = chromium_driver(1280, 900)
    try:
        open_report(drv, paths)
        assert drv.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        worst = min(res.items, key=lambda it: it["step"] if it["case"] == res.items[0]["case"] else 1e9)
        open_report(drv, paths, "#item=" + quote(worst["id"], safe=""))
        n = drv.execute_script("return document.querySelectorAll('.card.open .timeline .strip .tl').length")
        assert n == 100
        spark = drv.execute_script("var s = document.querySelector('.card.open .timeline svg.spark');"
                                   "return s && s.getBoundingClientRect().right")
        assert spark and spark <= drv.execute_script("return window.innerWidth")
        assert drv.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        drv.quit()
        shutil.rmtree(drv._parity_profile, ignore_errors=True)


@pytest.mark.browser
def test_steps_chart_lane_labels_stay_inside_the_chart(long_run, tmp_path):
    """A case name as long as the demo's "demo-reference-server" (shortened to 16 characters, then "min 0.36")
    is drawn whole: no lane label starts left of the chart (it was clipped to "no-reference-…" in the demo)."""
    from test_report_browser import chromium_driver, open_report

    res = copy.deepcopy(long_run[0])   # the module's fixture stays as the other tests see it
    for it in res.items:
        it["case"] = "demo-reference-server-" + str(it["case"])
    paths = write_report(res, tmp_path / "report")
    drv = chromium_driver(1280, 900)
    try:
        open_report(drv, paths)
        boxes = drv.execute_script("return [...document.querySelectorAll('#plot-steps text.lane')]"
                                   ".map(t => { const b = t.getBBox(); return [t.textContent, b.x, b.x + b.width]; })")
        assert len(boxes) == 5 and all(label.startswith("demo-reference-") for label, _, _ in boxes), boxes
        assert all(x0 >= 0 for _, x0, _ in boxes), boxes
    finally:
        drv.quit()
        shutil.rmtree(drv._parity_profile, ignore_errors=True)
