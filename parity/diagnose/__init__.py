"""Mismatch diagnosis: inference settings under test, parameter diff, single-knob attribution, suspect search.

No torch here: the engine's render and the comparison's score are passed in as callables.

    settings = InferenceSettings.from_case_value(case.inference, case_dir).with_overrides(parse_overrides(sets))
    inf = inference_spec(item.resolved, item.index, settings, raw_prompt=..., trigger_word=...)
    diff = param_diff(item.resolved, inf)
    attr = attribute(item.preview, item.resolved.spec, inf.spec, render, score, budget=8, cache=shared_cache)
    record = diagnosis_record(diff, attr)      # {"params", "table", "mismatches", "causes", ...}
"""

from __future__ import annotations

from typing import Any

from parity.diagnose.attribution import Attribution, Cause, attribute, causes_list
from parity.diagnose.cache import RenderCache
from parity.diagnose.checks import HashCheck, check_hashes
from parity.diagnose.paramdiff import (
    KNOB_FIELDS, RENDERABLE_KNOBS, ParamDiff, align, align_many, differing_knobs, param_diff,
)
from parity.diagnose.settings import (
    PROFILES, VALID_KEYS, InferenceResolved, InferenceSettings, inference_spec, load_request, parse_overrides,
)
from parity.diagnose.suspects import Suspects, suspect_search


def diagnosis_record(diff: ParamDiff, attribution: Attribution | None = None,
                     suspects: Suspects | None = None, hashes: HashCheck | None = None) -> dict[str, Any]:
    """The per-item diagnosis fields of results.json: params, table, mismatches, irreducible, causes (+ details)."""
    out = diff.to_dict()
    out["causes"] = causes_list(attribution) if attribution is not None else []
    if attribution is not None:
        out["attribution"] = attribution.to_dict()
    if suspects is not None:
        out["suspects"] = suspects.to_dict()
    if hashes is not None:
        out["hash_checks"] = hashes.to_dict()
    return out


__all__ = [
    "Attribution", "Cause", "HashCheck", "InferenceResolved", "InferenceSettings", "KNOB_FIELDS", "PROFILES",
    "ParamDiff", "RENDERABLE_KNOBS", "RenderCache", "Suspects", "VALID_KEYS", "align", "align_many", "attribute",
    "causes_list", "check_hashes", "diagnosis_record", "differing_knobs", "inference_spec", "load_request",
    "param_diff", "parse_overrides", "suspect_search",
]
