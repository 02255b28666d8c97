"""How a comparison is put in a verdict tier (the tiers themselves: parity.tier) and the thresholds it uses.

Order of the decision (docs/metrics.md has the calibration behind each default):
1. ERROR      could not compare (unreadable file, size mismatch without --resample, image below 11x11).
2. EXACT      encode-matched pixels identical or within `exact_max_abs` levels everywhere.
3. DIFFERENT  another picture: pHash distance >= `different_phash` while luma SSIM < `different_phash_ssim_y`
              (pHash alone also moves when one high-contrast region changes), or luma SSIM < `different_ssim_y`.
4. NEAR       below the calibrated floor, on structure and locally:
              - JPEG preview (encode-matched, ceiling known): the luma-SSIM loss 1-ssim_y is at most
                `near_ceiling_ratio` times the loss the JPEG encoding itself causes on this render
                (1-ceiling ssim_y), so the floor follows the image's busyness like the JPEG error does;
              - lossless preview: luma SSIM >= `near_ssim_y`;
              and the worst `window` x `window` window has at most `near_window_density` of its pixels over
              `tolerance` levels (catches a broken face in an otherwise matching image).
5. a graded tier between NEAR and DRIFT (none is built in): the first whose `band` (parity.tier.Band) admits the
   metrics.
6. DRIFT      everything else: same composition, visibly different.
A resampled comparison (sizes differed) is never better than DRIFT.

Noise floor (`decide_floor_tier`): an item whose settings all match and whose only differences are irreducible
(parity.knobs' irreducible knobs: LoRA file precision, merge history, hardware) cannot be pushed below their noise
by any re-render. The runner measures that noise on the item itself (the render against a twin render that differs
by a sample of the irreducible difference) and a DRIFT within `noise_floor_ratio` times it becomes NEAR, labelled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from parity.errors import ConfigError
from parity.tier import DIFFERENT, DRIFT, EXACT, NEAR, graded_between


@dataclass(frozen=True)
class Thresholds:
    exact_max_abs: int = 1            # EXACT: max |a-b| (levels) on encode-matched pixels
    tolerance: int = 16               # a pixel "differs" when max-over-RGB |a-b| > tolerance (levels)
    window: int = 32                  # N of the worst N x N window
    near_ceiling_ratio: float = 1.0   # NEAR (JPEG): 1-ssim_y <= ratio * (1-ceiling ssim_y)
    near_ssim_y: float = 0.99         # NEAR (lossless preview): luma SSIM at least this
    near_window_density: float = 0.15  # NEAR: worst-window share of differing pixels at most this
    different_phash: int = 20         # DIFFERENT: pHash Hamming distance at least this (of 64 bits) ...
    different_phash_ssim_y: float = 0.90  # ... while luma SSIM is below this
    different_ssim_y: float = 0.30    # DIFFERENT: luma SSIM below this, whatever pHash says
    noise_floor_ratio: float = 2.0    # NEAR (irreducible-only items): loss at most this x the measured noise

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, *, source: str | None = None) -> "Thresholds":
        """Defaults overridden by `values` (e.g. a case file's `thresholds:` block); unknown keys are errors."""
        if not values:
            return cls()
        names = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"unknown threshold(s) {', '.join(unknown)}; known: {', '.join(names)}", source)
        out = cls()
        for k, v in values.items():
            default = getattr(out, k)
            try:
                v = type(default)(v)
            except (TypeError, ValueError):
                raise ConfigError(f"threshold {k} must be a number, got {v!r}", source) from None
            out = replace(out, **{k: v})
        out.validate(source)
        return out

    def validate(self, source: str | None = None) -> None:
        if self.window < 1 or self.tolerance < 0 or self.exact_max_abs < 0:
            raise ConfigError("window must be >= 1, tolerance and exact_max_abs >= 0", source)
        if self.near_ceiling_ratio < 0 or self.noise_floor_ratio < 0:
            raise ConfigError("near_ceiling_ratio and noise_floor_ratio must be >= 0", source)
        for k in ("near_ssim_y", "near_window_density", "different_ssim_y", "different_phash_ssim_y"):
            if not -1.0 <= getattr(self, k) <= 1.0:
                raise ConfigError(f"threshold {k} must lie in [-1, 1]", source)
        if not 0 <= self.different_phash <= 64:
            raise ConfigError("different_phash must lie in [0, 64]", source)


