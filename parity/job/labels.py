"""Step labels: which sample() calls render at a label, which labels training writes, and choosing among them."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

from parity.errors import ConfigError, InputFileError
from parity.job.config import JobFacts

StepArg = Union[str, int, Sequence[int]]


def groups_at(facts: JobFacts, has_first_sample: bool, step: int) -> list[str]:
    """sample() calls that render at this label, in the order they run (BaseSDTrainProcess.py
    L2472-2481): at label 0 `first_sample` (if given) then the baseline (unless skip_first_sample)."""
    if facts.disable_sampling:
        return []
    if step == 0:
        groups = ["first_sample"] if has_first_sample else []
        if not facts.skip_first_sample:
            groups.append("sample")
        if facts.steps == 0:  # no training step: the final sample() after the loop runs at label 0
            groups.append("final")  # (BaseSDTrainProcess.py L2820-2821), skip_first_sample or not
        return groups
    return ["sample"]


def expected_steps(facts: JobFacts, samples_at_zero: bool) -> list[int]:
    """The labels training will write previews at: 0 when a sample() runs there (`samples_at_zero`: baseline,
    first_sample, or the final one of a 0-step job), every scheduled label below train.steps, and the final
    label (BaseSDTrainProcess.py L2472-2481, L2555-2561, L2820-2821). Empty when sampling is disabled."""
    from parity.job.history import scheduled_sample_labels

    if facts.disable_sampling:
        return []
    labels = set(scheduled_sample_labels(facts.sample_every, facts.sample_start_step, facts.steps)) | {facts.steps}
    if samples_at_zero:
        labels.add(0)
    return sorted(labels)


def select_steps(step: StepArg, have: list[int], samples_dir: Path) -> list[int]:
    """The labels `step` names ("all", "latest", a number or numbers) among `have`; an error lists `have`."""
    listing = ", ".join(map(str, have)) or "none"
    if isinstance(step, str):
        if step == "all":
            if not have:
                raise InputFileError(f"no preview files (labels found: {listing})", samples_dir)
            return have
        if step == "latest":
            if not have:
                raise InputFileError("no preview files named {ms}__{step:09d}_{i}.ext", samples_dir)
            return [have[-1]]
        try:
            step = int(step)
        except ValueError:
            raise ConfigError(f"step must be an integer, 'latest' or 'all', got {step!r}") from None
    wanted = [step] if isinstance(step, int) else list(step)
    for s in wanted:
        if s not in have:
            raise InputFileError(f"no previews at step {s} (step labels found: {listing})", samples_dir)
    return wanted


def off_schedule_note(facts: JobFacts, step: int) -> str | None:
    """A note when label `step` is not on the sample_every schedule (BaseSDTrainProcess.py L2555-2561): most
    likely the UI's "sample now", which renders label S after S updates while a scheduled sample/checkpoint at
    S has S+1 (§B)."""
    every, start = facts.sample_every, facts.sample_start_step
    if (step not in (0, facts.steps) and isinstance(every, int) and every > 0 and isinstance(start, int)
            and (step % every or step < start)):
        return (f"label {step} is off the sample_every={every} schedule (UI 'sample now'?): its weights are "
                "one update behind a checkpoint saved at the same label")
    return None
