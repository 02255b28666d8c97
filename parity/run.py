"""Planning: cases -> `PlannedItem`s (parity.items), without loading any model.

`plan_cases` turns case files into items (a case that cannot be read becomes one `CaseError`; the other cases go
on). Rendering them is parity.runner's job; setting up a run (device, store, cache, metadata) is parity.session's,
shared by the CLI and the pytest plugin. Item ids and file names live in parity.ids.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

from parity.cases import Case
from parity.errors import ParityError
from parity.ids import item_id
from parity.spec import ResolvedSpec
from parity.items import CaseError, PlannedItem

log = logging.getLogger("parity")


def plan_case(
    case: Case,
    *,
    steps: Any = None,
    inference: Any = None,
    overrides: list[str] | None = None,
    lora: Path | None = None,
    base_model: str | None = None,
) -> list[PlannedItem]:
    """Items of one case. `steps`, `inference`, `overrides`, `lora` and `base_model` override the case file
    (command-line flags). Raises ParityError for a case that cannot be planned."""
    from parity.job import load_job

    job = load_job(case.job_source)
    wanted = steps if steps is not None else case.steps
    # strict=False: a preview or checkpoint missing for one item makes that item an ERROR, not the whole case.
    # detect=False then per item: a corrupt preview file fails its own item, not the case.
    items = job.items(wanted, strict=False, detect=False)
    lora = lora if lora is not None else _case_lora(case)
    settings = _settings(case, inference, overrides)
    base, _ = (base_model, "cli") if base_model else case.resolve_base_model(job.facts.name_or_path)
    if not base:
        raise ParityError("no base model: set base_model in the case, $PARITY_BASE_MODEL, or model.name_or_path",
                          case.path)
    text_encoder, _ = case.resolve_text_encoder()
    return [_plan_item(case, job, it, settings, lora, str(base), text_encoder) for it in items]


def _case_lora(case: Case) -> Path | None:
    """The case's `lora:` file (the LoRA under test for every item), checked."""
    if case.lora is None:
        return None
    if not case.lora.is_file():
        # A folder of checkpoints is not supported yet; a file is the LoRA under test for every item.
        raise ParityError("lora: no such LoRA file (the path is resolved relative to the case file)"
                          if not case.lora.exists() else "lora: must be a LoRA file, not a folder", case.lora)
    return case.lora


def _settings(case: Case, inference: Any, overrides: list[str] | None):
    """The inference settings under test: the case's (or the command line's), then `--set` overrides."""
    from parity.diagnose import InferenceSettings, parse_overrides

    settings = InferenceSettings.from_case_value(
        inference if inference is not None else case.inference, case.path.parent, where=str(case.path)
    )
    return settings.with_overrides(parse_overrides(overrides)) if overrides else settings


def _plan_item(case: Case, job: Any, it: Any, settings: Any, lora: Path | None, base: str,
               text_encoder: str | None) -> PlannedItem:
    """One preview item (parity.job.PreviewItem) planned against the settings under test."""
    from parity.diagnose import item_diff

    unreadable = _detect_preview(it)
    if lora is not None and not it.baseline:
        # `parity diff --lora FILE`: another LoRA file judged against these previews.
        it.resolved = ResolvedSpec(it.resolved.spec.with_(lora_path=str(lora)),
                                   dict(it.resolved.sources, lora_path="cli"))
    infer, diff = item_diff(it, job, settings)
    history = None
    if (infer.spec == it.resolved.spec and it.resolved.spec.lora_path
            and it.resolved.spec.lora_application == "merged"):
        # A parity check of a merged preview: replay AI Toolkit's earlier merge/un-merge rounds, whose rounding
        # residue the preview was rendered on (bit-exact-numerics.md detail 8). Inference under other settings
        # runs on pristine weights, as any other stack does.
        from parity.job.history import history_from_job

        history = history_from_job(job, it.step, it.resolved.spec.network_multiplier)
    missing = [m for m in it.missing if not (lora is not None and m.startswith("no checkpoint"))]
    problem = "; ".join(f"{job.samples_dir if m.startswith('no preview') else job.folder}: {m}"
                        for m in missing) or unreadable
    return PlannedItem(
        id=item_id(case.name, it.step, it.index), case=case, step=it.step, index=it.index,
        preview_path=it.preview, checkpoint=it.checkpoint, preview=it.resolved, inference=infer,
        base_model=base, text_encoder=text_encoder, diff=diff, problem=problem, merge_history=history,
    )


def _detect_preview(it: Any) -> str | None:
    """Read the preview's format into the item; the reason when the file is unreadable (an ERROR item)."""
    from parity.job import detect_format

    if it.preview is None:
        return None
    try:
        it.preview_format = detect_format(it.preview)
    except ParityError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for a mangled header
        return f"{it.preview}: not a readable image ({type(e).__name__}: {e})"
    return None


def plan_cases(cases: Iterable[Case], **kwargs: Any) -> tuple[list[PlannedItem], list[CaseError]]:
    """Plan every case; a case that fails is reported as a CaseError and the others go on."""
    planned: list[PlannedItem] = []
    errors: list[CaseError] = []
    for case in cases:
        try:
            planned.extend(plan_case(case, **kwargs))
        except ParityError as e:
            errors.append(CaseError(case.name, case.path, str(e), e))
    return planned, errors
