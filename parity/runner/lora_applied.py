"""Did the user's stack apply the LoRA at all? Checked after an external render was explained: when the recovered
LoRA multiplier is near 0, or the render matches the reference engine's render without the LoRA (and not the one
with it), the explanation says "your stack did not apply the LoRA", with the LoRA audit line of the file
(parity.lora_audit: which stacks apply it as trained, and why not). docs/lora-audit.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from parity.spec import RenderSpec

if TYPE_CHECKING:
    import numpy as np

    from parity.compare.tiers import Thresholds
    from parity.diagnose.cache import RenderCache
    from parity.engine.render import Engine

from parity.tier import explains

NEAR_ZERO = 0.1          # a recovered multiplier this close to 0 means the LoRA's effect is absent


def _recovered_multiplier(explanation: dict) -> float | None:
    value = ((explanation.get("settings") or {}).get("lora_scale") or {}).get("value")
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _score(render_image: np.ndarray, target: str | Path, thresholds: Thresholds | None) -> tuple[float, str | None]:
    from parity.compare import compare

    c = compare(render_image, target, resample=True, thresholds=thresholds)
    return float(c.metrics.get("ssim") or 0.0), c.tier


def _alike(a: np.ndarray, b: np.ndarray, thresholds: Thresholds | None) -> bool:
    """Two renders of the same size as alike as a NEAR match (luma SSIM at the NEAR threshold)."""
    from parity.compare.metrics import ssim
    from parity.compare.tiers import Thresholds

    t = thresholds or Thresholds()
    return a.shape == b.shape and float(ssim(a, b).ssim_y) >= t.near_ssim_y


def without_lora_matches(engine: Engine, cache: RenderCache, spec: RenderSpec, target: str | Path,
                         thresholds: Thresholds | None) -> bool:
    """The external render is reproduced by the render without the LoRA, and better than by the one with it; never
    for a LoRA whose renders with and without it are alike (nothing would tell the two apart)."""
    def image(s: RenderSpec) -> np.ndarray:
        hit = cache.images.get(s)
        return hit if hit is not None else engine.render(s).image

    without, with_lora = image(spec.with_(network_multiplier=0.0)), image(spec)
    if _alike(with_lora, without, thresholds):
        return False
    ssim0, tier0 = _score(without, target, thresholds)
    ssim1, _ = _score(with_lora, target, thresholds)
    return explains(tier0) and ssim0 > ssim1


def check_lora_applied(explanation: dict[str, Any], spec: RenderSpec, without_lora: Callable[[], bool]) -> None:
    """Add `explanation["lora"]` and lead the verdict with "your stack did not apply the LoRA" when the evidence
    says so. `without_lora()` -> bool is asked only when the recovered multiplier does not already say it."""
    if not getattr(spec, "lora_path", None) or float(spec.network_multiplier) == 0.0 or "verdict" not in explanation:
        return
    m = _recovered_multiplier(explanation)
    if m is not None and abs(m) < NEAR_ZERO:
        why = f"your render looks like LoRA multiplier {m:g}, the previews used {float(spec.network_multiplier):g}"
    elif without_lora():
        why = "your render matches the render without the LoRA"
    else:
        return
    from parity.lora_audit import audit_line

    line = audit_line(spec.lora_path, arch=getattr(spec, "arch", None))
    explanation["lora"] = {"applied": False, "why": why, "audit": line}
    explanation["verdict"] = f"your stack did not apply the LoRA ({why}). {line}. Then: {explanation['verdict']}"
