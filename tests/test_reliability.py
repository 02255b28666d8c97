"""Reliability and security (issue 9): the bad-input catalogue through `parity run` / `parity diff`, unsafe files,
report confinement and escaping, the determinism guard. Crash safety (SIGKILL + --resume) is in
test_reliability_kill.py. Every bad input must give one line naming the file and the problem (no traceback),
and the other items / cases must still produce results."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from parity.cli import main

PROMPTS = ["a cat", "a dog --seed 7", "[trigger] a tree"]
STEP = 100


# ----------------------------------------------------------------------------------------------- fixtures
def write_job(job_dir: Path, base: Path, prompts=PROMPTS, *, engine=None) -> Path:
    """A tiny AI Toolkit job (32 px, 2 steps, fp32) with a LoRA checkpoint at step 100 and its previews."""
    import torch
    from PIL import Image

    from parity.demo import demo_config
    from parity.engine import Engine
    from parity.tiny import TRANSFORMER_CONFIG, make_lora, save_aitk_lora
    from parity.job import checkpoint_filename, load_job
    from parity.job.layout import write_config_copy, write_preview

    cfg = demo_config(job_dir.parent)
    cfg["config"]["name"] = job_dir.name
    cfg["config"]["process"][0]["sample"].update(width=32, height=32, sample_steps=2, prompts=list(prompts))
    cfg["config"]["process"][0]["train"]["steps"] = 200
    write_config_copy(job_dir, cfg)
    sd = make_lora(TRANSFORMER_CONFIG, seed=7, strength=1.0, dtype=torch.float32)
    save_aitk_lora(job_dir / checkpoint_filename(job_dir.name, STEP), sd, step=STEP, name=job_dir.name)
    job = load_job(job_dir)
    engine = engine or Engine(base, device="cpu")
    samples = job.resolved_samples()
    app = job.lora_application(samples)
    for s in samples:
        spec = job.render_spec(s, job.checkpoint_for(STEP), app).spec
        write_preview(job.samples_dir, Image.fromarray(engine.render(spec).image), ms=1000 + s.index, step=STEP,
                      index=s.index)
    return job_dir


@pytest.fixture(scope="session")
def good_job(tiny_model_dir, tmp_path_factory) -> Path:
    return write_job(tmp_path_factory.mktemp("reljob") / "relj", tiny_model_dir)


def copy_job(good_job: Path, dest: Path, name: str | None = None) -> Path:
    out = dest / (name or good_job.name)
    shutil.copytree(good_job, out)
    return out


def write_case(folder: Path, name: str, body: dict | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    if isinstance(body, dict):
        import yaml

        body = yaml.safe_dump(dict({"name": name}, **body), sort_keys=False)
    path.write_text(body)
    return path


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("parity: error:")]


def assert_clean(out: str, err: str) -> None:
    assert "Traceback" not in out + err


def load_results(out_dir: Path):
    from parity.report import load

    return load(out_dir)


def run_cases(capsys, tmp_path: Path, cases_dir: Path, *extra) -> tuple[int, str, str, dict]:
    out = tmp_path / "out"
    rc, so, se = cli(capsys, "run", cases_dir, "--out", out, "--no-attribution", *extra)
    assert_clean(so, se)
    return rc, so, se, load_results(out).by_id()


def good_case(cases: Path, good_job: Path, base: Path) -> None:
    write_case(cases, "good", {"job": str(good_job), "base_model": str(base), "steps": STEP})


def assert_good_items(items: dict) -> None:
    good = {k: v for k, v in items.items() if k.startswith("good[")}
    assert sorted(good) == [f"good[step{STEP}-p{i}]" for i in range(len(PROMPTS))]
    assert all(v["tier"] == "EXACT" and v["passed"] for v in good.values()), good


# ----------------------------------------------------------------------------------------------- job configs
BAD_CONFIGS = {
    # name: (config.yaml text transform, expected fragments of the message)
    "malformed-yaml": (lambda t: t.replace("sample:", "sample: [unclosed", 1), ["YAML at line", "column"]),
    "no-sample": (lambda t: _drop_key(t, "sample"), ["no `sample` block"]),
    "flux1": (lambda t: t.replace("arch: flux2", "arch: flux").replace("FLUX.2-dev", "FLUX.1-dev"), ["FLUX.1"]),
    "no-prompts": (lambda t: _drop_key(t, "prompts", sub="sample"), ["no prompts"]),
    "python-tag": (lambda t: "!!python/object/apply:os.system ['echo pwned']\n", ["python/object"]),
    # out-of-range values (issue 17 finding 1): refused at the edge, naming the key, never a crash deep inside
    "steps-0": (lambda t: _set_sample(t, sample_steps=0), ["sample_steps 0 is outside 1..1000"]),
    "steps-1e9": (lambda t: _set_sample(t, sample_steps=10**9), ["sample_steps 1000000000 is outside"]),
    "width-100000": (lambda t: _set_sample(t, width=100000), ["width 100000 is outside 16..4096"]),
    "pixels": (lambda t: _set_sample(t, width=4096, height=4096 + 64), ["height 4160 is outside"]),
    "guidance-nan": (lambda t: _set_sample(t, guidance_scale=float("nan")), ["guidance_scale nan is outside"]),
}


def _set_sample(text: str, **values) -> str:
    import yaml

    data = yaml.safe_load(text)
    data["config"]["process"][0]["sample"].update(values)
    return yaml.safe_dump(data, sort_keys=False)


def _drop_key(text: str, key: str, sub: str | None = None) -> str:
    import yaml

    data = yaml.safe_load(text)
    proc = data["config"]["process"][0]
    (proc[sub] if sub else proc).pop(key)
    return yaml.safe_dump(data, sort_keys=False)


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_bad_job_config_one_line_and_other_case_runs(kind, capsys, tmp_path, good_job, tiny_model_dir):
    transform, fragments = BAD_CONFIGS[kind]
    bad = copy_job(good_job, tmp_path, "badjob")
    cfg = bad / "config.yaml"
    cfg.write_text(transform(cfg.read_text()))
    # parity diff on the bad job alone: exit 2, one line naming config.yaml and the problem
    rc, so, se = cli(capsys, "diff", bad, "--base-model", tiny_model_dir, "--out", tmp_path / "d", "--no-attribution")
    assert rc == 2 and not so.strip()
    assert_clean(so, se)
    lines = error_lines(se)
    assert len(lines) == 1 and str(cfg) in lines[0], se
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    # beside a good case: the good items run, the bad case is one ERROR entry with the same message
    cases = tmp_path / "cases"
    good_case(cases, good_job, tiny_model_dir)
    write_case(cases, "bad", {"job": str(bad), "base_model": str(tiny_model_dir)})
    rc, so, se, items = run_cases(capsys, tmp_path, cases)
    assert rc == 1
    assert_good_items(items)
    assert items["bad[load]"]["tier"] == "ERROR" and str(cfg) in items["bad[load]"]["error"]
    assert "bad[load]" in so and fragments[0] in so


def test_malformed_json_config_line_and_column(capsys, tmp_path, good_job, tiny_model_dir):
    bad = copy_job(good_job, tmp_path, "jsonjob")
    (bad / "config.yaml").unlink()
    (bad / ".job_config.json").write_text('{"job": "extension",\n  "config": {"name": "x",, }}')
    rc, so, se = cli(capsys, "diff", bad, "--base-model", tiny_model_dir, "--out", tmp_path / "d")
    assert rc == 2 and "Traceback" not in se
    line = error_lines(se)[0]
    assert ".job_config.json" in line and "line 2" in line and "column" in line, line


def test_verbose_reraises(capsys, tmp_path, good_job, tiny_model_dir):
    from parity.errors import ParityError

    bad = copy_job(good_job, tmp_path, "v")
    (bad / "config.yaml").write_text("job: [\n")
    with pytest.raises(ParityError):
        main(["--verbose", "diff", str(bad), "--base-model", str(tiny_model_dir), "--out", str(tmp_path / "d")])


def test_step_without_previews_lists_existing(capsys, tmp_path, good_job, tiny_model_dir):
    rc, so, se = cli(capsys, "diff", good_job, "--step", 500, "--base-model", tiny_model_dir, "--out", tmp_path / "d")
    assert rc == 2 and "Traceback" not in se
    line = error_lines(se)[0]
    assert "no previews at step 500" in line and f"step labels found: {STEP}" in line and "samples" in line


# ----------------------------------------------------------------------------------------------- previews
def test_truncated_corrupt_missing_previews_only_those_items_error(capsys, tmp_path, good_job, tiny_model_dir):
    job = copy_job(good_job, tmp_path)
    files = sorted((job / "samples").glob("*.jpg"))
    assert len(files) == 3
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])           # p1 truncated
    files[2].write_bytes(b"\xff\xd8\xff\xe0 garbage " * 20)  # p2 corrupt (JPEG magic, then junk)
    out = tmp_path / "out"
    rc, so, se = cli(capsys, "diff", job, "--base-model", tiny_model_dir, "--out", out, "--no-attribution")
    assert rc == 1 and "Traceback" not in so + se
    items = load_results(out).by_id()
    assert items["relj[step100-p0]"]["tier"] == "EXACT"
    p1, p2 = items["relj[step100-p1]"], items["relj[step100-p2]"]
    assert p1["tier"] == "ERROR" and str(files[1]) in p1["error"] and "truncated" in p1["error"], p1["error"]
    assert p2["tier"] == "ERROR" and str(files[2]) in p2["error"]
    assert "cannot read image" in p2["error"] or "not a readable image" in p2["error"], p2["error"]
    assert "\n" not in p1["error"] + p2["error"]

    # a preview file deleted: that item is an ERROR naming the samples folder and the indices that exist
    files[1].unlink()
    out2 = tmp_path / "out2"
    rc, so, se = cli(capsys, "diff", job, "--base-model", tiny_model_dir, "--out", out2, "--no-attribution")
    items = load_results(out2).by_id()
    assert rc == 1 and items["relj[step100-p0]"]["tier"] == "EXACT"
    err = items["relj[step100-p1]"]["error"]
    assert items["relj[step100-p1]"]["tier"] == "ERROR" and str(job / "samples") in err
    assert "no preview for step 100 index 1" in err and "[0, 2]" in err, err


def test_preview_of_unexpected_size(capsys, tmp_path, good_job, tiny_model_dir):
    from PIL import Image

    job = copy_job(good_job, tmp_path)
    f = sorted((job / "samples").glob("*.jpg"))[0]
    Image.open(f).resize((48, 40)).save(f)
    out = tmp_path / "out"
    rc, so, se = cli(capsys, "diff", job, "--base-model", tiny_model_dir, "--out", out, "--no-attribution",
                     "--determinism-check", "off")
    items = load_results(out).by_id()
    p0 = items["relj[step100-p0]"]
    assert p0["tier"] not in ("EXACT", "NEAR") and p0["size_mismatch"], p0
    assert "48" in json.dumps(p0["size_mismatch"]) and "40" in json.dumps(p0["size_mismatch"])
    assert items["relj[step100-p1]"]["tier"] == "EXACT" and items["relj[step100-p2]"]["tier"] == "EXACT"


# ----------------------------------------------------------------------------------------------- weights
def _foreign_lora(kind: str, path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    r = torch.zeros(4, 8)
    keys = {
        "flux1": [f"lora_unet_double_blocks_{i}_img_attn_qkv.lora_down.weight" for i in range(3)],
        "sdxl": [f"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "lora_te1_text_model_x.alpha"],
        "qwen": [f"transformer.transformer_blocks.{i}.img_mod.1.lora_A.weight" for i in range(3)],
    }[kind]
    save_file({k: r.clone() for k in keys}, str(path))
    return path


def _shape_mismatch_lora(path: Path) -> Path:
    import torch

    from parity.tiny import TRANSFORMER_CONFIG, bfl_lora_target_shapes, make_lora, save_aitk_lora

    shapes = {k: (o, i * 2) for k, (o, i) in bfl_lora_target_shapes(TRANSFORMER_CONFIG).items()}  # wrong width
    return save_aitk_lora(path, make_lora(shapes, seed=1, dtype=torch.float32), step=1, name="x")


def _rank_mismatch_lora(path: Path) -> Path:
    import torch

    from parity.tiny import TRANSFORMER_CONFIG, make_lora, save_aitk_lora

    sd = make_lora(TRANSFORMER_CONFIG, seed=1, dtype=torch.float32)
    k = next(k for k in sd if k.endswith("lora_A.weight"))
    sd[k] = torch.zeros(3, sd[k].shape[1])
    return save_aitk_lora(path, sd, step=1, name="x")


def _zero_match_lora(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"diffusion_model.not_a_block.0.lora_A.weight": torch.zeros(4, 8),
               "diffusion_model.not_a_block.0.lora_B.weight": torch.zeros(8, 4)}, str(path))
    return path


def _truncated(path: Path, src: Path) -> Path:
    data = src.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


BAD_LORAS = {
    # name: (builder(path, good_job), expected fragments)
    "truncated": (lambda p, j: _truncated(p, next(j.glob("*.safetensors"))), ["not a readable safetensors"]),
    "flux1": (lambda p, j: _foreign_lora("flux1", p), ["FLUX.1", "3 key(s)"]),
    "sdxl": (lambda p, j: _foreign_lora("sdxl", p), ["SDXL", "2 key(s)"]),
    "qwen": (lambda p, j: _foreign_lora("qwen", p), ["Qwen-Image", "3 module(s)"]),
    "width": (lambda p, j: _shape_mismatch_lora(p), ["does not fit"]),
    "rank": (lambda p, j: _rank_mismatch_lora(p), ["rank mismatch"]),
    "zero-match": (lambda p, j: _zero_match_lora(p), ["not FLUX.2 transformer modules"]),
    "pickle": (lambda p, j: (p.with_suffix(".ckpt").write_bytes(b"\x80\x04K\x01."), p.with_suffix(".ckpt"))[1],
               ["pickle", "arbitrary code", "safetensors"]),
    "missing": (lambda p, j: p.with_name("nope.safetensors"), ["no such LoRA file"]),
}


@pytest.mark.parametrize("kind", sorted(BAD_LORAS))
def test_bad_lora_case_is_error_other_case_runs(kind, capsys, tmp_path, good_job, tiny_model_dir):
    builder, fragments = BAD_LORAS[kind]
    lora = builder(tmp_path / f"{kind}.safetensors", good_job)
    cases = tmp_path / "cases"
    good_case(cases, good_job, tiny_model_dir)
    write_case(cases, "bad", {"job": str(good_job), "base_model": str(tiny_model_dir), "steps": STEP,
                              "lora": str(lora)})
    rc, so, se, items = run_cases(capsys, tmp_path, cases)
    assert rc == 1
    assert_good_items(items)
    bad = {k: v for k, v in items.items() if k.startswith("bad[")}
    assert bad and all(v["tier"] == "ERROR" for v in bad.values())
    for v in bad.values():
        msg = v["error"]
        assert str(lora) in msg and "\n" not in msg and "Traceback" not in msg, msg
        for f in fragments:
            assert f in msg, (f, msg)


@pytest.mark.parametrize("kind,fragment", [
    ("evil.pt", "pickle-based weights are refused"),
    ("pickled.safetensors", "not a safetensors file"),  # a pickle under a safetensors name: refused by its header
    ("unreadable.safetensors", "cannot read"),
    ("dangling.safetensors", "no such LoRA file"),
    ("fifo.safetensors", "not a regular file"),  # never opened: reading a FIFO would hang
])
def test_bad_lora_given_to_diff_is_a_usage_error_before_any_model_loads(kind, fragment, capsys, tmp_path,
                                                                        good_job, tiny_model_dir, monkeypatch):
    import os

    ck = tmp_path / kind
    if kind.startswith("fifo"):
        os.mkfifo(ck)
    elif kind.startswith("dangling"):
        ck.symlink_to(tmp_path / "gone.safetensors")
    else:
        ck.write_bytes(b"\x80\x04K\x01.")
    if kind.startswith("unreadable"):
        if os.geteuid() == 0:
            pytest.skip("root reads a file of mode 000")
        ck.chmod(0)
    from parity.engine import Engine

    monkeypatch.setattr(Engine, "__init__", lambda *a, **k: pytest.fail("a model was loaded"))
    out = tmp_path / "out"
    rc, so, se = cli(capsys, "diff", good_job, "--lora", ck, "--base-model", tiny_model_dir, "--out", out,
                     "--no-attribution")
    assert rc == 2 and "Traceback" not in so + se
    assert error_lines(se) and fragment in se and str(ck) in se, se
    assert not out.exists()  # refused before the run started


def _tiny_copy(tiny: Path, dest: Path) -> Path:
    shutil.copytree(tiny, dest)
    return dest


@pytest.mark.parametrize("kind", ["truncated-transformer", "missing-vae", "missing-folder"])
def test_bad_base_model_case_is_error_other_case_runs(kind, capsys, tmp_path, good_job, tiny_model_dir):
    base = tmp_path / "base"
    if kind != "missing-folder":
        _tiny_copy(tiny_model_dir, base)
    if kind == "truncated-transformer":
        for f in (base / "transformer").glob("*.safetensors"):
            _truncated(f, f)
        fragments = ["safetensors", "transformer"]
    elif kind == "missing-vae":
        shutil.rmtree(base / "vae")
        (base / "ae.safetensors").unlink()
        fragments = ["vae", str(base)]
    else:
        fragments = ["base model", str(base)]
    cases = tmp_path / "cases"
    good_case(cases, good_job, tiny_model_dir)
    write_case(cases, "bad", {"job": str(good_job), "base_model": str(base), "steps": STEP})
    rc, so, se, items = run_cases(capsys, tmp_path, cases)
    assert rc == 1
    assert_good_items(items)
    bad = {k: v for k, v in items.items() if k.startswith("bad[")}
    assert bad and all(v["tier"] == "ERROR" for v in bad.values())
    for v in bad.values():
        assert "\n" not in v["error"]
        for f in fragments:
            assert f in v["error"], (f, v["error"])


def test_nan_render_is_error_with_step(capsys, tmp_path, good_job, tiny_model_dir):
    import torch

    from parity.tiny import TRANSFORMER_CONFIG, make_lora, save_aitk_lora

    sd = make_lora(TRANSFORMER_CONFIG, seed=3, dtype=torch.float32)
    # finite in the file (so parse_lora accepts it) but overflowing once multiplied: the render itself goes inf
    sd = {k: torch.full_like(v, 3e38) if k.endswith("lora_B.weight") else v for k, v in sd.items()}
    lora = save_aitk_lora(tmp_path / "inf.safetensors", sd, step=1, name="inf")
    cases = tmp_path / "cases"
    good_case(cases, good_job, tiny_model_dir)
    write_case(cases, "bad", {"job": str(good_job), "base_model": str(tiny_model_dir), "steps": STEP,
                              "lora": str(lora)})
    rc, so, se, items = run_cases(capsys, tmp_path, cases)
    assert rc == 1
    assert_good_items(items)
    bad = [v for k, v in items.items() if k.startswith("bad[")]
    assert len(bad) == 3
    for v in bad:
        assert v["tier"] == "ERROR" and "NaN/inf at step 0" in v["error"], v["error"]


@pytest.mark.parametrize("kind", ["nan", "int8", "bool", "complex"])
def test_a_lora_file_with_bad_tensors_names_file_and_key(tmp_path, kind):
    import torch

    from parity.engine.lora import parse_lora
    from parity.errors import ModelError
    from parity.tiny import TRANSFORMER_CONFIG, make_lora, save_aitk_lora

    sd = make_lora(TRANSFORMER_CONFIG, seed=3, dtype=torch.float32)
    key = sorted(k for k in sd if k.endswith("lora_A.weight"))[0]
    v = sd[key]
    sd[key] = {"nan": v.clone().index_fill_(1, torch.tensor([0]), math.nan), "int8": v.to(torch.int8),
               "bool": v > 0, "complex": v.to(torch.complex64)}[kind]
    lora = save_aitk_lora(tmp_path / f"{kind}.safetensors", sd, step=1, name=kind)
    with pytest.raises(ModelError) as e:
        parse_lora(lora)
    msg = str(e.value)
    assert f"{kind}.safetensors" in msg and key in msg
    assert ("NaN/inf" in msg) if kind == "nan" else ("has dtype" in msg)


# ----------------------------------------------------------------------------------------------- case files
def test_empty_cases_folder(capsys, tmp_path):
    (tmp_path / "cases").mkdir()
    rc, so, se = cli(capsys, "run", tmp_path / "cases", "--out", tmp_path / "o")
    assert rc == 2 and "Traceback" not in se
    assert error_lines(se) == [f"parity: error: {tmp_path / 'cases'}: no case files (*.yaml) in this folder"]


def test_missing_cases_folder(capsys, tmp_path):
    rc, so, se = cli(capsys, "run", tmp_path / "nope", "--out", tmp_path / "o")
    assert rc == 2 and error_lines(se) == [f"parity: error: {tmp_path / 'nope'}: no such case file or folder"]


@pytest.mark.parametrize("text,fragments", [
    ("job: [unclosed\n", ["malformed YAML at line 2", "column"]),
    ("!!python/object/apply:os.system ['touch /tmp/parity-pwned']\n", ["python/object"]),
    (b"\xff\xfe\x00bad", ["cannot read case file"]),
    ("job: x\nbogus: 1\n", ["bogus (line 2): unknown key"]),
    ("job: x\ndevice: cuda\n", ["device (line 2): not a case key: the render device is chosen per run"]),
])
def test_bad_case_file_reported_others_run(text, fragments, capsys, tmp_path, good_job, tiny_model_dir):
    cases = tmp_path / "cases"
    good_case(cases, good_job, tiny_model_dir)
    bad = cases / "bad.yaml"
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    rc, so, se, items = run_cases(capsys, tmp_path, cases)
    assert rc == 1
    assert_good_items(items)
    lines = error_lines(so + se)
    assert len(lines) == 1 and str(bad) in lines[0], so + se
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert not Path("/tmp/parity-pwned").exists()


def test_case_paths_resolved_relative_to_case_file_and_reported(capsys, tmp_path, good_job, tiny_model_dir):
    cases = tmp_path / "deep" / "cases"
    good_case(cases, good_job, tiny_model_dir)
    write_case(cases, "rel", {"job": "../jobs/missing", "base_model": str(tiny_model_dir)})
    rc, so, se, items = run_cases(capsys, tmp_path, cases)
    assert_good_items(items)
    msg = items["rel[load]"]["error"]
    assert str((tmp_path / "deep" / "jobs" / "missing").resolve()) in msg and "../" not in msg, msg


def test_interrupted_run_needs_resume(capsys, tmp_path, good_job, tiny_model_dir):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "results.jsonl").write_text('{"type": "run", "schema": "parity.results/1", "run": {}}\n')
    rc, so, se = cli(capsys, "diff", good_job, "--base-model", tiny_model_dir, "--out", out)
    assert rc == 2 and "Traceback" not in se
    line = error_lines(se)[0]
    assert str(out / "results.jsonl") in line and "--resume" in line


# ----------------------------------------------------------------------------------------------- report safety
HOSTILE = '<script>alert("p")</script><img src=x onerror=alert(1)> & "q" \'s'


def test_hostile_prompt_and_names_escaped_and_confined(capsys, tmp_path, tiny_model_dir):
    jobs = tmp_path / "jobs"
    job = write_job(jobs / '<b onmouseover=alert(3)>evil', tiny_model_dir, prompts=[HOSTILE])
    out = tmp_path / "report"
    rc, so, se = cli(capsys, "diff", job, "--base-model", tiny_model_dir, "--out", out, "--no-attribution")
    assert rc == 0, so + se
    html = (out / "index.html").read_text()
    for raw in ("<script>alert", "<img src=x", "<b onmouseover"):
        assert raw not in html, raw
    assert "&lt;script&gt;" in html or "\\u003cscript" in html
    # every file the run wrote is inside the chosen folder, with a safe name
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents and jobs not in p.parents]
    assert outside == []
    for p in out.rglob("*"):
        assert "<" not in p.name and ">" not in p.name


def test_safe_name_never_escapes(tmp_path):
    from parity.ids import safe_name

    for text in ["../../etc/passwd", "..", "/abs/x", "a\\..\\b", "x" * 400, "\x00", "name[step1-p0]"]:
        name = safe_name(text)
        assert name and "/" not in name and "\\" not in name and name not in (".", "..") and len(name) <= 120
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    assert safe_name("x" * 300) != safe_name("x" * 301)


# ----------------------------------------------------------------------------------------------- determinism
def _noisy_second_render(monkeypatch):
    """Engine.render adds noise to every second render of the same spec (a nondeterministic machine)."""
    import numpy as np

    from parity.engine import Engine

    real = Engine.render
    seen: dict = {}

    def render(self, spec, **kw):
        res = real(self, spec, **kw)
        key = repr(spec)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] % 2 == 0:
            img = res.image.astype(np.int16)
            img[0, 0, 0] = (img[0, 0, 0] + 9) % 256
            res.image = img.astype(np.uint8)
        return res

    monkeypatch.setattr(Engine, "render", render)
    return seen


def test_determinism_guard_flags_nondeterministic_machine(capsys, tmp_path, good_job, tiny_model_dir, monkeypatch):
    seen = _noisy_second_render(monkeypatch)
    out = tmp_path / "out"
    # --set sample_steps=1: every item is below its gate, so auto mode checks each one
    rc, so, se = cli(capsys, "diff", good_job, "--base-model", tiny_model_dir, "--out", out, "--no-attribution",
                     "--set", "sample_steps=1")
    assert rc == 1
    items = load_results(out).items
    assert len(items) == 3 and all(sum(seen.values()) == 6 for _ in [0])
    for it in items:
        assert it["tier"] != "EXACT" and it["nondeterministic"] is True
        assert it["determinism"]["max_abs"] == 9
        assert any("nondeterministic machine" in r for r in it["fail_reasons"])


def test_determinism_guard_auto_skips_passing_items_and_off(capsys, tmp_path, good_job, tiny_model_dir,
                                                            monkeypatch):
    seen = _noisy_second_render(monkeypatch)
    out = tmp_path / "out"
    rc, so, se = cli(capsys, "diff", good_job, "--base-model", tiny_model_dir, "--out", out, "--no-attribution")
    assert rc == 0 and sum(seen.values()) == 3  # all EXACT: no second render in auto mode
    assert all("nondeterministic" not in it for it in load_results(out).items)
    seen.clear()
    rc, so, se = cli(capsys, "diff", good_job, "--base-model", tiny_model_dir, "--out", tmp_path / "o2",
                     "--no-attribution", "--set", "sample_steps=1", "--determinism-check", "off")
    assert rc == 1 and sum(seen.values()) == 3


def test_determinism_guard_deterministic_engine_passes_check(capsys, tmp_path, good_job, tiny_model_dir):
    out = tmp_path / "out"
    rc, so, se = cli(capsys, "diff", good_job, "--base-model", tiny_model_dir, "--out", out, "--no-attribution",
                     "--determinism-check", "always")
    assert rc == 0
    for it in load_results(out).items:
        assert it["nondeterministic"] is False and it["determinism"] == {"checked": True, "identical": True,
                                                                         "max_abs": 0}
