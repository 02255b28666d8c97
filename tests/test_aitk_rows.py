"""The smaller rows of issue 18's table, each as AI Toolkit (ostris/ai-toolkit 27a03a91) does it. No torch.

Each test names the AI Toolkit line it follows. Jobs are written as AI Toolkit leaves them: a working directory
with `output/<name>/config.yaml`, samples/ and LoRA files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parity.errors import ConfigError, InputFileError
from parity.job import load_job
from parity.job.history import history_from_job
from parity.job.layout import write_checkpoint, write_config_copy

NAME = "rowjob"


def _config(*, process: dict | None = None, train: dict | None = None, network: dict | None = None,
            sample: dict | None = None, first_sample: dict | None = None) -> dict:
    proc = {
        "type": "sd_trainer", "training_folder": "output", "trigger_word": "zk9",
        "network": {"type": "lora", "linear": 4, **(network or {})},
        "train": {"steps": 200, "dtype": "bf16", **(train or {})},
        "model": {"name_or_path": "black-forest-labs/FLUX.2-dev", "arch": "flux2"},
        "sample": {"sample_every": 100, "width": 96, "height": 64, "seed": 3, "walk_seed": True, "neg": "",
                   "samples": [{"prompt": "[trigger] a cat --seed 9"}, {"prompt": "a dog", "neg": "blurry"}],
                   **(sample or {})},
        **(process or {}),
    }
    if first_sample is not None:
        proc["first_sample"] = first_sample
    return {"job": "extension", "config": {"name": NAME, "process": [proc]}}


def _job_folder(root: Path, cfg: dict) -> Path:
    folder = root / "output" / NAME
    write_config_copy(folder, cfg)
    (folder / "samples").mkdir(exist_ok=True)
    return folder


def test_ui_trainer_process_is_read_like_sd_trainer(tmp_path):
    # extensions_built_in/sd_trainer/__init__.py L23-37: UITrainerExtension (uid ui_trainer) -> UITrainer(SDTrainer)
    job = load_job(_job_folder(tmp_path, _config(process={"type": "ui_trainer"})))
    assert job.facts.process_type == "ui_trainer" and len(job.resolved_samples()) == 2


@pytest.mark.parametrize("width,effective", [(1000.5, 992), (1000.0, 992), (71.9, 64), (63.5, 64)])
def test_float_sizes_are_floored_like_any_number(tmp_path, width, effective):
    # toolkit/config_modules.py L1216-1217: max(64, w - w % 8) on whatever number the config holds, then the
    # FLUX.2 floor `w // 16 * 16` (flux2_model.py L295-300): 1000.5 -> 1000.0 -> 992
    job = load_job(_job_folder(tmp_path, _config(sample={"width": width})))
    s = job.resolved_samples()[0]
    assert s.width == effective and isinstance(s.width, int) and s.requested_width == width


def test_a_non_number_size_is_still_refused(tmp_path):
    with pytest.raises(ConfigError, match="width must be an integer"):
        load_job(_job_folder(tmp_path, _config(sample={"width": "wide"})))


def test_dora_runs_live_even_unquantized(tmp_path):
    # toolkit/network_mixins.py L894-896: merge_in returns early for network_type 'dora', so the LoRA stays live
    dora = load_job(_job_folder(tmp_path / "a", _config(network={"type": "dora"})))
    lora = load_job(_job_folder(tmp_path / "b", _config()))
    assert dora.lora_application(dora.resolved_samples()) == "live"
    assert lora.lora_application(lora.resolved_samples()) == "merged"


def test_zero_steps_with_skip_first_sample_still_renders_the_final_sample_at_label_0(tmp_path):
    # jobs/process/BaseSDTrainProcess.py L2820-2821: after the (empty) loop `self.sample(self.step_num)` runs with
    # step_num 0, whatever skip_first_sample says; the LoRA saved just before is the final file
    folder = _job_folder(tmp_path, _config(train={"steps": 0, "skip_first_sample": True}))
    final = write_checkpoint(folder, NAME, final=True)
    job = load_job(folder)
    assert job.groups_at(0) == ["final"] and job.expected_steps() == [0]
    items = job.items(0, strict=False, expected=True)
    assert [(i.group, i.baseline, i.checkpoint) for i in items] == [("final", False, final)] * 2
    # without skip_first_sample there are two sample() calls at label 0: the baseline, then the final one
    both = load_job(_job_folder(tmp_path / "b", _config(train={"steps": 0})))
    assert both.groups_at(0) == ["sample", "final"]


def test_first_sample_with_cached_text_embeddings_renders_the_sample_prompts(tmp_path):
    # extensions_built_in/sd_trainer/SDTrainer.py L142-160 caches the `sample` block's prompts; toolkit/models/
    # base_model.py L544-546 then takes sample_prompts_cache[i] for every sample() call, first_sample included
    first = {"width": 128, "height": 128, "seed": 1, "samples": [{"prompt": "first prompt A"},
                                                                 {"prompt": "first prompt B"}]}
    for train, cached in (({"cache_text_embeddings": True}, True), ({"unload_text_encoder": True}, True), ({}, False)):
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        job = load_job(_job_folder(root, _config(train=train, first_sample=first)))
        fs = job.resolved_samples("first_sample")
        assert job.facts.caches_sample_prompts is cached
        if cached:
            assert [s.prompt for s in fs] == ["zk9 a cat", "a dog"] and fs[1].neg == "blurry"
            assert "sample` block's prompt" in fs[0].notes[-1]
        else:
            assert [s.prompt for s in fs] == ["first prompt A", "first prompt B"]
        assert (fs[0].width, fs[0].seed) == (128, 1)       # everything else stays first_sample's
    # a dataset-level cache_text_embeddings turns it on too (BaseSDTrainProcess.py L153-186)
    ds = load_job(_job_folder(tmp_path / "ds", _config(process={"datasets": [{"cache_text_embeddings": True}]},
                                                       first_sample=first)))
    assert ds.facts.caches_sample_prompts


def test_first_sample_longer_than_the_cache_is_refused(tmp_path):
    first = {"samples": [{"prompt": f"p{i}"} for i in range(3)]}
    with pytest.raises(ConfigError, match="IndexError"):
        load_job(_job_folder(tmp_path, _config(train={"unload_text_encoder": True}, first_sample=first)))


def test_pretrained_lora_is_loaded_before_the_baseline(tmp_path):
    # jobs/process/BaseSDTrainProcess.py L856-859 (get_latest_save_path falls back to network.pretrained_lora_path
    # when it exists) and L2052-2056 (loaded before training): the step-0 baseline renders with it
    folder = _job_folder(tmp_path, _config(network={"pretrained_lora_path": "loras/start.safetensors"}))
    (tmp_path / "loras").mkdir()
    pre = write_checkpoint(tmp_path / "loras", "start", final=True)
    job = load_job(folder)
    base = job.items(0, strict=False, expected=True)
    assert [i.checkpoint for i in base] == [pre.resolve()] * 2
    assert base[0].spec.lora_path == str(pre.resolve())
    # and the merge-history replay starts from it
    assert history_from_job(job, 100)[0] == (str(pre.resolve()), 1.0)
    # a pretrained path that does not exist here is reported, not silently dropped
    pre.unlink()
    job = load_job(folder)
    item = job.items(0, strict=False, expected=True)[0]
    assert item.checkpoint is None and any("pretrained_lora_path" in m for m in item.missing)


def test_plan_works_before_any_preview_and_lists_what_training_will_write(tmp_path):
    folder = _job_folder(tmp_path, _config(train={"steps": 250}, sample={"sample_every": 100}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-m", "parity.cli", "plan", str(folder), "--json"], capture_output=True,
                         text=True, env=env, check=True).stdout
    rows = json.loads(out)
    # labels: 0 (baseline), 100, 200 (sample_every), 250 (final): BaseSDTrainProcess.py L2472-2481, L2555-2561
    assert sorted({r["step"] for r in rows}) == [0, 100, 200, 250]
    assert len(rows) == 8 and all(r["preview"] is None and r["missing"] == [] for r in rows)
    text = subprocess.run([sys.executable, "-m", "parity.cli", "plan", str(folder)], capture_output=True, text=True,
                          env=env, check=True).stdout
    assert "no previews yet" in text and "(to come)" in text


def test_diff_still_needs_previews(tmp_path):
    folder = _job_folder(tmp_path, _config())
    with pytest.raises(InputFileError, match="no preview files"):
        load_job(folder).items("latest")
