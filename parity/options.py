"""A run's options: what the command line (or pytest's options and ini) chose for this run, built once per entry
point into frozen values and passed down. A case file says what a case is; these say how this run treats every
case, and reach a case only by building a new value (`PlanOptions.applied_to`): a loaded Case is never changed.

    parity run / diff           parity.commands._execute.run_options(args)
    parity demo                 parity.commands.demo.options(args)
    pytest plugin               parity.pytest_plugin.plugin_options(...)

Values are checked where they are built (a bad one is a usage error before anything loads). No torch here: the
CLI enters its CPU numerics mode from these before torch loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from parity.cases import Case


@dataclass(frozen=True)
class PlanOptions:
    """Which items are planned and against what: each value replaces the cases' own for this run (None: the
    case's); `overrides` and `shard` narrow or adjust what the cases plan."""

    steps: str | None = None                  # --step as given: latest, all, N or N,M (parsed by `step_selection`)
    inference: str | dict[str, str] | None = None   # --profile NAME or {"request": FILE}
    overrides: tuple[str, ...] = ()           # --set KEY=VALUE, in the order given
    min_tier: str | None = None               # the gate of every item (a checked tier)
    base_model: str | None = None
    text_encoder: str | None = None
    lora: Path | None = None                  # one LoRA file judged against every item's preview
    renders: Path | None = None               # external renders compared instead of parity's own
    shard: str | None = None                  # K/N as given

    def step_selection(self) -> str | int | list[int] | None:
        """--step as the job reader takes it (None: each case's `steps:`)."""
        from parity.errors import ParityError

        text = self.steps
        if text is None or text in ("latest", "all"):
            return text
        try:
            parts = [int(s) for s in text.split(",")]
        except ValueError:
            raise ParityError(f"--step must be latest, all, N or N,M,..., got {text!r}") from None
        return parts[0] if len(parts) == 1 else parts

    def applied_to(self, case: Case) -> Case:
        """`case` under this run's gate, text encoder and renders: a new Case when any is set."""
        changes: dict[str, object] = {}
        if self.min_tier:
            changes["expect"] = replace(case.expect, min_tier=self.min_tier)
        if self.text_encoder:
            changes["text_encoder"] = self.text_encoder
        if self.renders is not None:
            changes["renders"] = self.renders
        return replace(case, **changes) if changes else case


@dataclass(frozen=True)
class SessionOptions:
    """How a run renders and diagnoses its items, and what it does with results already in its folder
    (parity.session.Session.open)."""

    device: str | None = None                 # None: cuda when torch sees a GPU, else cpu
    attribution: bool = True                  # one-knob-at-a-time re-renders (and recovery) below the gate
    budget: int | None = None                 # extra renders per case; None: each case's `budget:`
    determinism_check: str = "auto"           # auto, always or off
    resume: bool = False                      # keep the items of an interrupted run in the folder
    force_resume: bool = False                # ... even when its inputs differ
    overwrite: bool = False                   # discard results already in the folder (a pytest run owns its folder)


@dataclass(frozen=True)
class ReportOptions:
    """Where the report's images live and where it will be served from; the GitHub outputs beside it."""

    link_images: bool = False                 # link the originals by absolute path instead of copying them
    report_url: str | None = None             # absolute links in summary.md, junit.xml and the PR comment
    github: bool = False                      # also pr-comment.md, commit-status.json, $GITHUB_STEP_SUMMARY


@dataclass(frozen=True)
class EndpointOptions:
    """A running reference inference server that renders every item (`--endpoint`)."""

    url: str
    timeout_s: float = 30.0                   # one HTTP exchange, in all
    wait_s: float = 1800.0                    # the whole exchange, retries included
    allow_insecure_token: bool = False        # send credentials over plain http to another host


@dataclass(frozen=True)
class RunOptions:
    """Everything one run of cases was asked for besides the cases themselves."""

    plan: PlanOptions = field(default_factory=PlanOptions)
    session: SessionOptions = field(default_factory=SessionOptions)
    report: ReportOptions = field(default_factory=ReportOptions)
    endpoint: EndpointOptions | None = None
    cpu_numerics: str = "native"              # the mode asked for (option, else $PARITY_CPU_NUMERICS, else native)
    out: Path | None = None                   # the report folder; None: reports/<time>
    json_out: Path | None = None              # a copy of results.json
    quiet: bool = False                       # only errors and the final summary

