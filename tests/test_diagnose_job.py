"""The diagnosis on a job folder read by the real job reader: the reference-server profile against a UI-style job.
Expected values follow AI Toolkit's rules and the server's (aitk-flux2-previews.md sections A and D)."""

from __future__ import annotations

from PIL import Image

from parity.diagnose import InferenceSettings, item_diff
from parity.job import load_job
from parity.job.layout import write_checkpoint, write_config_copy, write_preview

CFG = {
    "job": "extension",
    "config": {"name": "dg_lora", "process": [{
        "type": "sd_trainer", "training_folder": "output", "trigger_word": "sks",
        "model": {"arch": "flux2", "name_or_path": "black-forest-labs/FLUX.2-dev", "quantize": True},
        "train": {"steps": 20, "dtype": "bf16"},
        "network": {"type": "lora", "linear": 16},
        "save": {"dtype": "float16", "save_every": 10},
        "sample": {"sample_every": 10, "seed": 42, "walk_seed": True, "width": 1000, "height": 512,
                   "guidance_scale": 4, "sample_steps": 28, "neg": "",
                   "samples": [{"prompt": "photo of [trigger] --m 0.8"}, {"prompt": "a castle", "seed": 5}]},
    }]},
    "meta": {"name": "dg_lora"},
}


def make_job(tmp_path):
    root = tmp_path / "output" / "dg_lora"
    write_config_copy(root, CFG)
    img = Image.new("RGB", (992, 512), (1, 2, 3))
    ms = 1763563000000
    for step in (0, 10, 20):
        for i in range(2):
            ms += 1000
            write_preview(root / "samples", img, ms=ms, step=step, index=i)
    write_checkpoint(root, "dg_lora", 10)
    write_checkpoint(root, "dg_lora", final=True)
    return root


def test_reference_server_profile_against_a_ui_style_job(tmp_path):
    job = load_job(make_job(tmp_path))
    items = {i.index: i for i in job.items(10)}
    inf, diff = item_diff(items[0], job, InferenceSettings.profile("reference-server"))
    s = inf.spec
    # The server gets the raw prompt with [trigger] replaced and the flag left in the text (section D.5).
    assert s.prompt == "photo of sks --m 0.8"
    assert (s.width, s.height, s.seed, s.sample_steps, s.guidance_scale) == (1024, 1024, 42, 25, 4.0)
    assert s.network_multiplier == 1.0 and s.lora_application == "merged" and s.quantize is None
    # Preview: "photo of sks", 992x512 (1000 floored), seed 42, 28 steps, guidance 4, --m 0.8, live LoRA on a
    # qfloat8 transformer (quantize -> live).
    assert diff.mismatches == ["steps", "resolution", "prompt", "lora_scale", "lora_application", "quantization"]
    rows = {r.knob: r for r in diff.rows}
    assert rows["resolution"].preview["value"] == {"requested": [1000, 512], "effective": [992, 512]}
    assert rows["lora_scale"].preview == {"value": 0.8, "source": "flag"}
    assert rows["seed"].differs is False
    assert [r["knob"] for r in diff.irreducible] == ["lora_precision"]  # saved float16, sampled in fp32

    inf1, diff1 = item_diff(items[1], job, InferenceSettings.profile("reference-server"))
    assert inf1.spec.seed == 43 and "seed" in diff1.mismatches  # server 42 + 1, preview item seed 5
