"""The merged sample rounds AI Toolkit ran before a preview: what the engine replays to reproduce the drift that
merge/un-merge rounds leave in the base weights (docs/numerics.md, detail 8)."""

from __future__ import annotations

from pathlib import Path


def scheduled_sample_labels(sample_every, sample_start_step, before: int) -> list[int]:
    """Scheduled sample labels S with 0 < S < `before` (S % sample_every == 0 and S >= sample_start_step;
    BaseSDTrainProcess.py L2555-2561, aitk-flux2-previews.md section B)."""
    if not isinstance(sample_every, int) or sample_every <= 0:
        return []
    start = sample_start_step if isinstance(sample_start_step, int) else 0
    return [s for s in range(sample_every, before, sample_every) if s >= start]


def history_from_job(job, step: int, multiplier: float = 1.0) -> list[tuple[str | None, float]]:
    """The merged sample rounds AI Toolkit ran before label `step`, oldest first, for Engine.render(merge_history=).
    Labels: the baseline (step 0, a zero LoRA: exact round trip), every scheduled label below `step`, and any
    off-schedule preview label below it (the UI's "sample now" also merges). Each sample() group at a label is one
    round (`job.groups_at`). A missing checkpoint is given by its expected path, which Engine.render reports as
    missing (and then renders on pristine weights)."""
    labels = set(scheduled_sample_labels(job.facts.sample_every, job.facts.sample_start_step, step))
    labels |= {s for s in job.steps() if 0 < s < step}
    # label 0: the zero LoRA, or network.pretrained_lora_path when AI Toolkit loaded one (BaseSDTrainProcess.py
    # L2052-2056); when train.steps is 0 nothing comes after label 0
    pre = job.pretrained_lora()[0] if getattr(job.facts, "pretrained_lora_path", None) else None
    rounds: list[tuple[str | None, float]] = [(None if pre is None else str(pre), multiplier)] * len(
        [g for g in job.groups_at(0) if g != "final"])
    for s in sorted(labels):
        ck = job.checkpoint_for(s)
        path = str(ck) if ck is not None else str(Path(job.folder) / f"{job.name}_{s:09d}.safetensors")
        rounds += [(path, multiplier)] * len(job.groups_at(s))
    return rounds
