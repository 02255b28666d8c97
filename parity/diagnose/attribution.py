"""Single-knob attribution: which differing knob explains the gap between an inference render and its preview.

For an item below parity: re-render the inference spec with each differing knob set to the preview's value, one at a
time, and with all of them aligned; rank the knobs by how much similarity each recovers. With three or more knobs
it also renders "all aligned but this one" (with two knobs those are the single-knob renders again, free from the
cache), which names knobs that only matter together with another one -- e.g. guidance changes little while the seed
differs, yet is needed once the seed is aligned. The all-aligned render says whether the knobs explain the gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from parity import knobs as registry
from parity.diagnose.cache import BudgetExhausted, RenderCache, RenderFn, ScoreFn, Session
from parity.diagnose.paramdiff import align_many, differing_knobs
from parity.spec import RenderSpec
from parity.tier import explains


def compact_value(spec: RenderSpec, knob: str) -> Any:
    """A short JSON value for a knob (the registry's: the schedule and resolution condensed, the rest as in the
    parameter table); KeyError for a knob that is not part of a render spec."""
    return registry.knob(knob).short(spec)


@dataclass
class Cause:
    knob: str
    value_preview: Any
    value_inference: Any
    ssim_aligned: float | None          # score with only this knob aligned (None: skipped)
    tier_aligned: str | None = None
    recovered: float | None = None      # ssim_aligned - baseline
    ssim_without: float | None = None   # score with every other knob aligned but not this one
    necessity: float | None = None      # all_aligned - ssim_without

    @property
    def weight(self) -> float:
        return max(self.recovered or 0.0, self.necessity or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"knob": self.knob, "value_preview": self.value_preview, "value_inference": self.value_inference,
                "ssim_aligned": self.ssim_aligned, "tier_aligned": self.tier_aligned, "recovered": self.recovered,
                "ssim_without": self.ssim_without, "necessity": self.necessity}


@dataclass
class Attribution:
    baseline: float                       # score of the inference render as it is
    baseline_tier: str | None
    knobs: list[str]                      # differing renderable knobs
    causes: list[Cause]                   # ranked, most recovering first; skipped knobs last
    all_aligned: float | None = None
    all_aligned_tier: str | None = None
    explained: bool | None = None         # None: the all-aligned render was not made (budget)
    skipped: list[dict[str, str]] = field(default_factory=list)   # {"knob", "reason"}
    extra_renders: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "baseline_tier": self.baseline_tier, "knobs": list(self.knobs),
                "causes": [c.to_dict() for c in self.causes], "all_aligned": self.all_aligned,
                "all_aligned_tier": self.all_aligned_tier, "explained": self.explained,
                "skipped": list(self.skipped), "extra_renders": self.extra_renders, "note": self.note}

    def summary(self) -> str:
        if self.note and not self.causes:
            return self.note
        parts = []
        for c in self.causes:
            if c.ssim_aligned is None:
                continue
            parts.append(f"{c.knob} (preview {c.value_preview!r}, inference {c.value_inference!r}): aligned "
                         f"{c.ssim_aligned:.3f}")
        head = f"baseline {self.baseline:.3f}; " + "; ".join(parts)
        if self.all_aligned is not None:
            head += f"; all aligned {self.all_aligned:.3f} ({'explains' if self.explained else 'does not explain'} the gap)"
        return head


def _restores(score: float, tier: str | None, explained_at: float) -> bool:
    return explains(tier) if tier is not None else score >= explained_at


def attribute(
    preview_path: Any,
    preview_spec: RenderSpec,
    inference_spec: RenderSpec,
    render: RenderFn,
    score: ScoreFn,
    budget: int | None = None,
    cache: RenderCache | None = None,
    *,
    knobs: Sequence[str] | None = None,
    ruled_out: Sequence[str] = (),
    explained_at: float = 0.98,
    leave_one_out: bool = True,
) -> Attribution:
    """Attribute the gap between `render(inference_spec)` and the preview file to the differing knobs.

    `score(image, preview_path)` returns a float or a Comparison (tier used when present). `budget` caps the extra
    renders (cache hits are free; the inference render itself is not counted); skipped knobs are listed with the
    reason. `cache` shares renders across items. `knobs` restricts the knobs tried (default: every differing
    renderable knob); `ruled_out` knobs (e.g. from the hash checks) are aligned in the all-aligned render but not
    tried alone. Without tiers, "explains the gap" means the all-aligned score reaches `explained_at`."""
    session = Session(render, score, preview_path, budget=budget, cache=cache)
    base_score, base_tier = session.score(inference_spec, free=True)
    diff = differing_knobs(preview_spec, inference_spec)
    if knobs is not None:
        names = registry.knob_names()
        unknown = [k for k in knobs if k not in names]
        if unknown:
            raise ValueError(f"unknown knob(s) {', '.join(unknown)}; expected some of {', '.join(names)}")
        diff = [k for k in diff if k in knobs]
    result = Attribution(baseline=base_score, baseline_tier=base_tier, knobs=list(diff), causes=[])
    if explains(base_tier):
        result.note = f"already at parity ({base_tier}); nothing to attribute"
        result.explained = True
        return result
    if not diff:
        result.note = ("the settings agree on every knob but the images differ: the preview was rendered with "
                       "settings other than the ones on record (run the suspect search), or a numerics/hardware "
                       "difference remains")
        result.explained = False
        return result

    order = [k for k in registry.attribution_order() if k in diff]
    causes: dict[str, Cause] = {k: Cause(k, compact_value(preview_spec, k), compact_value(inference_spec, k),
                                         ssim_aligned=None) for k in order}
    aligned = _Aligner(session, inference_spec, preview_spec)
    # 1. all aligned first: the single most informative render (does the table explain the gap at all?)
    try:
        result.all_aligned, result.all_aligned_tier = aligned.score(order)
        result.explained = _restores(result.all_aligned, result.all_aligned_tier, explained_at)
    except BudgetExhausted:
        result.skipped.append({"knob": "all_aligned", "reason": "render budget exhausted"})
    # 2. one knob at a time, most likely large effects first
    result.skipped += _one_at_a_time(aligned, order, causes, ruled_out, base_score)
    # 3. all aligned but one (free from the cache when two knobs differ)
    if leave_one_out and len(order) >= 2 and result.all_aligned is not None:
        _leave_one_out(aligned, order, causes, ruled_out, result.all_aligned)
    result.causes = _ranked(causes)
    result.extra_renders = session.extra_renders
    return result


class _Aligner:
    """Scores the inference spec with some knobs aligned to the preview's values."""

    def __init__(self, session: Session, inference_spec: RenderSpec, preview_spec: RenderSpec):
        self.session, self.inference, self.preview = session, inference_spec, preview_spec

    def score(self, knobs: Sequence[str]) -> tuple[float, str | None]:
        return self.session.score(align_many(self.inference, self.preview, list(knobs)))


