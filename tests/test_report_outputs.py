"""Report outputs without a browser: HTML escaping and self-containment, JUnit (parsed), markdown, the
`parity report` command (torch made unimportable), path safety."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from parity.errors import ParityError
from parity.report import ResultsStore, load, synthetic_results, write_report
from parity.report.store import absolute_paths
from parity.report.html import report_json_blob
from parity.report.synthetic import HOSTILE_FILE, HOSTILE_PROMPT, HOSTILE_TEXTS

TIERS = ("EXACT", "NEAR", "DRIFT", "DIFFERENT", "ERROR")
ORDER = {t: i for i, t in enumerate(TIERS)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic-run")
    return synthetic_results(40, d, hostile=True, image_size=64)


@pytest.fixture(scope="module")
def raw(run):
    """The results file as plain JSON, read without the code under test."""
    return json.loads(Path(run).read_text())


@pytest.fixture(scope="module")
def report(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-out")
    return write_report(load(run), out, copy_images=False)  # links the originals: their odd names reach the page


def _expected_pass(it, gate):  # an independent reading of "meets the gate"
    return it["tier"] != "ERROR" and ORDER[it["tier"]] <= ORDER[gate]


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_escapes_user_text_and_is_self_contained(report, raw):
    html = report.index.read_text()
    for text in HOSTILE_TEXTS:
        assert text not in html  # never verbatim: neither as markup nor inside the JSON blob
    assert "<img src=x" not in html and "<svg onload" not in html
    p = _Collector()
    p.feed(html)
    assert [t for t, a in p.tags if t == "script"] == ["script", "script"]  # the data blob and our code
    for tag, attrs in p.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        for key in ("src", "href"):
            v = attrs.get(key)
            assert v is None or not re.match(r"^[a-z][a-z0-9+.-]*:|^//", v, re.I), (tag, attrs)
    assert [t for t, a in p.tags if t in ("link", "iframe", "object", "embed")] == []
    # no network: the only absolute URL anywhere is the SVG namespace name
    assert set(re.findall(r"https?://[^\s'\"<>)]+", html)) <= {"http://www.w3.org/2000/svg"}
    blob = report_json_blob(html)
    prompts = {it["prompt"] for it in blob["items"]}
    assert HOSTILE_PROMPT in prompts and set(HOSTILE_TEXTS) <= prompts  # data intact after escaping
    assert len(blob["items"]) == len(raw["items"])


def test_html_links_and_thumbnails_resolve_from_another_directory(report, raw):
    blob = report_json_blob(report.index.read_text())
    seen_hostile = False
    for it in blob["items"]:
        for key, url in it.get("u", {}).items():
            target = (report.dir / unquote(url)).resolve()
            assert target.is_file(), (it["id"], key, url)
            seen_hostile |= target.name == HOSTILE_FILE.replace(".png", ".jpg")
        for key, url in it.get("t", {}).items():
            if url:
                from PIL import Image

                with Image.open(report.dir / url) as im:
                    assert max(im.size) <= 176
                    assert (report.dir / url).resolve().parent == report.thumbs
    assert seen_hostile
    # every thumbnail is inside the report directory, named by hash and the source's size
    from PIL import Image

    names = [p.name for p in report.thumbs.iterdir()]
    assert names and all(re.fullmatch(r"[0-9a-f]{24}_64x64\.jpg", n) for n in names), names[:3]
    assert all(Image.open(raw_src).size == (64, 64) for raw_src in (report.dir / unquote(u) for it in blob["items"]
                                                                   for u in it.get("u", {}).values()))
    # the results.json copy has paths relative to the report directory
    copy = json.loads(report.results.read_text())
    for it in copy["items"]:
        for p in it["paths"].values():
            assert (report.dir / p).is_file()


def test_junit_parses_and_matches_results(report, raw):
    root = ET.parse(report.junit).getroot()
    assert root.tag == "testsuites"
    gate = raw["run"]["settings"]["gate"]
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == len(raw["items"]) == int(root.get("tests"))
    by_name = {tc.get("name"): tc for tc in cases}
    n_fail = n_err = 0
    for it in raw["items"]:
        tc = by_name[it["id"]]
        assert tc.get("classname") == it["case"]
        props = {p.get("name"): p.get("value") for p in tc.findall("./properties/property")}
        assert props["tier"] == it["tier"]
        for k, v in it["metrics"].items():
            assert props.get(f"metric.{k}") == (None if v is None else str(v))  # an unset metric is left out
        if it["causes"]:
            c = it["causes"][0]  # in words: "<knob> <preview> -> <inference>"
            assert props["cause.1"].startswith(f"{c['knob']} ") and " -> " in props["cause.1"]
            assert "{" not in props["cause.1"] and "None" not in props["cause.1"]
        kinds = [c.tag for c in tc if c.tag in ("failure", "error", "skipped")]
        if it["tier"] == "ERROR":
            n_err += 1
            assert kinds == ["error"] and tc.find("error").text == it["error"]
        elif not _expected_pass(it, gate):
            n_fail += 1
            assert kinds == ["failure"] and it["tier"] in tc.find("failure").get("message")
        else:
            assert kinds == []
    assert (int(root.get("failures")), int(root.get("errors"))) == (n_fail, n_err)
    assert sum(int(s.get("tests")) for s in root.findall("testsuite")) == len(cases)
    # structure: only the elements and attributes the JUnit schema knows
    allowed = {"testsuites": {"testsuite"}, "testsuite": {"testcase", "properties"},
               "testcase": {"properties", "failure", "error", "skipped", "system-out"},
               "properties": {"property"}, "property": set(), "failure": set(), "error": set()}
    for el in root.iter():
        assert {c.tag for c in el} <= allowed[el.tag], el.tag
    for s in root.findall("testsuite"):
        assert {"name", "tests", "failures", "errors", "time"} <= set(s.attrib)
    # the bell character in a hostile prompt was replaced (XML 1.0 cannot hold it), the rest kept
    assert "\x07" not in report.junit.read_text()


def test_markdown_summary(report, raw):
    md = report.markdown.read_text()
    assert "<img" not in md and "<svg" not in md and "](javascript" not in md
    counts = [sum(it["tier"] == t for it in raw["items"]) for t in TIERS]
    assert "| " + " | ".join(TIERS) + " |\n|" + "---:|" * 5 + "\n| " + " | ".join(map(str, counts)) + " |" in md
    gate = raw["run"]["settings"]["gate"]
    n_pass = sum(_expected_pass(it, gate) for it in raw["items"])
    assert md.startswith(f"## ❌ parity: {n_pass}/{len(raw['items'])} items meet their gate")
    # every table row keeps its column count (no pipe or newline from user text breaks a row)
    for block in re.findall(r"((?:^\|.*\|\n)+)", md, re.M):
        rows = block.strip("\n").split("\n")
        widths = {len(re.findall(r"(?<!\\)\|", r)) for r in rows}
        assert len(widths) == 1, rows
    worst = md.split("### Worst items")[1]
    first_row = worst.strip().split("\n")[2]
    assert "| ERROR |" in first_row  # errors first
    assert "Incomplete" not in md


def test_partial_run_is_marked_incomplete(tmp_path):
    res = synthetic_results(6, tmp_path / "run", complete=False)
    loaded = load(res)
    assert not loaded.complete
    paths = write_report(loaded, tmp_path / "out", thumbnails=False)
    assert 'id="incomplete"' in paths.index.read_text()
    assert "Incomplete run" in paths.markdown.read_text()


def test_writes_stay_inside_the_report_directory(tmp_path):
    results = load(synthetic_results(4, tmp_path / "run", image_size=32))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("untouched")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside, out / "thumbs")
    with pytest.raises(ParityError, match="symlink"):
        write_report(results, out)
    (out / "thumbs").unlink()
    os.symlink(outside / "keep.txt", out / "index.html")  # replaced, not written through
    results.items[0]["paths"]["render"] = "../../../../../../etc/passwd"  # only ever read
    write_report(results, out)
    assert (outside / "keep.txt").read_text() == "untouched"
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert not (out / "index.html").is_symlink()
    for p in out.rglob("*"):
        assert out.resolve() in p.resolve().parents


_NO_TORCH = "import sys; sys.modules['torch'] = None; from parity.cli import main; rc = main(sys.argv[1:]); " \
            "assert 'diffusers' not in sys.modules; sys.exit(rc)"


def _cli(*args):
    return subprocess.run([sys.executable, "-c", _NO_TORCH, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow  # another Python process
def test_cli_report_without_torch(run, raw, tmp_path):
    out = tmp_path / "rep"
    r = _cli("report", run, "--out", out)
    assert r.returncode == 0, r.stderr
    assert (out / "index.html").is_file() and (out / "junit.xml").is_file() and (out / "summary.md").is_file()
    gate = raw["run"]["settings"]["gate"]
    n_pass = sum(_expected_pass(it, gate) for it in raw["items"])
    assert f"{n_pass}/{len(raw['items'])} items meet their gate" in r.stdout
    r = _cli("report", run, "--out", tmp_path / "rep2", "--strict", "--no-thumbnails")
    assert r.returncode == 1  # some items are below their gate


@pytest.mark.slow  # another Python process
def test_cli_merge_and_errors(tmp_path):
    full = load(synthetic_results(9, tmp_path / "full", image_size=32, seed=1))
    shards = []
    for name, part in (("a", full.items[:5]), ("b", full.items[4:])):  # item 4 is in both shards, identical
        store = ResultsStore(tmp_path / name).start(dict(full.run, shard={"index": len(shards), "count": 2}))
        for it in part:
            store.add(absolute_paths(it, full.base_dir))
        store.finish()
        shards.append(tmp_path / name / "results.json")
    a, b = shards
    r = _cli("report", "merge", a, b, "--out", tmp_path / "m", "--no-thumbnails")
    assert r.returncode == 0, r.stderr
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    assert len(merged["items"]) == 9 and len({it["id"] for it in merged["items"]}) == 9
    for it in merged["items"]:
        for p in it["paths"].values():
            assert (tmp_path / "m" / p).is_file()
    c = synthetic_results(9, tmp_path / "c", image_size=32, seed=2)  # same ids, other verdicts
    r = _cli("report", "merge", a, c, "--out", tmp_path / "m2")
    assert r.returncode == 2 and "differs between" in r.stderr and "Traceback" not in r.stderr
    r = _cli("report", "merge", a)
    assert r.returncode == 2 and "--out" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = _cli("report", bad)
    assert r.returncode == 2 and str(bad) in r.stderr and "line 1, column 2" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # another Python process
def test_report_package_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import parity.report, parity.commands.report; "
            "import parity.report.html, parity.report.synthetic; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['torch']"  # only the None shim itself


def test_thumbnail_budget_and_runner_made_thumbnails(tmp_path):
    from PIL import Image

    from parity.report.html import ensure_thumbnail

    res = load(synthetic_results(12, tmp_path / "run", image_size=48))
    out = tmp_path / "out"
    paths = write_report(res, out, thumb_budget_s=0.0)  # budget spent at once: no new thumbnails
    blob = report_json_blob(paths.index.read_text())
    assert all(not any(it.get("t", {}).values()) for it in blob["items"])
    assert all(it["u"]["preview"] for it in blob["items"])  # cards fall back to the full image
    # a runner makes thumbnails as it writes images (here: from the PIL image it holds)
    first = res.items[0]
    src = res.base_dir / first["paths"]["preview"]
    with Image.open(src) as im:
        im.load()
        name = ensure_thumbnail(src, out, image=im)
    assert name and name.endswith("_48x48.jpg") and (out / "thumbs" / name).is_file()
    assert ensure_thumbnail(src, out) == name  # found, not made again
    blob = report_json_blob(write_report(res, out, thumb_budget_s=0.0).index.read_text())
    got = {it["id"]: it.get("t", {}).get("preview") for it in blob["items"]}
    assert got[first["id"]] == f"thumbs/{name}"
    assert sum(v is not None for v in got.values()) == 1
    # without a budget every image gets one, and a rebuild finds them all cached
    blob = report_json_blob(write_report(res, out, thumb_budget_s=None).index.read_text())
    n_images = sum(len(it["u"]) for it in blob["items"])
    assert sum(1 for it in blob["items"] for v in it.get("t", {}).values() if v) == n_images
    assert len(list((out / "thumbs").iterdir())) == n_images


def test_copy_images_makes_a_movable_zippable_report(tmp_path):
    import zipfile

    res = load(synthetic_results(8, tmp_path / "run", image_size=32, hostile=True))
    out = tmp_path / "out"
    write_report(res, out, copy_images=True)
    archive = tmp_path / "report.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in out.rglob("*"):
            z.write(p, p.relative_to(out))
    moved = tmp_path / "elsewhere" / "unzipped"
    with zipfile.ZipFile(archive) as z:
        z.extractall(moved)
    blob = report_json_blob((moved / "index.html").read_text())
    n = 0
    for it in blob["items"]:
        for url in list(it.get("u", {}).values()) + [t for t in it.get("t", {}).values() if t]:
            target = (moved / unquote(url)).resolve()
            assert moved.resolve() in target.parents and target.is_file(), url
            n += 1
    assert n > 8
    assert all(re.fullmatch(r"[0-9a-f]{24}\.(jpg|png)", p.name) for p in (out / "images").iterdir())


def test_copy_images_copies_only_images_this_run_could_have_made(tmp_path, caplog):
    """results.json is input: paths in it that point outside the run (or at non-images) are never copied
    (issue 17, finding 7)."""
    import logging

    res = load(synthetic_results(3, tmp_path / "run", image_size=32))
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    fake_png = tmp_path / "run" / "renders" / "not_an_image.png"   # inside the run, but not an image
    fake_png.parent.mkdir(exist_ok=True)
    fake_png.write_text("hello")
    outside_png = tmp_path / "elsewhere.png"                     # an image, but nothing this run made
    from PIL import Image

    Image.new("RGB", (8, 8), (1, 2, 3)).save(outside_png)
    hostile = {"/etc/passwd": "preview", str(secret): "render", str(fake_png): "heatmap_diff",
               str(outside_png): "render"}
    items = []
    for it, (path, key) in zip(res.items * 2, hostile.items()):
        it = dict(it, id=f"{it['id']}-{key}", paths=dict(it["paths"], **{key: path}))
        items.append(it)
    res.items[:] = items
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="parity"):
        write_report(res, out, copy_images=True)
    copied = [p.read_bytes() for p in (out / "images").iterdir()]
    assert copied and not any(b"root:" in c or c in (b"hello", outside_png.read_bytes()) for c in copied)
    for path in hostile:
        assert f"{path}: not copied" in caplog.text, path
