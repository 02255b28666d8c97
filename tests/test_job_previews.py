"""Preview index, format detection and checkpoint pairing on job folders laid out as AI Toolkit writes them
(reference §B): `{ms}__{step:09d}_{i}.{ext}`, `.tmp/` and `.thumbs/`, `{name}_{S:09d}.safetensors`,
`{name}.safetensors` for the final label, label 0 = baseline without LoRA."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from parity.errors import InputFileError
from parity.job import (
    checkpoint_filename,
    detect_format,
    estimate_jpeg_quality,
    load_job,
    parse_preview_filename,
    preview_filename,
)
from parity.job.layout import write_checkpoint, write_config_copy, write_preview


def config(name="mylora", steps=100, sample_extra=None, train_extra=None, first_sample=None):
    sample = {"sample_every": 50, "prompts": ["alpha", "beta"], **(sample_extra or {})}
    proc = {"type": "sd_trainer", "training_folder": "output",
            "model": {"arch": "flux2", "name_or_path": "black-forest-labs/FLUX.2-dev"},
            "train": {"steps": steps, **(train_extra or {})}, "network": {"type": "lora"}, "sample": sample}
    if first_sample:
        proc["first_sample"] = first_sample
    return {"job": "extension", "config": {"name": name, "process": [proc]}}


IMG = Image.new("RGB", (64, 64), (200, 120, 40))


def build(tmp_path, cfg, previews, checkpoints=(), final=False, name="mylora"):
    root = tmp_path / "output" / name
    write_config_copy(root, cfg)
    for ms, step, index, *ext in previews:
        write_preview(root / "samples", IMG, ms=ms, step=step, index=index, ext=ext[0] if ext else "jpg")
    for s in checkpoints:
        write_checkpoint(root, name, s)
    if final:
        write_checkpoint(root, name, final=True)
    return root


@pytest.mark.parametrize("name,expected", [
    ("1763563000704__000004000_0.jpg", (1763563000704, 4000, 0, "jpg")),   # the UI's own example
    ("5__000000000_12.png", (5, 0, 12, "png")),
    ("5__1000000000_1.webp", (5, 1000000000, 1, "webp")),                  # zfill(9) never truncates
    ("5__000000100_1.JPEG", (5, 100, 1, "JPEG")),
    ("5_000000100_1.jpg", None),                                           # single underscore
    ("5__00000100_1.jpg", None),                                           # 8 digits
    ("5__000000100_1.jpg.jpg", None),                                      # a thumbnail name
    ("5__000000100_1.gif", None),
    ("5__000000100_.jpg", None),
    ("५__000000100_1.jpg", None),                                          # non-ASCII digit
])
def test_parse_preview_filename(name, expected):
    got = parse_preview_filename(name)
    assert (None if got is None else (got.ms, got.step, got.index, got.ext)) == expected


def test_filename_helpers():
    assert preview_filename(1763563000704, 4000, 0, "jpg") == "1763563000704__000004000_0.jpg"
    assert checkpoint_filename("mylora", 250) == "mylora_000000250.safetensors"
    assert checkpoint_filename("mylora", final=True) == "mylora.safetensors"
    assert checkpoint_filename("mylora", 250, named_lora=True) == "mylora_LoRA_000000250.safetensors"


@pytest.mark.parametrize("quality", [1, 10, 49, 50, 51, 75, 90, 95, 100])
def test_jpeg_quality_matches_what_pillow_wrote(quality):
    buf = io.BytesIO()
    IMG.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        assert estimate_jpeg_quality(im.quantization) == (quality, True)


@pytest.mark.parametrize("subsampling,label", [(0, "4:4:4"), (1, "4:2:2"), (2, "4:2:0")])
def test_subsampling(tmp_path, subsampling, label):
    p = tmp_path / "x.jpg"
    IMG.save(p, "JPEG", quality=80, subsampling=subsampling)
    f = detect_format(p)
    assert (f.format, f.quality, f.quality_exact, f.subsampling, f.width, f.height) == ("JPEG", 80, True, label, 64, 64)


def test_default_save_is_q75_420_and_png_webp(tmp_path):
    IMG.save(tmp_path / "a.jpg")
    IMG.save(tmp_path / "b.png")
    IMG.save(tmp_path / "c.webp")
    a, b, c = (detect_format(tmp_path / n) for n in ("a.jpg", "b.png", "c.webp"))
    assert (a.quality, a.subsampling) == (75, "4:2:0")      # PIL defaults, as AI Toolkit saves (§B)
    assert (b.format, b.lossless) == ("PNG", True)
    assert (c.format, c.lossless) == ("WEBP", False)
    (tmp_path / "d.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(InputFileError, match="d.jpg"):
        detect_format(tmp_path / "d.jpg")


def test_index_and_checkpoint_pairing(tmp_path):
    previews = [(1000, 0, 0), (1001, 0, 1), (2000, 50, 0), (2001, 50, 1), (3000, 100, 0), (3001, 100, 1)]
    root = build(tmp_path, config(), previews, checkpoints=[50], final=True)
    (root / "samples" / "notes.txt").write_text("x")
    job = load_job(root)
    assert job.steps() == [0, 50, 100]
    items = job.items("all")
    got = [(i.step, i.index, i.baseline, None if i.checkpoint is None else i.checkpoint.name, i.preview.name)
           for i in items]
    assert got == [
        (0, 0, True, None, "1000__000000000_0.jpg"), (0, 1, True, None, "1001__000000000_1.jpg"),
        (50, 0, False, "mylora_000000050.safetensors", "2000__000000050_0.jpg"),
        (50, 1, False, "mylora_000000050.safetensors", "2001__000000050_1.jpg"),
        (100, 0, False, "mylora.safetensors", "3000__000000100_0.jpg"),
        (100, 1, False, "mylora.safetensors", "3001__000000100_1.jpg"),
    ]
    assert items[2].resolved.spec.lora_path.endswith("mylora_000000050.safetensors")
    assert items[0].resolved.spec.lora_path is None
    assert items[0].preview_format.quality == 75
    ignored = {p.name: why for p, why in job.ignored()}
    assert set(ignored) == {".tmp", ".thumbs", "notes.txt"}
    assert [i.step for i in job.items("latest")] == [100, 100]
    assert [i.step for i in job.items(50)] == [50, 50]
    assert [i.step for i in job.items([0, 50])] == [0, 0, 50, 50]


def test_final_label_falls_back_to_numbered_file(tmp_path):
    root = build(tmp_path, config(), [(3000, 100, 0), (3001, 100, 1)], checkpoints=[100])
    assert load_job(root).items(100)[0].checkpoint.name == "mylora_000000100.safetensors"


def test_newest_duplicate_wins_and_others_are_recorded(tmp_path):
    root = build(tmp_path, config(), [(2000, 50, 0), (2500, 50, 0), (2001, 50, 1)], checkpoints=[50])
    it = load_job(root).items(50)[0]
    assert it.preview.name == "2500__000000050_0.jpg"
    assert [p.name for p in it.superseded] == ["2000__000000050_0.jpg"]


def test_first_sample_and_baseline_share_label_zero(tmp_path):
    # first_sample renders first, then the baseline; same names apart from the timestamp (§B)
    cfg = config(first_sample={"prompts": ["first one"], "seed": 9})
    root = build(tmp_path, cfg, [(1000, 0, 0), (1100, 0, 0), (1101, 0, 1)])
    items = load_job(root).items(0)
    got = [(i.group, i.index, i.resolved.spec.prompt, i.resolved.spec.seed, i.preview.name) for i in items]
    assert got == [("first_sample", 0, "first one", 9, "1000__000000000_0.jpg"),
                   ("sample", 0, "alpha", 0, "1100__000000000_0.jpg"),
                   ("sample", 1, "beta", 0, "1101__000000000_1.jpg")]
    # skip_first_sample skips the baseline only; first_sample still renders at 0
    cfg = config(first_sample={"prompts": ["first one"]}, train_extra={"skip_first_sample": True})
    root = build(tmp_path / "b", cfg, [(1000, 0, 0)])
    assert [(i.group, i.preview.name) for i in load_job(root).items(0)] == [("first_sample", "1000__000000000_0.jpg")]


def test_preview_index_beyond_prompts_is_ignored(tmp_path):
    root = build(tmp_path, config(), [(1000, 0, 0), (1001, 0, 1), (1002, 0, 2)])
    job = load_job(root)
    assert len(job.items(0)) == 2
    assert any(p.name == "1002__000000000_2.jpg" and "index 2" in why for p, why in job.ignored())


def test_missing_things_are_errors_that_list_what_exists(tmp_path):
    root = build(tmp_path, config(), [(2000, 50, 0), (2001, 50, 1), (2500, 75, 0)], checkpoints=[25])
    job = load_job(root)
    with pytest.raises(InputFileError, match=r"no previews at step 60 \(step labels found: 50, 75\)"):
        job.items(60)
    with pytest.raises(InputFileError, match=r"mylora_000000050.safetensors.*checkpoints: mylora_000000025"):
        job.items(50)
    write_checkpoint(root, "mylora", 75)
    with pytest.raises(InputFileError, match=r"no preview for step 75 index 1 .*indices at this step: \[0\]"):
        load_job(root).items(75)
    loose = load_job(root).items(75, strict=False)
    assert loose[1].preview is None and loose[1].missing
    empty = build(tmp_path / "e", config(), [])
    with pytest.raises(InputFileError, match="no preview files"):
        load_job(empty).items("latest")


def test_off_schedule_label_is_noted(tmp_path):
    # sample_every 50: a label-60 preview can only come from the UI's "sample now" (one update fewer, §B)
    root = build(tmp_path, config(), [(2000, 60, 0), (2001, 60, 1)], checkpoints=[60])
    it = load_job(root).items(60)[0]
    assert any("sample_every=50" in n for n in it.notes)
    root = build(tmp_path / "b", config(), [(2000, 50, 0), (2001, 50, 1)], checkpoints=[50])
    assert not load_job(root).items(50)[0].notes
