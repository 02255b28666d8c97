"""`parity doctor --card/--gpu-memory` before the weights are downloaded (issue 34): a job whose base model is not on
disk is planned from the published configuration of its `model.arch`, says so ("weights not checked"), and exits 1
only for what will not fit (or an input the run needs, like a LoRA that maps nowhere).

The expected verdicts are derived here from published parameter counts and the job's dtype, not from parity's code:
  - FLUX.2 [dev]: a 32 billion parameter transformer (black-forest-labs/FLUX.2-dev model card: "FLUX.2 [dev] is a
    32 billion parameter rectified flow transformer"); text encoder Mistral-Small-3.1-24B (24 B, its model card);
  - FLUX.2 [klein] 4B: 4 B transformer, text encoder Qwen3-4B ("Number of Parameters: 4.0B", Qwen/Qwen3-4B card);
  - FLUX.2 [klein] 9B: 9 B transformer, text encoder Qwen3-8B ("Number of Parameters: 8.2B", Qwen/Qwen3-8B card)
    (black-forest-labs/FLUX.2-klein-4B / -9B model cards: "4B" / "9B flow model").
The jobs render in bf16 (2 bytes per weight). With sequential offload the largest single component must sit on the
card while it runs, so: weights of the largest component over the card's memory -> does not fit (exit 1); all of it
under 85 % of the card -> fits (the rest holds activations and the CUDA context). No case here lies in between.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from parity.cli import main

GB = 1e9
BF16 = 2
# model.arch -> published parameter counts (transformer, text encoder), from the model cards named above
PUBLISHED_PARAMS = {"flux2": (32e9, 24e9), "flux2_klein_4b": (4e9, 4.0e9), "flux2_klein_9b": (9e9, 8.2e9)}
CARDS_GB = (24, 48, 80)
NOT_CHECKED = "planned from the published configuration; weights not checked"


def expected_fit(arch: str, card_gb: float) -> bool:
    largest = max(PUBLISHED_PARAMS[arch]) * BF16
    if largest > card_gb * GB:
        return False
    assert largest <= 0.85 * card_gb * GB, f"{arch} on {card_gb} GB is too close to call from published numbers"
    return True


def write_job(tmp: Path, arch: str, lora: dict | None = None) -> Path:
    """An AI Toolkit job (bf16, 1024x1024, 28 steps) whose base model is a hub id: nothing downloaded."""
    from PIL import Image

    from parity.job.layout import write_config_copy, write_preview

    job = tmp / "output" / f"{arch}-lora"
    write_config_copy(job, {"job": "extension", "config": {"name": job.name, "process": [{
        "type": "sd_trainer", "training_folder": str(tmp / "output"), "device": "cuda:0",
        "network": {"type": "lora", "linear": 16, "linear_alpha": 16}, "save": {"dtype": "bf16"},
        "train": {"steps": 1000, "dtype": "bf16"}, "model": {"name_or_path": "black-forest-labs/FLUX.2-dev",
                                                             "arch": arch},
        "sample": {"sample_every": 1000, "width": 1024, "height": 1024, "prompts": ["a cat", "a dog"], "seed": 42,
                   "walk_seed": True, "sample_steps": 28, "guidance_scale": 4}}]}, "meta": {"name": "[name]"}})
    if lora is not None:
        from test_doctor import write_lora

        write_lora(job / f"{job.name}.safetensors", lora)
    for i in range(2):
        write_preview(job / "samples", Image.new("RGB", (64, 64)), ms=1764100000000 + i, step=1000, index=i)
    return job


def doctor(capsys, *args) -> tuple[int, str]:
    code = main(["doctor", *map(str, args)])
    return code, capsys.readouterr().out


def test_published_counts_are_what_the_pinned_configurations_build():
    """The pinned configurations the plan reads are the published models (within 10 % of the stated counts)."""
    from parity.engine import fullsize
    from parity.engine.resources import footprint
    from parity.family import family

    for arch, (transformer, text_encoder) in PUBLISHED_PARAMS.items():
        fam = family(arch)
        t = footprint("t", fullsize.meta_transformer(fam.transformer_config), "bf16").params
        te = footprint("te", fullsize.meta_text_encoder(fam.text_encoder_config), "bf16").params
        assert abs(t / transformer - 1) < 0.1 and abs(te / text_encoder - 1) < 0.1, (arch, t, te)


@pytest.mark.parametrize("arch", sorted(PUBLISHED_PARAMS))
def test_plan_before_download_on_24_48_and_80_gb(arch, tmp_path, capsys):
    job = write_job(tmp_path, arch)
    for card_gb in CARDS_GB:
        fits = expected_fit(arch, card_gb)
        code, out = doctor(capsys, job, "--gpu-memory", card_gb)
        assert code == (0 if fits else 1), (arch, card_gb, out)
        assert NOT_CHECKED in out and "base model folder not found" in out
        assert "WARN" in out.split(f"{job.name}: base model")[0].splitlines()[-1]
        assert "FAIL" not in out, out  # the absent weights are not a failure; only the plan decides
        assert ("-> fits" in out) == fits and ("will not fit" in out) == (not fits)
        assert "time per render: unknown (no measured figure for" in out


def test_named_card_json_and_a_lora_checked_against_the_published_transformer(tmp_path, capsys):
    import json

    from parity.engine import fullsize
    from parity.tiny import bfl_lora_target_shapes

    job = write_job(tmp_path, "flux2", lora=bfl_lora_target_shapes(fullsize.TRANSFORMER_CONFIGS["flux2-dev"]))
    code, out = doctor(capsys, job, "--card", "h100")
    assert code == 0, out
    assert "all 160 modules map onto the base model" in out and NOT_CHECKED in out
    code, text = doctor(capsys, job, "--card", "h100", "--json")
    (case,) = json.loads(text)["cases"]
    assert case["planned_from"] == NOT_CHECKED and case["time"]["s_per_item"] is None
    assert case["components"][0]["params"] == 32_223_281_152
    # a LoRA trained for another model is what the run cannot use: that fails even before the download
    klein = write_job(tmp_path / "k", "flux2_klein_4b",
                      lora=bfl_lora_target_shapes(fullsize.TRANSFORMER_CONFIGS["flux2-dev"]))
    code, out = doctor(capsys, klein, "--card", "h100")
    assert code == 1 and "FAIL" in next(line for line in out.splitlines() if "LoRA keys" in line), out


def test_measured_figure_is_cited_and_this_machine_still_needs_the_weights(tmp_path, capsys, monkeypatch):
    from parity.doctor import published

    job = write_job(tmp_path, "flux2_klein_4b")
    monkeypatch.setitem(published.MEASURED_S_PER_STEP, ("flux2-klein-4b", "l40s", 1024, 1024),
                        (0.5, "a test figure"))
    code, out = doctor(capsys, job, "--card", "l40s")
    assert code == 0 and "time per render: 14.0 s (0.5 s/step x 28 steps, measured: a test figure); run 28.0 s" in out
    # without --card/--gpu-memory the doctor checks this machine, where the run needs the weights
    code, out = doctor(capsys, job)
    assert code == 1 and "FAIL" in out and "base model folder not found" in out and NOT_CHECKED not in out
