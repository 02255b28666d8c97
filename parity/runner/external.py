"""Explaining an external render: which reference-engine settings reproduce what the user's stack rendered.

A follow-up policy (like parity.runner.policies, same `wants` / `apply`) for items whose render came from a
folder or an endpoint (parity.external.sources) and differs from the preview: parity's suspect search runs with
the external image as its target (instead of the preview) and the preview's own spec as the start, so the
settings it recovers say how the user's stack renders ("your stack renders like 25 steps, guidance 4, diffusers
empirical schedule; the previews used 8, 7 and AI Toolkit's schedule"). The best reproduction is saved beside
the run (`paths.reproduction`) so the report can show external render, preview and reproduction side by side.

The search is called through its public signature only (parity.diagnose.suspect_search); which specs it
rendered and how each scored are observed through the render and score callables handed to it, so the recovered
settings do not depend on how the search represents its candidates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from parity import knobs
from parity.items import PlannedItem
from parity.record import ItemRecord
from parity.spec import RenderSpec
from parity.tier import ERROR, explains

from .engines import EnginePool
from .policies import thresholds_of

if TYPE_CHECKING:
    import numpy as np

    from parity.compare.engine import Comparison

log = logging.getLogger("parity")


@dataclass
class Observed:
    """Every spec the search rendered, and how each scored during the current explanation (filled by the
    callables handed to the search; scores are per call, whatever form the search gives the target in)."""

    specs: dict[int, tuple[np.ndarray, RenderSpec]] = field(default_factory=dict)    # id(image) -> (image, spec)
    scores: dict[RenderSpec, tuple[float, str | None]] = field(default_factory=dict)  # spec -> (ssim, tier), this call

    def best(self) -> tuple[RenderSpec, float, str | None] | None:
        """The best-scoring spec of the current explanation: (spec, ssim, tier)."""
        if not self.scores:
            return None
        spec, (s, t) = max(self.scores.items(), key=lambda kv: kv[1][0])
        return spec, s, t


def setting_value(spec: RenderSpec, knob: str) -> Any:  # a knob's value, as JSON holds it
    """The knob's value as an inference stack sets it: one setting's value, or several joined ("1024x768")."""
    fields = knobs.knob(knob).stack.settings
    if len(fields) > 1:
        return "x".join(str(spec.value(f)) for f in fields)
    return spec.value(fields[0])


def recovered_settings(best: RenderSpec, preview: RenderSpec) -> dict[str, dict[str, Any]]:
    """{knob: {"value": best's, "preview": preview's}} for each setting in which the reproduction differs (the
    registry's stack knobs, in the order a verdict names them)."""
    return {k.name: {"value": setting_value(best, k.name), "preview": setting_value(preview, k.name)}
            for k in knobs.stack_knobs() if any(best.value(f) != preview.value(f) for f in k.stack.settings)}


def settings_verdict(settings: dict[str, dict[str, Any]], explained: bool, score: float) -> str:
    """"your stack renders like steps 25, guidance 4, schedule diffusers empirical: the previews used 8, 7 and
    AI Toolkit" (or the closest found, when nothing reproduces it)."""
    from parity.values import number_text

    def text(knob: str, v: Any) -> str:
        if knob == "schedule":
            return {"aitk": "AI Toolkit", "empirical": "diffusers empirical"}.get(v, str(v))
        return number_text(v) if isinstance(v, float) else str(v)

    if not settings:
        return (f"no setting tried reproduces your render better than the previews' own (SSIM {score:.4f}): "
                "the difference is in the stack itself (weights, precision, kernels, LoRA loading)")
    looks = ", ".join(f"{k.replace('_', ' ')} {text(k, s['value'])}" for k, s in settings.items())
    used = ", ".join(text(k, s["preview"]) for k, s in settings.items())
    lead = "your stack renders like" if explained else "closest reproduction of your render:"
    return f"{lead} {looks}; the previews used {used} (SSIM {score:.4f} against your render)"


class ExternalExplanation:
    """Items with an external render below their gate: find the engine settings that reproduce that render."""

    external = True   # applies to external renders only (the runner skips the engine-side policies for those)
    name, doing = "explanation", "explaining the external render of"

    def __init__(self, engines: EnginePool, work_dir: Path, *, enabled: bool, budget: int | None):
        from parity.diagnose import RenderCache

        self.engines, self.work_dir, self.enabled, self.budget = engines, Path(work_dir), enabled, budget
        self.cache = RenderCache()
        self.observed = Observed()

    def wants(self, item: PlannedItem, rec: ItemRecord) -> bool:
        return (self.enabled and item.case.attribution and rec.tier != ERROR.name and rec.below_gate
                and item.preview_path is not None and bool(rec.paths.get("external"))
                and rec.explanation is None)

    def apply(self, item: PlannedItem, rec: ItemRecord, image: np.ndarray) -> None:
        """A failure (no base model here, a render error) is recorded; the comparison stands."""
        try:
            rec.explanation = self._explain(item, rec)
        except Exception as e:  # noqa: BLE001 - never lose the item for it
            log.debug("explaining %s failed", item.id, exc_info=True)
            rec.explanation = {"error": f"{type(e).__name__}: {e}"}
            return
        if rec.explanation.get("reproduction"):
            rec.paths["reproduction"] = rec.explanation.pop("reproduction")
        self._check_lora(item, rec)

    def _check_lora(self, item: PlannedItem, rec: ItemRecord) -> None:
        """"your stack did not apply the LoRA" with the LoRA audit line, when the evidence says so (lora_applied)."""
        from .lora_applied import check_lora_applied, without_lora_matches

        spec = item.preview.spec
        try:
            check_lora_applied(rec.explanation, spec, lambda: without_lora_matches(
                self.engines.engine_for(item), self.cache, spec, self._target(rec), thresholds_of(item)))
        except Exception:  # noqa: BLE001 - the explanation stands without it
            log.debug("LoRA check of %s failed", item.id, exc_info=True)

    def _explain(self, item: PlannedItem, rec: ItemRecord) -> dict[str, Any]:
        from parity.diagnose import suspect_search
        from parity.diagnose.budget import cost_record, seconds_per_render

        target = self._target(rec)
        spec = item.preview.spec
        self.observed.scores = {}

        budget = self.budget if self.budget is not None else item.case.budget
        found = suspect_search(str(target), spec, self._render_fn(item), self._score_fn(item), index=item.index,
                               budget=budget, cache=self.cache)
        cost = cost_record(found.extra_renders, budget, seconds_per_render(item.base_model, spec, self.engines.device))
        if found.ambiguous or found.not_searched:  # two answers, or no search: said as such, never one guessed
            return {"verdict": found.verdict, "explained": False, "ambiguous": found.ambiguous, "target": str(target),
                    "search_verdict": found.verdict, "search": found.to_dict(), "cost": cost}
        best = self.observed.best()
        if best is None:
            return {"error": "the search rendered nothing", "search": found.to_dict()}
        best_spec, score, tier = best
        settings = recovered_settings(best_spec, spec)
        explained = bool(getattr(found, "explained", False)) or explains(tier)
        return {"verdict": settings_verdict(settings, explained, score), "explained": explained,
                "settings": settings, "score": score, "tier": tier, "target": str(target),
                "search_verdict": getattr(found, "verdict", ""), "search": found.to_dict(), "cost": cost,
                "reproduction": str(self._save(item, best_spec))}

    def _target(self, rec: ItemRecord) -> Path:
        return Path(rec.paths["external"])   # absolute, as every path of a record in memory

    def _save(self, item: PlannedItem, spec: RenderSpec) -> Path:
        from parity import fileio
        from parity.ids import item_file_name

        image = self.cache.images.get(spec)
        if image is None:
            image = self.engines.engine_for(item).render(spec).image
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return fileio.save_image(self.work_dir / f"{item_file_name(item.id)}.png", image)

    def _render_fn(self, item: PlannedItem) -> Callable[[RenderSpec], np.ndarray]:
        engine, seen = self.engines.engine_for(item), self.observed.specs

        def render(spec: RenderSpec) -> np.ndarray:
            import numpy as np

            image = np.asarray(engine.render(spec).image)
            seen[id(image)] = (image, spec)   # the image is kept, so its id stays unique
            return image
        return render

    def _score_fn(self, item: PlannedItem) -> Callable[[np.ndarray, str | Path], Comparison]:
        from parity.compare import compare

        thresholds, observed = thresholds_of(item), self.observed

        def score(image: np.ndarray, target: str | Path) -> Comparison:
            c = compare(image, target, resample=True, thresholds=thresholds)
            hit = observed.specs.get(id(image))
            if hit is not None and hit[0] is image:
                observed.scores[hit[1]] = (float(c.metrics.get("ssim") or 0.0), c.tier)
            return c
        return score