def _one_at_a_time(aligned: _Aligner, order: list[str], causes: dict[str, Cause], ruled_out: Sequence[str],
                   base_score: float) -> list[dict[str, str]]:
    """Each knob aligned alone: how much of the gap it recovers. Returns the knobs skipped, with why."""
    skipped = []
    for k in order:
        if k in ruled_out:
            skipped.append({"knob": k, "reason": "ruled out by the input hashes"})
            continue
        try:
            s, t = aligned.score([k])
        except BudgetExhausted:
            skipped.append({"knob": k, "reason": "render budget exhausted"})
            continue
        causes[k].ssim_aligned, causes[k].tier_aligned, causes[k].recovered = s, t, s - base_score
    return skipped


def _leave_one_out(aligned: _Aligner, order: list[str], causes: dict[str, Cause], ruled_out: Sequence[str],
                   all_aligned: float) -> None:
    """Every knob but one aligned: how much is lost without it (its necessity)."""
    for k in (k for k in order if k not in ruled_out):
        try:
            s, _ = aligned.score([o for o in order if o != k])
        except BudgetExhausted:
            continue
        causes[k].ssim_without, causes[k].necessity = s, all_aligned - s


def _ranked(causes: dict[str, Cause]) -> list[Cause]:
    """Tried knobs by weight (ties in prior order), then the untried ones."""
    prior = {k: i for i, k in enumerate(registry.attribution_order())}
    tried = [c for c in causes.values() if c.ssim_aligned is not None or c.ssim_without is not None]
    untried = [c for c in causes.values() if c not in tried]
    tried.sort(key=lambda c: (-c.weight, prior[c.knob]))
    return tried + untried


def causes_list(attribution: Attribution) -> list[dict[str, Any]]:
    """The results.json `causes` entries: ranked `{"knob", "value_preview", "value_inference", "ssim_aligned"}`."""
    return [{"knob": c.knob, "value_preview": c.value_preview, "value_inference": c.value_inference,
             "ssim_aligned": c.ssim_aligned} for c in attribution.causes]
