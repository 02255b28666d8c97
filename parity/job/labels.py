"""Step labels: which sample() calls render at a label, which labels training writes, and choosing among them."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

from parity.errors import ConfigError, InputFileError
from parity.job.config import JobFacts

StepArg = Union[str, int, Sequence[int]]


def groups_at(facts: JobFacts, has_first_sample: bool, step: int) -> list[str]:
    """sample() calls that render at this label, in the order they run. Before the loop the run is at
    `first_label(facts)` (train.start_step, else 0): `first_sample` renders at label 0 when that is <= 1, then the
    baseline at that label unless skip_first_sample (it needs the label <= 1 or force_first_sample;
    BaseSDTrainProcess.py L2472-2481). The final sample() after the loop renders at `final_label` (L2820-2821),
    which is the same label when the loop is empty (train.steps 0, or start_step >= steps), skip_first_sample or
    not. Any other label is one sample() of the `sample` block."""
    if facts.disable_sampling:
        return []
    start = first_label(facts)
    if step not in (0, start):
        return ["sample"]
    groups = ["first_sample"] if (step == 0 and has_first_sample and start <= 1) else []
    if step == start:
        if _renders_baseline(facts):
            groups.append("sample")
        if final_label(facts) == start:
            groups.append("final")
    return groups


def first_label(facts: JobFacts) -> int:
    """The step the run starts at: train.start_step when set (BaseSDTrainProcess.py L2172-2174), else 0 (a resume
    from a checkpoint's metadata is not known from the config)."""
    return facts.start_step or 0


def final_label(facts: JobFacts) -> int:
    """The label of the final sample(): the loop `range(start, train.steps)` leaves step_num at train.steps, or
    at the start step when the loop does not run (BaseSDTrainProcess.py L2530-2533, L2805, L2820-2821)."""
    return max(facts.steps, first_label(facts))


def before_training(facts: JobFacts, step: int, group: str) -> bool:
    """Whether sample() `group` at label `step` renders the network as loaded, before any training step: the
    first_sample and the baseline at the start label (BaseSDTrainProcess.py L2472-2481), and the final sample()
    when the loop `range(start, train.steps)` is empty (L2533, L2820-2821: train.steps 0, or start_step >= steps).
    That network is network.pretrained_lora_path when set and found (L856-859, L2052-2056)."""
    start = first_label(facts)
    if group == "first_sample":
        return True
    return step == start and (group == "sample" or (group == "final" and final_label(facts) == start))


def _renders_baseline(facts: JobFacts) -> bool:
    # `if skip_first_sample: skip elif step_num <= 1 or force_first_sample: sample(step_num)` (L2477-2481)
    return not facts.skip_first_sample and (first_label(facts) <= 1 or facts.force_first_sample)


def expected_steps(facts: JobFacts, samples_at_zero: bool) -> list[int]:
    """The labels training will write previews at: the start label when a sample() runs there (`samples_at_zero`
    for label 0: baseline, first_sample, or the final one of an empty loop), every scheduled label after the start
    and below train.steps (the loop skips its first step, L2706), and the final label (BaseSDTrainProcess.py
    L2472-2481, L2555-2561, L2706, L2820-2821). Empty when sampling is disabled."""
    from parity.job.history import scheduled_sample_labels

    if facts.disable_sampling:
        return []
    start = first_label(facts)
    scheduled = [s for s in scheduled_sample_labels(facts.sample_every, facts.sample_start_step, facts.steps)
                 if s > start]
    labels = set(scheduled) | {final_label(facts)}
    if samples_at_zero:
        labels.add(0)
    if start and _renders_baseline(facts):
        labels.add(start)
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
