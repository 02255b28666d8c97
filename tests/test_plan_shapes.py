"""Two AI Toolkit config shapes whose previews render before any training step (issue 35), planned as AI Toolkit
runs them. Expected values come from ostris/ai-toolkit 27a03a91 jobs/process/BaseSDTrainProcess.py:

- L2172-2174  `if train_config.start_step is not None: self.step_num = start_step; self.start_step = step_num`
- L2472-2474  first_sample only `if has_first_sample_requested and self.step_num <= 1`
- L2477-2481  `if skip_first_sample ...: skip  elif self.step_num <= 1 or force_first_sample: self.sample(step_num)`
- L2530-2533  `for step in range(start_step_num, train_config.steps)`: empty when start >= steps
- L2818-2821  after the loop: `self.save()` then `self.sample(self.step_num)` (step_num unchanged by an empty loop)
- L856-859    the LoRA loaded before training is network.pretrained_lora_path when no save exists and it exists;
  L2052-2056  it is loaded into the network before the baseline, so every sample() before a training step renders
              it (the final save() writes the same weights again, in save.dtype).
No torch; the jobs are written as AI Toolkit leaves them (tests/test_aitk_rows.py helpers).
"""

from __future__ import annotations

from PIL import Image

from parity.job import load_job
from parity.job.layout import write_checkpoint, write_preview
from test_aitk_rows import NAME, _config, _job_folder


def _job(tmp_path, train: dict, *, pretrained: bool, label: int):
    net = {"pretrained_lora_path": "loras/start.safetensors"} if pretrained else None
    folder = _job_folder(tmp_path, _config(train=train, network=net))
    pre = None
    if pretrained:
        (tmp_path / "loras").mkdir()
        pre = write_checkpoint(tmp_path / "loras", "start", final=True).resolve()
    write_checkpoint(folder, NAME, final=True)          # the save() before the final sample() (L2818)
    for call in range(2):                               # two sample() calls at the label, 2 prompts each
        for i in range(2):
            write_preview(folder / "samples", Image.new("RGB", (96, 64), (40 * call, 60 * i, 9)),
                          ms=1764100000000 + 1000 * call + i, step=label, index=i)
    return load_job(folder), pre


def _rows(job, step):
    return [(it.step, it.index, it.group, it.checkpoint, it.spec.lora_path) for it in job.items(step)]


def test_start_step_equal_to_steps_with_force_first_sample(tmp_path):
    # step_num = 200 (L2172-2174); no first_sample (200 > 1, L2472); the baseline renders at 200 because of
    # force_first_sample (L2479-2481); range(200, 200) is empty (L2533); final sample() at 200 (L2820-2821).
    # Both calls render the network as loaded: the pretrained LoRA (L856-859, L2052-2056).
    train = {"start_step": 200, "steps": 200, "force_first_sample": True, "skip_first_sample": False}
    job, pre = _job(tmp_path, train, pretrained=True, label=200)
    assert job.expected_steps() == [200] and job.steps() == [200]
    assert _rows(job, 200) == [(200, 0, "sample", pre, str(pre)), (200, 1, "sample", pre, str(pre)),
                               (200, 0, "final", pre, str(pre)), (200, 1, "final", pre, str(pre))]


def test_start_step_equal_to_steps_without_force_renders_only_the_final(tmp_path):
    # force_first_sample false and step_num 200 > 1: no baseline (L2479); only the final sample() (L2820-2821)
    train = {"start_step": 200, "steps": 200, "force_first_sample": False, "skip_first_sample": False}
    job, pre = _job(tmp_path, train, pretrained=True, label=200)
    assert [(s, i, g) for s, i, g, _, _ in _rows(job, 200)] == [(200, 0, "final"), (200, 1, "final")]
    assert {c for _, _, _, c, _ in _rows(job, 200)} == {pre}


def test_zero_steps_with_a_pretrained_lora(tmp_path):
    # step_num 0: the baseline sample(0) (L2479-2481, step_num <= 1); range(0, 0) is empty; the final sample(0)
    # (L2820-2821). The pretrained LoRA is loaded before both (L2052-2056): the final is not a trained network.
    job, pre = _job(tmp_path, {"steps": 0}, pretrained=True, label=0)
    assert job.expected_steps() == [0]
    assert _rows(job, 0) == [(0, 0, "sample", pre, str(pre)), (0, 1, "sample", pre, str(pre)),
                             (0, 0, "final", pre, str(pre)), (0, 1, "final", pre, str(pre))]
    assert [it.baseline for it in job.items(0)] == [True, True, False, False]
