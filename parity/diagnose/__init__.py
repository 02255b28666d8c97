"""Mismatch diagnosis: inference settings under test, parameter diff, single-knob attribution, suspect search.

No torch here: the engine's render and the comparison's score are passed in as callables.

    settings = InferenceSettings.from_case_value(case.inference, case_dir).with_overrides(parse_overrides(sets))
    inf = inference_spec(item.resolved, item.index, settings, raw_prompt=..., trigger_word=...)
    diff = param_diff(item.resolved, inf)
    attr = attribute(item.preview, item.resolved.spec, inf.spec, render, score, budget=8, cache=shared_cache)
    # the runner turns these into the item record (parity.runner.records, parity.record.ItemRecord)
"""

from __future__ import annotations

from typing import Any

from parity.diagnose.attribution import Attribution, Cause, attribute, causes_list
from parity.diagnose.cache import RenderCache
from parity.diagnose.checks import HashCheck, check_hashes
from parity.diagnose.paramdiff import ParamDiff, align, align_many, differing_knobs, param_diff
from parity.diagnose.settings import (
    PROFILES, InferenceResolved, InferenceSettings, inference_spec, load_request, parse_overrides,
)
from parity.diagnose.suspects import Suspects, confirm_changes, suspect_search


def item_diff(item: Any, job: Any, settings: InferenceSettings, *, inference_hardware: str | None = None,
              inference_extra: dict | None = None, preview_extra: dict | None = None
              ) -> tuple[InferenceResolved, ParamDiff]:
    """For a parity.job PreviewItem of `job`: the inference spec under `settings` and the parameter diff.

    Uses the item's raw prompt and the job's trigger word (for the reference-server profile), the requested size,
    the job's save dtype (lora_precision) and, for merged previews, the earlier sample rounds with a LoRA
    (step labels between 0 and this one: merge_history; label 0 merges a zero delta, which round-trips exactly)."""
    facts = getattr(job, "facts", None)
    inf = inference_spec(item.resolved, item.index, settings, raw_prompt=getattr(item, "raw_prompt", None),
                         trigger_word=getattr(facts, "trigger_word", None))
    earlier = None
    steps = getattr(job, "steps", None)
    if callable(steps):
        try:
            earlier = sum(1 for s in steps() if 0 < s < item.step)
        except Exception:  # noqa: BLE001 - the count is a hint for the report, never a reason to fail
            earlier = None
    req = getattr(item, "requested_width", None), getattr(item, "requested_height", None)
    diff = param_diff(item.resolved, inf, lora_save_dtype=getattr(facts, "save_dtype", None),
                      earlier_merges=earlier, inference_hardware=inference_hardware,
                      preview_requested=req if None not in req else None,
                      preview_extra=preview_extra, inference_extra=inference_extra)
    return inf, diff


__all__ = [
    "Attribution", "Cause", "HashCheck", "InferenceResolved", "InferenceSettings", "PROFILES",
    "ParamDiff", "RenderCache", "Suspects", "align", "align_many", "attribute",
    "causes_list", "check_hashes", "differing_knobs", "inference_spec", "item_diff", "load_request",
    "confirm_changes", "param_diff", "parse_overrides", "suspect_search",
]
