"""`parity plan CONFIG --json` on real FLUX.2 job configs (tests/data/real_configs/, each file names its source),
before any preview exists, against what AI Toolkit (ostris/ai-toolkit 27a03a91) renders for them.

Every expected value below is written out by hand from AI Toolkit's code; the comment above each table names the
lines that decide it. Nothing here is computed by parity. References: BaseSDTrainProcess.py = jobs/process/
BaseSDTrainProcess.py, config_modules.py = toolkit/config_modules.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from parity.cli import main

DATA = Path(__file__).parent / "data" / "real_configs"

UI_PROMPTS = (
    "woman with red hair, playing chess at the park, bomb going off in the background",
    "a woman holding a coffee cup, in a beanie, sitting at a cafe",
    "a horse is a DJ at a night club, fish eye lens, smoke machine, lazer lights, holding a martini",
    "a man showing off his cool new t shirt at the beach, a shark is jumping out of the water in the background",
    "a bear building a log cabin in the snow covered mountains",
    "woman playing the guitar, on stage, singing a song, laser lights, punk rocker",
    "hipster man with a beard, building a chair, in a wood shop",
    "photo of a man, white background, medium shot, modeling clothing, studio lighting, white backdrop",
    "a man holding a sign that says, 'this is a sign'",
    "a bulldog, in a post apocalyptic world, with a shotgun, in a leather jacket, in a desert, with a motorcycle",
)

# The UI FLUX.2 default job (and its LoKr variant): train.steps 3000, sample_every 250, no skip_first_sample.
# Labels: the baseline before the loop at step_num 0 (BaseSDTrainProcess.py L2477-2481), in-loop samples at
# steps 250..2750 with step % 250 == 0 and step != start step (L2555-2561, L2706-2732), the final sample at
# step_num = train.steps = 3000 after the loop (L2805, L2820-2821).
UI_LABELS = [0, 250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2250, 2500, 2750, 3000]
# Per prompt i: trigger_word null, so the prompt is only stripped (L326-329: no injection; no `--` flags);
# 1024 x 1024 (max(64, w - w % 8), config_modules.py L1216-1217; w // 16 * 16, flux2_model.py L295-300);
# walk_seed: seed 42 + i (BaseSDTrainProcess.py L300-302); sample_steps 30; guidance_scale 4; no
# network_multiplier anywhere: SampleConfig default 1 (config_modules.py L91); quantize true, so the LoRA (or
# LoKr) is never merged: can_merge_in False (BaseSDTrainProcess.py L2004-2005), it runs live.
UI_SEEDS = [42, 43, 44, 45, 46, 47, 48, 49, 50, 51]
UI_ROW = {"width": 1024, "height": 1024, "sample_steps": 30, "guidance_scale": 4.0, "network_multiplier": 1.0,
          "lora_application": "live", "dtype": "bf16", "quantize": "qfloat8", "arch": "flux2"}


def plan_json(config: Path, capsys) -> list[dict]:
    assert main(["plan", str(config), "--step", "all", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def staged(tmp_path: Path, name: str, monkeypatch) -> Path:
    """The fixture copied into an empty working directory: its relative training_folder holds no previews."""
    shutil.copy(DATA / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path / name


@pytest.mark.parametrize("name,network", [("ui_flux2_default.json", "lora"), ("ui_flux2_lokr.json", "lokr")])
def test_ui_flux2_default_job(tmp_path, monkeypatch, capsys, name, network):
    config = staged(tmp_path, name, monkeypatch)
    rows = plan_json(config, capsys)
    assert sorted({r["step"] for r in rows}) == UI_LABELS
    assert len(rows) == len(UI_LABELS) * 10
    for r in rows:
        i = r["index"]
        assert (r["prompt"], r["seed"]) == (UI_PROMPTS[i], UI_SEEDS[i])
        assert {k: r[k] for k in UI_ROW} == UI_ROW
        assert r["preview"] is None and r["missing"] == [] and r["control_images"] == []
        assert r["baseline"] is (r["step"] == 0)
    assert json.loads((DATA / name).read_text())["config"]["process"][0]["network"]["type"] == network


def test_published_fork_example_renders_nothing_as_published(tmp_path, monkeypatch, capsys):
    # no `neg` anywhere: SampleConfig.neg defaults to False (config_modules.py L86); sample() encodes it
    # (toolkit/models/base_model.py L627-631 -> flux2_model.py L470) and the Mistral formatter calls
    # False.replace(...) (extensions_built_in/diffusion_models/flux2/src/pipeline.py L80): AttributeError in the
    # baseline sample(), before any preview is saved
    config = staged(tmp_path, "fork_example_train_lora_flux2_24gb.yaml", monkeypatch)
    assert main(["plan", str(config), "--json"]) == 2
    err = capsys.readouterr().err
    assert "negative prompt is False" in err and "no preview" in err and config.name in err


def test_published_fork_example_with_neg_set(tmp_path, monkeypatch, capsys):
    # the same example with the one-line fix `neg: ""`: everything else comes from SampleConfig's code defaults
    config = staged(tmp_path, "fork_example_train_lora_flux2_24gb.yaml", monkeypatch)
    data = yaml.safe_load(config.read_text())
    data["config"]["process"][0]["sample"]["neg"] = ""
    config.write_text(yaml.safe_dump(data))
    rows = plan_json(config, capsys)
    # steps 2000, sample_every 250: baseline 0, in-loop 250..1750, final 2000 (same lines as UI_LABELS)
    assert sorted({r["step"] for r in rows}) == [0, 250, 500, 750, 1000, 1250, 1500, 1750, 2000]
    assert len(rows) == 9 * 9
    for r in rows:
        # legacy `prompts` list -> samples (config_modules.py L104-112); seed 0 and walk_seed False (L87-88):
        # every prompt renders with seed 0; guidance_scale 7 (L89), sample_steps 20 (L90), multiplier 1 (L91);
        # quantize true, qtype default qfloat8 -> live; `is_flux: true` does not override `arch: flux2`
        # (config_modules.py L766-790 only map arch 'flux')
        assert r["prompt"] == UI_PROMPTS[r["index"]]
        assert (r["seed"], r["sample_steps"], r["guidance_scale"], r["network_multiplier"]) == (0, 20, 7.0, 1.0)
        assert (r["width"], r["height"], r["lora_application"], r["quantize"], r["arch"]) == \
            (1024, 1024, "live", "qfloat8", "flux2")
        assert r["sources"]["seed"] == "default" and r["sources"]["guidance_scale"] == "default"


def test_user_native_validation_job(tmp_path, monkeypatch, capsys):
    config = staged(tmp_path, "user_flux2_native_validation.yaml", monkeypatch)
    rows = plan_json(config, capsys)
    # train.start_step 300 = train.steps 300: step_num 300 (BaseSDTrainProcess.py L2172-2174); skip_first_sample
    # wins over force_first_sample (the `if` before the `elif`, L2477-2481); range(300, 300) is empty; the
    # final sample() at step_num 300 (L2820-2821). One prompt, so exactly one preview.
    assert [(r["step"], r["index"], r["group"]) for r in rows] == [(300, 0, "final")]
    r = rows[0]
    # the prompt holds no [trigger]; 832 and 1248 are multiples of 16; walk_seed false: the block seed 8675310;
    # network_multiplier 0.8 (the script's $Strength); layer_offloading: qtype qfloat8 -> float8
    # (config_modules.py L714-715) and no merge (BaseSDTrainProcess.py L2004-2005)
    assert r["prompt"].startswith("An ordinary unedited smartphone portrait of m1tch_person, an adult man")
    assert r["prompt"].endswith("no beauty filter.")
    assert (r["width"], r["height"], r["seed"], r["sample_steps"], r["guidance_scale"], r["network_multiplier"]) \
        == (832, 1248, 8675310, 50, 4.0, 0.8)
    assert (r["lora_application"], r["quantize"], r["dtype"], r["baseline"]) == ("live", "float8", "bf16", False)


def test_user_generated_job_with_no_samples_renders_nothing(tmp_path, monkeypatch, capsys):
    # `samples: []`: sample() loops over range(len(prompts)) = nothing (BaseSDTrainProcess.py L300), and the
    # prompt cache is skipped (SDTrainer.py L145): training runs and writes no preview
    config = staged(tmp_path, "user_flux2_generated_offload.yaml", monkeypatch)
    assert main(["plan", str(config), "--json"]) == 2
    assert "has no prompts (nothing AI Toolkit would render)" in capsys.readouterr().err


@pytest.mark.parametrize("train,labels", [
    # start 500 < steps 1000, sample_every 250: no baseline (step_num 500 > 1, L2479); the loop skips its first
    # step 500 (L2706) and samples 750; final 1000
    ({"start_step": 500, "steps": 1000, "skip_first_sample": False}, [750, 1000]),
    # force_first_sample: the baseline renders at label step_num = 500 (L2479-2481)
    ({"start_step": 500, "steps": 1000, "skip_first_sample": False, "force_first_sample": True}, [500, 750, 1000]),
    # start beyond steps: the loop never runs and the final sample() keeps step_num 700 (L2820-2821)
    ({"start_step": 700, "steps": 600, "skip_first_sample": True}, [700]),
])
def test_start_step_labels(tmp_path, monkeypatch, capsys, train, labels):
    config = staged(tmp_path, "user_flux2_native_validation.yaml", monkeypatch)
    data = yaml.safe_load(config.read_text())
    proc = data["config"]["process"][0]
    proc["train"].update({"force_first_sample": False, **train})
    proc["sample"]["sample_every"] = 250
    config.write_text(yaml.safe_dump(data))
    assert sorted({r["step"] for r in plan_json(config, capsys)}) == labels


def test_a_negative_flag_is_enough(tmp_path, monkeypatch, capsys):
    # `--n` sets GenerateImageConfig.negative_prompt to the flag's text (config_modules.py L1410-1411), a string:
    # the example renders once every prompt carries one
    config = staged(tmp_path, "fork_example_train_lora_flux2_24gb.yaml", monkeypatch)
    data = yaml.safe_load(config.read_text())
    sample = data["config"]["process"][0]["sample"]
    sample["prompts"] = [p + " --n blurry" for p in sample["prompts"]]
    config.write_text(yaml.safe_dump(data))
    rows = plan_json(config, capsys)
    assert len(rows) == 81 and {r["prompt"] for r in rows} == set(UI_PROMPTS[:9])


def test_a_bad_start_step_is_refused(tmp_path, monkeypatch, capsys):
    config = staged(tmp_path, "user_flux2_native_validation.yaml", monkeypatch)
    config.write_text(config.read_text().replace("start_step: 300", "start_step: soon"))
    assert main(["plan", str(config)]) == 2
    assert "train.start_step must be a non-negative integer, got 'soon'" in capsys.readouterr().err
