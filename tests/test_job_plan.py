"""`parity plan` on a job folder laid out exactly as AI Toolkit writes it (config.yaml copy, samples/ with .tmp/
and .thumbs/, numbered and final checkpoints): every preview is listed with its settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from parity.cli import main
from parity.job.layout import write_checkpoint, write_config_copy, write_preview

CFG = {
    "job": "extension",
    "config": {"name": "plan_lora", "process": [{
        "type": "sd_trainer", "training_folder": "output", "trigger_word": "sks",
        "model": {"arch": "flux2", "name_or_path": "black-forest-labs/FLUX.2-dev", "quantize": True},
        "train": {"steps": 20, "dtype": "bf16"},
        "network": {"type": "lora", "linear": 16},
        "save": {"dtype": "float16", "save_every": 10},
        "sample": {"sample_every": 10, "seed": 42, "walk_seed": True, "width": 1000, "height": 512,
                   "guidance_scale": 4, "sample_steps": 28, "neg": "",
                   "samples": [{"prompt": "photo of [trigger] --m 0.8"}, {"prompt": "a castle", "seed": 5,
                                                                          "width": 72}]},
    }]},
    "meta": {"name": "plan_lora"},
}
# (step, index) -> (prompt, width, height, seed, steps, guidance, multiplier): from the config above by AI
# Toolkit's rules (walk 42+i, item seed 5, floors 1000->992 and 72->64, --m 0.8, [trigger] -> sks).
EXPECTED = {0: ("photo of sks", 992, 512, 42, 28, 4.0, 0.8), 1: ("a castle", 64, 512, 5, 28, 4.0, 1.0)}


def make_job(tmp_path):
    root = tmp_path / "output" / "plan_lora"
    write_config_copy(root, CFG)
    img = Image.new("RGB", (992, 512), (1, 2, 3))
    ms = 1763563000000
    for step in (0, 10, 20):
        for i in range(2):
            ms += 1000
            write_preview(root / "samples", img, ms=ms, step=step, index=i)
    (root / "samples" / ".tmp" / "1763563999999__000000020_0.jpg").write_bytes(b"partial")
    write_checkpoint(root, "plan_lora", 10)
    write_checkpoint(root, "plan_lora", final=True)
    (root / "log.txt").write_text("log")
    return root


def check_records(records, root):
    assert sorted((r["step"], r["index"]) for r in records) == [(s, i) for s in (0, 10, 20) for i in (0, 1)]
    files = sorted(p.name for p in (root / "samples").glob("*.jpg"))
    assert sorted(r["preview"].rsplit("/", 1)[-1] for r in records) == files
    for r in records:
        got = (r["prompt"], r["width"], r["height"], r["seed"], r["sample_steps"], r["guidance_scale"],
               r["network_multiplier"])
        assert got == EXPECTED[r["index"]]
        ck = {0: None, 10: "plan_lora_000000010.safetensors", 20: "plan_lora.safetensors"}[r["step"]]
        assert (None if r["checkpoint"] is None else r["checkpoint"].rsplit("/", 1)[-1]) == ck
        assert r["lora_application"] == "live" and r["dtype"] == "bf16" and r["quantize"] == "qfloat8"
        assert r["preview_format"]["quality"] == 75
    by_index = {r["index"]: r["sources"] for r in records if r["step"] == 10}
    assert by_index[0]["seed"] == "walk" and by_index[0]["network_multiplier"] == "flag"
    assert by_index[0]["width"] == "floor" and by_index[1]["seed"] == "item" and by_index[1]["width"] == "floor"


def test_plan_json_lists_every_preview(tmp_path, capsys):
    root = make_job(tmp_path)
    assert main(["plan", str(root), "--step", "all", "--json"]) == 0
    check_records(json.loads(capsys.readouterr().out), root)


def test_plan_table(tmp_path, capsys):
    root = make_job(tmp_path)
    assert main(["plan", str(root)]) == 0
    out = capsys.readouterr().out
    assert "photo of sks" in out and "plan_lora.safetensors" in out and "q75 4:2:0" in out
    assert out.count("__000000020_") == 2 and "__000000010_" not in out


def test_plan_errors_exit_2(tmp_path, capsys):
    root = make_job(tmp_path)
    assert main(["plan", str(root), "--step", "15"]) == 2
    assert "step labels found: 0, 10, 20" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "nope")]) == 2


@pytest.mark.slow  # another Python process
def test_plan_subprocess(tmp_path):
    root = make_job(tmp_path)
    # plan must not import torch (design: only parity/engine may)
    code = ("import sys; from parity.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, "plan", str(root), "--step", "all", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    check_records(json.loads(res.stdout), root)
