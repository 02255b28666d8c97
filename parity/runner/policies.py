"""Follow-up policies: what the runner does to a record after the first render and comparison.

Each policy is a small unit with `wants(item, record)` (pure: does this record call for it?) and
`apply(item, record, image)` (more renders; updates the record). The runner applies them in order:
`DeterminismGuard` right after the comparison, then `NoiseFloor` and `Attribution` once every item has rendered
(their re-renders would otherwise interleave with the first pass's LoRA order).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from parity.errors import ParityError
from parity.items import PlannedItem
from parity.record import Cause, Determinism, ItemRecord, NoiseFloorRecord, SuspectsRecord
from parity.spec import RenderSpec
from parity.tier import DRIFT, ERROR, explaining_tiers, meets_gate

from .engines import EnginePool
from .records import judge

if TYPE_CHECKING:
    import numpy as np

    from parity.compare.engine import Comparison
    from parity.compare.tiers import Thresholds
    from parity.diagnose.suspects import Suspects

# An item awaiting its follow-ups: the planned item, its first-pass record and its render.
Deferred = tuple[PlannedItem, ItemRecord, "np.ndarray"]

log = logging.getLogger("parity")

DETERMINISM_MODES = ("auto", "always", "off")


class FollowUp(Protocol):
    """What the runner asks of a follow-up policy (the classes below, and runner.external's)."""

    def wants(self, item: PlannedItem, rec: ItemRecord) -> bool: ...

    def apply(self, item: PlannedItem, rec: ItemRecord, image: np.ndarray) -> None: ...


def thresholds_of(item: PlannedItem) -> Thresholds:
    """Tier thresholds of the item's case (its `tiers:` overrides on the defaults)."""
    from parity.compare import Thresholds

    return Thresholds.from_mapping(item.case.tiers, source=str(item.case.path))


class DeterminismGuard:
    """Render the same spec again and require identical bytes. If they differ the machine (kernels, threads,
    device) is nondeterministic: the record says so, with the largest pixel difference, instead of the mismatch
    passing for a real drift; the later policies skip the item (their re-renders would be as noisy)."""

    def __init__(self, mode: str, engines: EnginePool):
        if mode not in DETERMINISM_MODES:
            raise ParityError(f"determinism check must be one of {', '.join(DETERMINISM_MODES)}, got {mode!r}")
        self.mode, self.engines = mode, engines

    def wants(self, item: PlannedItem, rec: ItemRecord) -> bool:
        if self.mode == "off" or rec.tier == ERROR.name:
            return False
        # auto: only items below their gate, where a nondeterministic machine would fake a mismatch (saves renders)
        return self.mode == "always" or rec.below_gate

    def apply(self, item: PlannedItem, rec: ItemRecord, image: np.ndarray) -> None:
        import numpy as np

        a, b = np.asarray(image), np.asarray(self.engines.render(item).image)
        same = a.shape == b.shape and bool(np.array_equal(a, b))
        max_abs = 0 if same else (int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
                                  if a.shape == b.shape else None)
        rec.determinism = Determinism(checked=True, identical=same, max_abs=max_abs)
        rec.nondeterministic = not same
        if not same:
            what = f"by up to {max_abs}/255" if max_abs is not None else f"in shape {a.shape} vs {b.shape}"
            reason = (f"nondeterministic machine: a repeated render of the same settings differed {what}, so "
                      f"this mismatch may not be a real drift")
            rec.fail_reasons = list(rec.fail_reasons) + [reason]
            rec.notes.append(reason)


class NoiseFloor:
    """Irreducible-only DRIFT items judged against a measured noise floor (parity.diagnose.floor): render the
    item's noise twin(s), score render vs twin encoded like the preview, and re-judge the tier against it."""

    def __init__(self, engines: EnginePool, work_dir: Path):
        self.engines, self.work_dir = engines, work_dir

    def wants(self, item: PlannedItem, rec: ItemRecord) -> bool:
        """DRIFT with every knob matching and some irreducible difference: the only items a measured floor can
        judge fairly (parity.compare.tiers.decide_floor_tier)."""
        return (item.case.noise_floor and rec.tier == DRIFT.name and not rec.mismatches and bool(rec.irreducible)
                and not rec.nondeterministic and item.preview_path is not None and rec.noise_floor is None)

    def apply(self, item: PlannedItem, rec: ItemRecord, image: np.ndarray) -> None:
        """A failure is recorded and leaves the tier as it was (the measurement is extra evidence)."""
        before = rec.tier
        try:
            tier, reason, floor = self._measure(item, rec, image)
        except Exception as e:  # noqa: BLE001 - never lose the item for it
            log.debug("noise floor of %s failed", item.id, exc_info=True)
            rec.noise_floor = NoiseFloorRecord(knobs=[], tier_before=before, tier=before, applied=False,
                                               error=f"{type(e).__name__}: {e}")
            return
        rec.noise_floor = floor
        if tier != before:
            rec.tier, rec.reason = tier, reason
            judge(rec, item)

    def _measure(self, item: PlannedItem, rec: ItemRecord, image: np.ndarray) -> tuple[str, str, NoiseFloorRecord]:
        from parity.compare import decide_floor_tier, twin_metrics
        from parity.diagnose.floor import TWINS, floor_record, noise_twin, worst_twin

        t, before = thresholds_of(item), rec.tier
        # several dithered draws when the LoRA's rounding is sampled; the other twins are deterministic
        draws = TWINS if "lora_precision" in rec.irreducible else 1
        twins = [noise_twin(item.inference.spec, rec.irreducible, merge_history=item.merge_history,
                            work_dir=self.work_dir, seed=seed) for seed in range(draws)]
        if not twins[0].measured:
            return before, rec.reason, floor_record(twins[0], None, tier_before=before, tier=before,
                                                    reason="no irreducible difference could be sampled",
                                                    ratio=t.noise_floor_ratio)
        per_twin = [twin_metrics(image, self.engines.render(item, tw.spec, tw.merge_history).image,
                                 item.preview_path, thresholds=t) for tw in twins]
        m = worst_twin(per_twin)
        tier, reason = decide_floor_tier(before, rec.metrics, m, t, knobs=twins[0].knobs,
                                         resampled=bool(rec.size_mismatch))
        return tier, reason, floor_record(twins[0], m, tier_before=before, tier=tier, reason=reason,
                                          ratio=t.noise_floor_ratio, draws=[x["ssim_y"] for x in per_twin])


class Attribution:
    """Items below their gate: re-render one knob at a time and rank causes (attribution), or, when the settings
    agree, recover the settings that rendered the preview (suspects, parity.diagnose.suspects).

    Recovery runs once per case: on the case's first such item (the runner hands them over worst first), then
    the recovered values are confirmed on each other item with one render; an item they do not explain gets its
    own search. Every extra render of a case counts against its budget (`--budget`, else the case's `budget:`).
    Renders are shared across items through one RenderCache."""

    def __init__(self, engines: EnginePool, *, enabled: bool, budget: int | None):
        from parity.diagnose import RenderCache

        self.engines, self.enabled, self.budget = engines, enabled, budget
        self.cache = RenderCache()
        self.spent: dict[str, int] = {}                  # case -> extra renders spent so far
        self.found: dict[tuple, tuple[str, Suspects]] = {}  # (case, step) -> (item id, the search's finding)
        self.members: dict[str, list[PlannedItem]] = {}  # case -> its items awaiting this policy (prepare)

    def prepare(self, entries: list[Deferred]) -> None:
        """The items each case hands over, known before the first search: a search may render its answers on the
        case's other items to separate two that explain its own preview equally."""
        for item, rec, _ in entries:
            if self.wants(item, rec) and not rec.mismatches:
                self.members.setdefault(_case_key(item), []).append(item)

    def wants(self, item: PlannedItem, rec: ItemRecord) -> bool:
        return (self.enabled and item.case.attribution and rec.tier != ERROR.name and rec.below_gate
                and item.preview_path is not None and not rec.nondeterministic)

    def left(self, item: PlannedItem) -> int:
        """Extra renders this item's case may still spend."""
        total = self.budget if self.budget is not None else item.case.budget
        return max(0, total - self.spent.get(_case_key(item), 0))

    def apply(self, item: PlannedItem, rec: ItemRecord, image: np.ndarray) -> None:
        """An attribution failure is recorded; the item's result is kept."""
        from parity.diagnose import attribute, causes_list

        render, score = self._render_fn(item), self._score_fn(item)
        self.cache.images.setdefault(item.inference.spec, image)  # the first pass's render: no second one
        try:
            if rec.mismatches:
                found = attribute(item.preview_path, item.preview.spec, item.inference.spec, render=render,
                                  score=score, budget=self.left(item), cache=self.cache)
                self._spend(item, found.extra_renders)
                rec.causes = [Cause(**c) for c in causes_list(found)]
                rec.attribution = found.to_dict()
            else:
                rec.suspects = SuspectsRecord.from_dict(self._recover(item, render, score).to_dict())
        except Exception as e:  # noqa: BLE001
            log.debug("attribution of %s failed", item.id, exc_info=True)
            rec.attribution = {"error": f"{type(e).__name__}: {e}"}
        case_renders = self.spent.get(_case_key(item), 0)
        if isinstance(rec.attribution, dict) and "extra_renders" in rec.attribution:
            rec.attribution.update(case_renders=case_renders, cost=self._cost(item))
        if rec.suspects is not None:
            rec.suspects.case_renders, rec.suspects.cost = case_renders, self._cost(item)

    def _cost(self, item: PlannedItem) -> dict[str, Any]:
        """The case's renders so far of its budget, and their wall time on the real model (doctor's plan)."""
        from parity.diagnose.budget import cost_record

        total = self.budget if self.budget is not None else item.case.budget
        return cost_record(self.spent.get(_case_key(item), 0), total, self._per_render(item))

    def _per_render(self, item: PlannedItem) -> tuple[float | None, str]:
        from parity.diagnose.budget import seconds_per_render

        return seconds_per_render(item.base_model, item.inference.spec, self.engines.device)

    def _recover(self, item: PlannedItem, render: Callable[[RenderSpec], np.ndarray],
                 score: Callable[[np.ndarray, str | Path], Comparison]) -> Suspects:
        """Confirm an answer found before on this item (its own group's first, then the case's others), or search:
        the multiplier alone from the step-0 answer when there is one (those previews have no LoRA), else the
        item on its own, tie-broken among the items of its group (a resumed job's groups may differ)."""
        from parity.diagnose import confirm_changes, suspect_search

        key, group = _case_key(item), _group_key(item)
        for source, found in self._answers(key, group):
            confirmed = confirm_changes(item.preview_path, item.inference.spec, found, render, score,
                                        budget=self.left(item), cache=self.cache, source=source,
                                        explained_tiers=_meeting(item))
            self._spend(item, confirmed.extra_renders)
            if confirmed.explained or confirmed.ambiguous:
                self.found.setdefault(group, (source, found))
                return confirmed
        self._announce(item, key)
        others = [(o.preview_path, o.inference.spec) for o in self.members.get(key, [])
                  if o is not item and _group_key(o) == group]
        found = None
        for pinned in ([self._pinned(item, key)] if self._pinned(item, key) else []) + [None]:
            found = suspect_search(item.preview_path, item.inference.spec, render, score, index=item.index,
                                   budget=self.left(item), cache=self.cache, explained_tiers=_meeting(item),
                                   others=others, pinned=pinned)
            self._spend(item, found.extra_renders)
            if found.explained or found.ambiguous or found.not_searched:
                break
        if (found.explained or found.ambiguous) and found.best:
            self.found.setdefault(group, (item.id, found))
        return found

    def _answers(self, key: str, group: tuple) -> list[tuple[str, Suspects]]:
        """Answers found on this case so far: the item's own group's first."""
        mine = [self.found[group]] if group in self.found else []
        return mine + [v for g, v in self.found.items() if g[0] == key and g != group]

    def _pinned(self, item: PlannedItem, key: str) -> dict[str, Any] | None:
        """The sampling knobs found on the case's step-0 previews (no LoRA there), for an item with a LoRA."""
        if item.inference.spec.lora_path is None:
            return None
        for (k, _), (_, found) in self.found.items():
            if k == key and found.explained and not found.ambiguous and found.lora_free:
                return {kn: v for kn, v in found.changes().items() if kn in ("steps", "guidance", "schedule")}
        return None

    def _announce(self, item: PlannedItem, key: str) -> None:
        from parity.diagnose.budget import budget_text

        if key not in self.spent:
            self.engines.progress(f"recovering the settings of case {item.case.name}: "
                                  + budget_text(self.left(item), self._per_render(item)))

    def _spend(self, item: PlannedItem, renders: int) -> None:
        key = _case_key(item)
        self.spent[key] = self.spent.get(key, 0) + renders

    def _render_fn(self, item: PlannedItem) -> Callable[[RenderSpec], np.ndarray]:
        engine = self.engines.engine_for(item)
        return lambda spec: engine.render(spec).image

    @staticmethod
    def _score_fn(item: PlannedItem) -> Callable[[np.ndarray, str | Path], Comparison]:
        from parity.compare import compare

        thresholds = thresholds_of(item)
        # A Comparison: attribution uses its tier; an aligned resolution must compare at the preview size.
        return lambda image, preview_path: compare(image, preview_path, resample=True, thresholds=thresholds)


def _meeting(item: PlannedItem) -> tuple[str, ...]:
    """Tiers that explain a preview for this item: those that explain one (parity.tier) and meet its gate."""
    return tuple(t for t in explaining_tiers() if meets_gate(t, item.case.expect.min_tier))


def _group_key(item: PlannedItem) -> tuple:
    """The items of a case at one training step: they share the sampling knobs (a resumed job may not, between
    steps)."""
    return _case_key(item), getattr(item, "step", None)


def _case_key(item: PlannedItem) -> str:
    return str(getattr(item.case, "path", "")) + "::" + str(item.case.name)


def follow_up_order(entry: Deferred) -> tuple[str, bool, float]:
    """Deferred items in case order, the step-0 previews (no LoRA: the sampling knobs without the multiplier)
    first, then worst first: a case's parameter recovery searches there and confirms on the others."""
    item, rec, _ = entry
    ssim = (rec.metrics or {}).get("ssim")
    return (_case_key(item), item.inference.spec.lora_path is not None,
            ssim if isinstance(ssim, (int, float)) else 0.0)
