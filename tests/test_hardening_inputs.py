"""Issue 35's file and command rows: case names, doctor, init, nested JSON, manifests, reference images, the
export folder, the kept copy of an external render, and the weaker points (each test names its row).

Jobs are the repository's demo (`parity demo --prepare`: a tiny FLUX.2 and a tiny [klein] with previews)."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from parity.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def demo():
    from parity.demo import build_demo

    return build_demo(ROOT / "demo")


def _case(path: Path, name: str, job: Path, base: Path, extra: str = "") -> Path:
    path.write_text(f"name: {name}\njob: {job}\nbase_model: {base}\nsteps: latest\n{extra}")
    return path


def _ids(job: Path, capsys) -> list[str]:
    assert main(["plan", str(job), "--json"]) == 0
    return [r["id"] for r in json.loads(capsys.readouterr().out)]


# ------------------------------------------------------------------------------------ row 3: duplicate names
def test_two_case_files_with_one_name_are_a_usage_error_before_any_render(demo, tmp_path, capsys):
    a = _case(tmp_path / "a.yaml", "same", demo.job, demo.base_model)
    b = _case(tmp_path / "b.yaml", "same", demo.job, tmp_path / "no-such-base")   # the broken one
    out = tmp_path / "out"
    assert main(["run", str(a), str(b), "--out", str(out), "--no-attribution"]) == 2
    err = capsys.readouterr().err
    assert "two case files are named 'same'" in err and str(a) in err and str(b) in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()    # nothing planned, rendered or written


def test_the_pytest_plugin_refuses_two_case_files_with_one_name(demo, pytester):
    cases = pytester.mkdir("cases")
    _case(cases / "a.yaml", "same", demo.job, demo.base_model)
    _case(cases / "b.yaml", "same", demo.job, demo.base_model)
    result = pytester.runpytest_subprocess("cases", "-p", "no:cacheprovider")
    assert result.ret == 2
    text = result.stdout.str()
    assert "two case files are named 'same'" in text and "a.yaml" in text and "b.yaml" in text
    assert "passed" not in text and "1 error" in text


def test_a_case_file_named_twice_on_the_command_line_runs_once(tmp_path):
    from parity.cases import find_cases

    (tmp_path / "a.yaml").write_text("name: a\n")
    assert find_cases([tmp_path, tmp_path / "a.yaml"]) == [tmp_path / "a.yaml"]


# ------------------------------------------------------------------------------------ weaker: case-file errors
def test_a_broken_case_file_is_on_stderr_and_an_error_item_in_results_and_junit(demo, tmp_path, capsys):
    good = _case(tmp_path / "good.yaml", "good", demo.job, demo.base_model)
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    out = tmp_path / "out"
    assert main(["run", str(good), str(tmp_path / "broken.yaml"), "--out", str(out), "--no-attribution",
                 "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "broken.yaml" in captured.err and "broken.yaml" not in captured.out.split("report:")[0].split("\n")[0]
    items = {it["id"]: it for it in json.loads((out / "results.json").read_text())["items"]}
    assert items["broken[load]"]["tier"] == "ERROR" and "broken.yaml" in items["broken[load]"]["error"]
    assert "broken[load]" in (out / "junit.xml").read_text()


# ------------------------------------------------------------------------------------------- rows 7, 8: doctor
def test_doctor_fails_a_klein_job_on_a_flux2_dev_base(demo, tmp_path, capsys):
    case = _case(tmp_path / "k.yaml", "k", demo.klein_job, demo.base_model)
    assert main(["doctor", str(case), "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  k: architecture" in out and "'flux2' but the job trained 'flux2_klein_4b'" in out
    assert "NOT READY" in out


def test_doctor_on_a_case_whose_job_is_missing_exits_2_naming_the_case_file(tmp_path, capsys):
    case = tmp_path / "m.yaml"
    case.write_text(f"name: m\njob: {tmp_path / 'nope'}\n")
    assert main(["doctor", str(case), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(case) in err and "no such job folder" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- row 9: init
@pytest.mark.parametrize("folder", ["run #2", "a: b", "x\nbudget: -5", "'quoted'", "- dash"])
def test_init_writes_paths_the_yaml_library_reads_back(demo, tmp_path, monkeypatch, folder):
    import shutil

    from parity.cases import load_case

    job = tmp_path / "jobs" / folder
    shutil.copytree(demo.job, job)
    base = tmp_path / f"base #{folder}"
    out = tmp_path / "cases" / "c.yaml"
    assert main(["init", str(job), "--out", str(out), "--base-model", str(base)]) == 0
    case = load_case(out)
    assert case.job == job.resolve() and case.base_model == str(base) and case.budget != -5


# -------------------------------------------------------------------------------- row 10: JSON nested deeply
def test_a_deeply_nested_manifest_is_exit_2(demo, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["diff", str(demo.job), "--renders", str(deep), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "deep.json" in err and "nested too deeply" in err and "RecursionError" not in err


def test_a_deeply_nested_results_file_is_exit_2_in_merge_and_report(tmp_path, capsys):
    deep = tmp_path / "results.json"
    deep.write_text('{"schema": "parity.results/1", "items": ' + "[" * 100_000 + "]" * 100_000 + "}")
    other = tmp_path / "b" / "results.json"
    other.parent.mkdir()
    other.write_text('{"schema": "parity.results/1", "run": {}, "items": []}')
    assert main(["report", "merge", str(deep), str(other), "--out", str(tmp_path / "m")]) == 2
    assert "nested too deeply" in capsys.readouterr().err
    assert main(["report", str(deep), "--out", str(tmp_path / "r")]) == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_the_json_reader_limits_depth_and_size_and_names_the_file(tmp_path):
    from parity.errors import ConfigError
    from parity.jsonio import MAX_DEPTH, parse_json, read_json

    assert parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH, "x") is not None
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "x")
    with pytest.raises(ConfigError, match=r"^x: JSON of 11 bytes is over parity's limit of 10"):
        parse_json('"123456789"', "x", max_bytes=10)
    big = tmp_path / "big.json"
    big.write_text(" " * 100 + "1")
    with pytest.raises(ConfigError, match="big.json: file is 101 bytes"):
        read_json(big, max_bytes=100)


# ----------------------------------------------------------------------------- row 11: manifest id twice
def test_a_manifest_with_an_id_twice_is_refused_naming_the_id(demo, tmp_path, capsys):
    ids = _ids(demo.job, capsys)
    img = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(img)
    manifest = tmp_path / "m.json"
    manifest.write_text("{" + f'"{ids[0]}": "x.png", "{ids[0]}": "y.png"' + "}")
    assert main(["diff", str(demo.job), "--renders", str(manifest), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "m.json" in err and repr(ids[0]) in err and "twice" in err


# -------------------------------------------------------------------------- row 12: a bomb as reference image
def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (Pillow refuses it at open: no pixels needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) +
                     chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_reference_image_is_named(tmp_path):
    from parity.engine.refs import load_reference
    from parity.errors import InputFileError

    bomb = _png_header_only(tmp_path / "ref.png", 60_000, 60_000)
    with pytest.raises(InputFileError) as e:
        load_reference(bomb)
    assert str(e.value).startswith(f"{bomb}: reference image is too large to open safely")


# --------------------------------------------------------------------------- row 13: export through a symlink
def test_export_requests_replaces_a_planted_symlink_and_leaves_its_target(demo, tmp_path, capsys):
    from parity.external.export import render_stem

    ids = _ids(demo.job, capsys)
    out = tmp_path / "req"
    out.mkdir()
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (out / f"{render_stem(ids[0])}.json").symlink_to(outside)
    assert main(["plan", str(demo.job), "--export-requests", str(out)]) == 0
    assert outside.read_text() == "keep me"
    written = out / f"{render_stem(ids[0])}.json"
    assert not written.is_symlink() and json.loads(written.read_text())["id"] == ids[0]


# ----------------------------------------------- row 6 + weaker points: what is kept of an external render
def _sources(tmp_path: Path, folder: Path, item_id: str):
    from parity.external.sources import RenderSources

    src = RenderSources(pool=None, out_dir=tmp_path / "run")
    src.index(folder, [item_id])
    item = SimpleNamespace(id=item_id, case=SimpleNamespace(renders=folder), problem=None)
    return src, item


def test_a_png_with_a_huge_tail_is_kept_as_its_decoded_image(tmp_path, monkeypatch):
    from parity import limits

    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", 64 * 1024)   # the real budget is 256 MiB; same code path
    folder = tmp_path / "renders"
    folder.mkdir()
    png = folder / "case[step1-p0].png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(png)
    with png.open("ab") as f:
        f.write(os.urandom(256 * 1024))          # valid image, then a tail four times the budget
    src, item = _sources(tmp_path, folder, "case[step1-p0]")
    got = src.render(item)
    assert got.kept.stat().st_size < 64 * 1024 and got.kept.suffix == ".png"
    assert Image.open(got.kept).convert("RGB").tobytes() == got.image.tobytes()   # what was compared


def test_an_oversize_report_copy_is_refused_with_a_reason(tmp_path, monkeypatch):
    from parity import limits
    from parity.report.html import copyable_image

    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", 1024)
    run = tmp_path / "run"
    run.mkdir()
    big = run / "x.png"
    Image.new("RGB", (8, 8)).save(big)
    with big.open("ab") as f:
        f.write(b"\0" * 4096)
    assert "larger than parity's limit" in copyable_image("render", str(big), run)


@pytest.mark.parametrize("fmt,suffix", [("TIFF", ".png"), ("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp")])
def test_the_kept_copy_is_named_by_its_real_format(tmp_path, fmt, suffix):
    folder = tmp_path / "renders"
    folder.mkdir()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(folder / "i.png", fmt)   # every one named .png
    src, item = _sources(tmp_path, folder, "i")
    kept = src.render(item).kept
    assert kept.suffix == suffix and Image.open(kept).format == {"TIFF": "PNG"}.get(fmt, fmt)


@pytest.mark.parametrize("kind", ["dir", "fifo", "devzero"])
def test_a_folder_fifo_or_device_named_like_a_render_is_that_items_error(tmp_path, kind):
    from parity.errors import ParityError

    folder = tmp_path / "renders"
    folder.mkdir()
    target = folder / "i.png"
    {"dir": lambda: target.mkdir(), "fifo": lambda: os.mkfifo(target),
     "devzero": lambda: target.symlink_to("/dev/zero")}[kind]()
    src, item = _sources(tmp_path, folder, "i")
    with pytest.raises(ParityError) as e:
        src.render(item)
    assert str(target) in str(e.value) and ("directory" in str(e.value) or "not a regular file" in str(e.value))


def test_a_huge_manifest_id_is_cut_in_messages(tmp_path):
    from parity.external.sources import index_folder

    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"x" * 5_000_000: "a.png", "i": "a.png"}))
    idx = index_folder(manifest, ["i"])
    assert len(idx.extra) == 1 and len(idx.extra[0]) < 300
    assert len(idx.missing_message("y" * 5_000_000)) < 1000


# ------------------------------------------------------------------- weaker: the demo's two LoRAs must differ
def test_the_demo_dev_and_klein_loras_hold_different_tensors(demo):
    import torch
    from safetensors.torch import load_file

    dev = load_file(str(demo.job / f"{demo.job.name}.safetensors"))
    klein = load_file(str(demo.klein_job / f"{demo.klein_job.name}.safetensors"))
    shared = sorted(set(dev) & set(klein))
    assert shared and not all(torch.equal(dev[k], klein[k]) for k in shared)


def test_a_results_file_over_the_readers_limit_is_refused_unread(tmp_path, monkeypatch):
    from parity import jsonio
    from parity.errors import InputFileError
    from parity.report.results import load

    monkeypatch.setattr(jsonio, "MAX_READ_BYTES", 1000)
    doc = tmp_path / "results.json"
    doc.write_text('{"schema": "parity.results/1", "run": {}, "items": []}' + " " * 2000)
    with pytest.raises(InputFileError, match="results.json: file is 2054 bytes; parity reads results files of at"):
        load(doc)
