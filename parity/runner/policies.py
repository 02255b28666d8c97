"""Follow-up policies: what the runner does to a record after the first render and comparison.

Each policy is a small unit with `wants(item, record)` (pure: does this record call for it?) and
`apply(item, record, image)` (more renders; updates the record). The runner applies them in order:
`DeterminismGuard` right after the comparison, then `NoiseFloor` and `Attribution` once every item has rendered
(their re-renders would otherwise interleave with the first pass's LoRA order).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from parity.errors import ParityError
from parity.record import Cause, Determinism, ItemRecord

from .engines import EnginePool
from .records import judge

log = logging.getLogger("parity")

DETERMINISM_MODES = ("auto", "always", "off")


def thresholds_of(item: Any):
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

    def wants(self, item: Any, rec: ItemRecord) -> bool:
        if self.mode == "off" or rec.tier == "ERROR":
            return False
        # auto: only items below their gate, where a nondeterministic machine would fake a mismatch (saves renders)
        return self.mode == "always" or rec.below_gate

    def apply(self, item: Any, rec: ItemRecord, image: Any) -> None:
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

    def wants(self, item: Any, rec: ItemRecord) -> bool:
        """DRIFT with every knob matching and some irreducible difference: the only items a measured floor can
        judge fairly (parity.compare.tiers.decide_floor_tier)."""
        return (item.case.noise_floor and rec.tier == "DRIFT" and not rec.mismatches and bool(rec.irreducible)
                and not rec.nondeterministic and item.preview_path is not None and rec.noise_floor is None)

    def apply(self, item: Any, rec: ItemRecord, image: Any) -> None:
        """A failure is recorded and leaves the tier as it was (the measurement is extra evidence)."""
        before = rec.tier
        try:
            tier, reason, floor = self._measure(item, rec, image)
        except Exception as e:  # noqa: BLE001 - never lose the item for it
            log.debug("noise floor of %s failed", item.id, exc_info=True)
            rec.noise_floor = {"knobs": [], "tier_before": before, "tier": before, "applied": False,
                               "error": f"{type(e).__name__}: {e}"}
            return
        rec.noise_floor = floor
        if tier != before:
            rec.tier, rec.reason = tier, reason
            judge(rec, item)

    def _measure(self, item: Any, rec: ItemRecord, image: Any) -> tuple[str, str, dict[str, Any]]:
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
    """Items below their gate: re-render one knob at a time and rank causes, or, when the settings agree, try
    likely alternatives (suspects). Renders are shared across items through one RenderCache."""

    def __init__(self, engines: EnginePool, *, enabled: bool, budget: int | None):
        from parity.diagnose import RenderCache

        self.engines, self.enabled, self.budget = engines, enabled, budget
        self.cache = RenderCache()

    def wants(self, item: Any, rec: ItemRecord) -> bool:
        return (self.enabled and item.case.attribution and rec.tier != "ERROR" and rec.below_gate
                and item.preview_path is not None and not rec.nondeterministic)

    def apply(self, item: Any, rec: ItemRecord, image: Any) -> None:
        """An attribution failure is recorded; the item's result is kept."""
        from parity.diagnose import attribute, causes_list, suspect_search

        render, score = self._render_fn(item), self._score_fn(item)
        try:
            if rec.mismatches:
                found = attribute(item.preview_path, item.preview.spec, item.inference.spec, render=render,
                                  score=score, budget=self.budget, cache=self.cache)
                rec.causes = [Cause(**c) for c in causes_list(found)]
                rec.attribution = found.to_dict()
            else:
                rec.suspects = suspect_search(item.preview_path, item.inference.spec, render, score,
                                              index=item.index, budget=self.budget, cache=self.cache).to_dict()
        except Exception as e:  # noqa: BLE001
            log.debug("attribution of %s failed", item.id, exc_info=True)
            rec.attribution = {"error": f"{type(e).__name__}: {e}"}

    def _render_fn(self, item: Any):
        engine = self.engines.engine_for(item)
        return lambda spec: engine.render(spec).image

    @staticmethod
    def _score_fn(item: Any):
        from parity.compare import compare

        thresholds = thresholds_of(item)
        # A Comparison: attribution uses its tier; an aligned resolution must compare at the preview size.
        return lambda image, preview_path: compare(image, preview_path, resample=True, thresholds=thresholds)
