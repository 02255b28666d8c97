"""Verdict tiers (names from parity.spec.TIERS) and their thresholds.

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
5. DRIFT      everything else: same composition, visibly different.
A resampled comparison (sizes differed) is never better than DRIFT.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from parity.errors import ConfigError


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
        if self.near_ceiling_ratio < 0:
            raise ConfigError("near_ceiling_ratio must be >= 0", source)
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
        return "EXACT", f"max |diff| {m['max_abs']:.0f} <= {t.exact_max_abs}"
    if ph >= t.different_phash and sy < t.different_phash_ssim_y:
        return "DIFFERENT", f"pHash distance {ph:.0f} >= {t.different_phash} and SSIM-Y {sy:.4f} < {t.different_phash_ssim_y}"
    if sy < t.different_ssim_y:
        return "DIFFERENT", f"SSIM-Y {sy:.4f} < {t.different_ssim_y}"
    if resampled:
        return "DRIFT", "sizes differ (a resampled comparison is at best DRIFT)"
    if ceiling_ssim_y is not None:
        floor = 1.0 - t.near_ceiling_ratio * (1.0 - ceiling_ssim_y)
        floor_txt = f"{floor:.4f} (= 1 - {t.near_ceiling_ratio:g} x JPEG loss {1.0 - ceiling_ssim_y:.4f})"
    else:
        floor, floor_txt = t.near_ssim_y, f"{t.near_ssim_y}"
    win = f"worst {t.window}px window {m['window_density']:.3f}"
    if sy >= floor and m["window_density"] <= t.near_window_density:
        return "NEAR", f"SSIM-Y {sy:.4f} >= floor {floor_txt}, {win} <= {t.near_window_density}"
    why = []
    if sy < floor:
        why.append(f"SSIM-Y {sy:.4f} < floor {floor_txt}")
    if m["window_density"] > t.near_window_density:
        why.append(f"{win} > {t.near_window_density} (pixels over {t.tolerance} levels)")
    return "DRIFT", "; ".join(why)
