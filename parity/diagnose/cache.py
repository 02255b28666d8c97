"""Memoised render + score with a render budget, shared by attribution and suspect search.

Renders are keyed on the RenderSpec (frozen, hashable), so items whose aligned specs coincide -- the same knob set
on the same prompt/seed/size -- share one render; scores are keyed on (spec, preview path). The engine and the
comparison are passed in as callables, so this module never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from parity.spec import RenderSpec

RenderFn = Callable[[RenderSpec], np.ndarray]
# A score function returns either a float (higher = more similar, SSIM-like) or a Comparison-like object with
# `.metrics["ssim"]` and `.tier` (parity.compare's result); the tier, when present, decides "restored parity".
ScoreFn = Callable[[np.ndarray, Any], Any]


PSNR_EXACT = 1000.0   # identical images (infinite PSNR) as a finite, orderable score


def metric_of(result: Any, metric: str) -> float | None:
    """One metric of a Comparison-like result (None for plain float scores or when missing); PSNR's infinity
    (stored as "inf") becomes PSNR_EXACT."""
    metrics = result.get("metrics") if isinstance(result, dict) else getattr(result, "metrics", None)
    value = metrics.get(metric) if isinstance(metrics, dict) else None
    if value in ("inf", float("inf")):
        return PSNR_EXACT
    return float(value) if isinstance(value, (int, float)) and math.isfinite(float(value)) else None


def as_score(result: Any, metric: str = "ssim") -> tuple[float, str | None]:
    """(score, tier or None) from whatever the score callable returned: SSIM, or `metric` of a Comparison when it
    has one (parameter recovery climbs PSNR: it still separates renders a step apart where SSIM has flattened
    under the JPEG error). A missing or NaN score (e.g. a size mismatch the comparison refuses to score) counts as
    0.0."""
    if metric != "ssim":
        value = metric_of(result, metric)
        if value is not None:
            return value, as_score(result)[1]
    tier = None
    if isinstance(result, (int, float, np.floating, np.integer)) and not isinstance(result, bool):
        value = float(result)
    elif isinstance(result, dict):
        value = result.get("ssim")
        tier = result.get("tier")
    else:
        metrics = getattr(result, "metrics", None)
        value = metrics.get("ssim") if isinstance(metrics, dict) else getattr(result, "ssim", None)
        tier = getattr(result, "tier", None)
    if value is None or not math.isfinite(float(value)):
        value = 0.0
    return float(value), (str(tier).upper() if tier is not None else None)


@dataclass
class RenderCache:
    """Images by spec and scores by (spec, preview). Share one instance across the items of a run."""

    images: dict[RenderSpec, np.ndarray] = field(default_factory=dict)
    scores: dict[tuple[RenderSpec, str, str], tuple[float, str | None]] = field(default_factory=dict)
    ssims: dict[tuple[RenderSpec, str], float] = field(default_factory=dict)  # SSIM of every scored render
    renders: int = 0   # cache misses (real renders) over the cache's life
    hits: int = 0


class BudgetExhausted(Exception):
    """Raised by Session.score when a new render would exceed the budget."""


class Session:
    """One diagnosis: counts the extra renders it causes (cache misses) against `budget` (None = unlimited)."""

    def __init__(self, render: RenderFn, score: ScoreFn, preview_path: Any, *, budget: int | None = None,
                 cache: RenderCache | None = None, metric: str = "ssim"):
        if budget is not None and budget < 0:
            raise ValueError("budget must be >= 0")
        self.render_fn = render
        self.score_fn = score
        self.preview_path = preview_path
        # A path keys by its text; any other preview object (an in-memory image in tests) by identity.
        self.preview_key = (str(Path(preview_path)) if isinstance(preview_path, (str, Path))
                            else f"object:{id(preview_path)}")
        self.budget = budget
        self.cache = cache if cache is not None else RenderCache()
        self.extra_renders = 0
        self.metric = metric   # what `score` returns: "ssim", or e.g. "psnr" of a Comparison (as_score)

    def available(self, spec: RenderSpec) -> bool:
        """True when scoring `spec` costs nothing or fits the budget."""
        if (spec, self.preview_key, self.metric) in self.cache.scores or spec in self.cache.images:
            return True
        return self.budget is None or self.extra_renders < self.budget

    def score(self, spec: RenderSpec, *, free: bool = False) -> tuple[float, str | None]:
        """Score `spec` against the preview, rendering if needed. `free` renders do not count against the budget
        (the inference render itself is not an extra render)."""
        key = (spec, self.preview_key, self.metric)
        if key in self.cache.scores:
            self.cache.hits += 1
            return self.cache.scores[key]
        image = self.cache.images.get(spec)
        if image is None:
            if not free and self.budget is not None and self.extra_renders >= self.budget:
                raise BudgetExhausted
            image = np.asarray(self.render_fn(spec))
            self.cache.images[spec] = image
            self.cache.renders += 1
            if not free:
                self.extra_renders += 1
        else:
            self.cache.hits += 1
        raw = self.score_fn(image, self.preview_path)
        result = as_score(raw, self.metric)
        self.cache.scores[key] = result
        self.cache.ssims[(spec, self.preview_key)] = as_score(raw)[0]
        return result

    def ssim(self, spec: RenderSpec) -> float | None:
        """SSIM of a spec scored before (for verdicts when the search climbs another metric)."""
        return self.cache.ssims.get((spec, self.preview_key))
