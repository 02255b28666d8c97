"""Pairing a preview slot with its files: which preview file a sample() call wrote, and which checkpoint holds
the LoRA it rendered with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parity.job.config import JobFacts
from parity.job.previews import CheckpointIndex


def choose_preview(files: list[Any], covering: list[str], group: str) -> tuple[Any | None, tuple[Path, ...]]:
    """(the file `group` wrote, older files of the slot) among one slot's files, oldest first. Groups sharing
    label 0 write the same names apart from the timestamp, first_sample first: the newest file belongs to the
    last group covering this index (`covering`, in run order), the one before to the group before."""
    pos = len(covering) - 1 - covering.index(group)
    chosen = files[-1 - pos] if len(files) > pos else None
    superseded = tuple(f.path for f in files[: len(files) - len(covering)]) if chosen else ()
    return chosen, superseded


def checkpoint_for(checkpoints: CheckpointIndex, facts: JobFacts, step: int) -> Path | None:
    """Label S -> `{name}_{S:09d}.safetensors`; label == train.steps -> `{name}.safetensors` (the numbered
    file if only that exists). None when neither exists. Label 0 is the baseline: no LoRA."""
    if step == facts.steps:
        return checkpoints.final or checkpoints.numbered.get(step)
    return checkpoints.numbered.get(step)


def missing_checkpoint(name: str, facts: JobFacts, checkpoints: CheckpointIndex, step: int) -> str:
    """Why label `step` has no checkpoint: the file AI Toolkit would have saved, and what exists."""
    want = name + (".safetensors" if step == facts.steps else f"_{step:09d}.safetensors")
    return f"no checkpoint {want} for step {step}; checkpoints: {checkpoints.listing()}"