def decide_tier(m: Mapping[str, float], t: Thresholds, *, ceiling_ssim_y: float | None = None,
                resampled: bool = False) -> tuple[str, str]:
    """(tier, reason) from a metrics dict with max_abs, ssim_y, phash_distance, window_density.
    ceiling_ssim_y: luma SSIM of the render against its own re-encode (JPEG previews), else None."""
    sy, ph = m["ssim_y"], m["phash_distance"]
    if not resampled and m["max_abs"] <= t.exact_max_abs:
        return EXACT.name, f"max |diff| {m['max_abs']:.0f} <= {t.exact_max_abs}"
    if ph >= t.different_phash and sy < t.different_phash_ssim_y:
        return DIFFERENT.name, f"pHash distance {ph:.0f} >= {t.different_phash} and SSIM-Y {sy:.4f} < {t.different_phash_ssim_y}"
    if sy < t.different_ssim_y:
        return DIFFERENT.name, f"SSIM-Y {sy:.4f} < {t.different_ssim_y}"
    if resampled:
        return DRIFT.name, f"sizes differ (a resampled comparison is at best {DRIFT.name})"
    if ceiling_ssim_y is not None:
        floor = 1.0 - t.near_ceiling_ratio * (1.0 - ceiling_ssim_y)
        floor_txt = f"{floor:.4f} (= 1 - {t.near_ceiling_ratio:g} x JPEG loss {1.0 - ceiling_ssim_y:.4f})"
    else:
        floor, floor_txt = t.near_ssim_y, f"{t.near_ssim_y}"
    win = f"worst {t.window}px window {m['window_density']:.3f}"
    if sy >= floor and m["window_density"] <= t.near_window_density:
        return NEAR.name, f"SSIM-Y {sy:.4f} >= floor {floor_txt}, {win} <= {t.near_window_density}"
    why = []
    if sy < floor:
        why.append(f"SSIM-Y {sy:.4f} < floor {floor_txt}")
    if m["window_density"] > t.near_window_density:
        why.append(f"{win} > {t.near_window_density} (pixels over {t.tolerance} levels)")
    return graded_tier(m, "; ".join(why))


def graded_tier(m: Mapping[str, float], why: str) -> tuple[str, str]:
    """(tier, reason) of a comparison that missed NEAR: the best graded tier whose band admits it, else DRIFT."""
    for tier in graded_between(NEAR, DRIFT):
        if tier.band is not None and tier.band.admits(m):
            return tier.name, f"{why}; {tier.band.reason(m)}"
    return DRIFT.name, why


def decide_floor_tier(tier: str, m: Mapping[str, float], floor: Mapping[str, float], t: Thresholds, *,
                      knobs: tuple[str, ...] | list[str] = (), resampled: bool = False) -> tuple[str, str]:
    """(tier, reason) for an item whose only differences are the irreducible `knobs`, judged against `floor`: the
    metrics (ssim_y, window_density) of the render against its noise twin, encoded like the preview.

    Only DRIFT can move, and only to NEAR: EXACT and NEAR need no help, DIFFERENT is another picture whatever the
    noise, and a resampled comparison stays DRIFT. NEAR when the luma-SSIM loss is at most `noise_floor_ratio` x
    the twin's loss and the worst window is at most that ratio x the twin's (or within `near_window_density`).
    A twin identical to the render (zero loss) measures no noise and lifts nothing."""
    names = ", ".join(knobs) or "irreducible differences"
    if tier != DRIFT.name or resampled:
        return tier, ""
    loss, floor_loss = 1.0 - float(m["ssim_y"]), 1.0 - float(floor["ssim_y"])
    if floor_loss <= 0.0:
        return DRIFT.name, f"noise floor of {names}: the twin render equals this render, so no noise was measured"
    allowed = t.noise_floor_ratio * floor_loss
    win_allowed = max(t.near_window_density, t.noise_floor_ratio * float(floor["window_density"]))
    head = (f"noise floor of {names}: SSIM-Y loss {loss:.5f} vs {t.noise_floor_ratio:g} x measured {floor_loss:.5f}"
            f"; worst window {float(m['window_density']):.3f} vs {win_allowed:.3f}")
    if loss <= allowed and float(m["window_density"]) <= win_allowed:
        return NEAR.name, f"within the {head}"
    return DRIFT.name, f"above the {head}"
