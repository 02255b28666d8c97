"""The image fit of parameter recovery (parity/diagnose/fit.py) on a synthetic renderer: no torch, seconds.

The fake renderer draws a picture that every sampling knob moves smoothly (steps and the static shift move it
only a little, guidance and the multiplier a lot, as on the smooth tiny model), quantised to 8 bits; the score says
EXACT only for identical pixels. The true values are typed on the grid, as users type them; the test checks the
fit lands on them (not the values the code computes).
"""

from __future__ import annotations

import numpy as np
import pytest

from parity.diagnose import suspect_search
from parity.diagnose.cache import RenderCache, Session
from parity.diagnose.fit import ImageFit, luminance_blocks, target_blocks
from parity.diagnose.recover import axes_for, equivalent_shift
from parity.spec import RenderSpec

RECORDED = RenderSpec(prompt="a cube", width=64, height=64, seed=3, sample_steps=20, guidance_scale=4.0,
                      network_multiplier=1.0, lora_path="lora.safetensors", dtype="fp32")


def picture(spec: RenderSpec) -> np.ndarray:
    y, x = np.mgrid[0:64, 0:64] / 64.0
    g, m, steps = spec.guidance_scale, spec.network_multiplier, spec.sample_steps
    shift = equivalent_shift(spec) or 1.0
    base = (0.45 * np.sin(2.0 * g * x + 1.5 * y) + 0.35 * np.cos(3.0 * m * y - x)
            + 0.15 * np.sin(6.0 * x * y + 8.0 / steps) + 0.1 * np.cos(2.0 * shift * (x - y)))
    lum = np.clip(128 + 80 * base, 0, 255)
    return np.stack([lum, lum * 0.9, 255 - lum], axis=-1).astype(np.uint8)


def score(image: np.ndarray, target: np.ndarray) -> dict:
    d = image.astype(float) - target.astype(float)
    mse = float((d ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
    tier = "EXACT" if mse == 0 else "NEAR" if psnr > 40 else "DRIFT"
    return {"ssim": max(0.0, 1 - mse / 2000), "metrics": {"psnr": psnr, "ssim": max(0.0, 1 - mse / 2000)},
            "tier": tier}


class Counting:
    def __init__(self):
        self.renders = 0

    def __call__(self, spec: RenderSpec) -> np.ndarray:
        self.renders += 1
        return picture(spec)


def test_three_knobs_fitted_together_from_the_recorded_values():
    truth = RECORDED.with_(guidance_scale=4.6, network_multiplier=0.83, schedule="static:2.5", semantics="aitk")
    target = picture(truth)
    render = Counting()
    session = Session(render, score, target, budget=90, cache=RenderCache(), metric="psnr")
    session.score(RECORDED, free=True)
    fit = ImageFit(RECORDED, session, target_blocks(target), axes_for(RECORDED), lambda s: s[1] == "EXACT")
    end = fit.fit(fit.point_of(RECORDED))
    assert end[1:] == (4.6, 0.83, 2.5)
    assert end[0] == 20
    assert session.extra_renders <= 60


@pytest.mark.parametrize("changes, named", [
    ({"sample_steps": 26, "guidance_scale": 3.3, "network_multiplier": 1.2},
     {"steps": 26, "guidance": 3.3, "lora_scale": 1.2}),
    ({"guidance_scale": 4.6, "network_multiplier": 0.83, "schedule": "static:2.5", "semantics": "aitk"},
     {"guidance": 4.6, "lora_scale": 0.83, "schedule": "static:2.5"}),
    ({"sample_steps": 14, "network_multiplier": 0.7, "schedule": "static:3", "semantics": "aitk"},
     {"steps": 14, "lora_scale": 0.7, "schedule": "static:3"}),
])
def test_suspect_search_names_three_changed_knobs_in_few_renders(changes, named):
    """Three knobs at once within 30 renders (the score-only coordinate search needed 57 and ran out of 90 on
    the other two)."""
    s = suspect_search(picture(RECORDED.with_(**changes)), RECORDED, Counting(), score, budget=90,
                       explained_tiers=("EXACT",))
    assert s.explained, s.verdict
    assert s.changes() == named
    assert s.extra_renders <= 30


def test_no_image_to_fit_leaves_the_score_search():
    assert target_blocks("no-such-preview.jpg") is None
    assert luminance_blocks(np.zeros(5)) is None
    assert luminance_blocks(np.zeros((4, 4, 3))) is None
