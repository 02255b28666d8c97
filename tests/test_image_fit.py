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
from parity.diagnose.fit import ImageFit, climb, expand, grow, residual_blocks, target_blocks
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
    def __init__(self, draw=picture):
        self.renders, self.draw = 0, draw

    def __call__(self, spec: RenderSpec) -> np.ndarray:
        self.renders += 1
        return self.draw(spec)


def test_three_knobs_fitted_together_from_the_recorded_values():
    truth = RECORDED.with_(guidance_scale=4.6, network_multiplier=0.83, schedule="static:2.5", semantics="aitk")
    target = picture(truth)
    render = Counting()
    session = Session(render, score, target, budget=90, cache=RenderCache(), metric="psnr")
    session.score(RECORDED, free=True)
    fit = ImageFit(RECORDED, session, target_blocks(target), axes_for(RECORDED), lambda s: s[1] == "EXACT")
    end, _ = fit.fit(fit.point_of(RECORDED))
    assert end[1:] == (4.6, 0.83, 2.5)
    assert end[0] == 20
    assert session.extra_renders <= 60


def test_forward_selection_moves_only_the_knobs_that_changed():
    """From the recorded values the fit adds knobs one at a time, the one whose column predicts the largest drop
    first: a single changed knob is found without moving the others."""
    truth = RECORDED.with_(guidance_scale=5.3)
    target = picture(truth)
    session = Session(Counting(), score, target, budget=90, cache=RenderCache(), metric="psnr")
    session.score(RECORDED, free=True)
    fit = ImageFit(RECORDED, session, target_blocks(target), axes_for(RECORDED), lambda s: s[1] == "EXACT")
    start = fit.point_of(RECORDED)
    end = grow(fit, start, [])
    assert fit.evals[end].score[1] == "EXACT"
    assert [v != s for v, s in zip(end, start)] == [False, True, False, False]
    assert end[1] == 5.3
    assert session.extra_renders <= 12


@pytest.mark.parametrize("changes, named", [
    ({"sample_steps": 26, "guidance_scale": 3.3, "network_multiplier": 1.2},
     {"steps": 26, "guidance": 3.3, "lora_scale": 1.2}),
    ({"guidance_scale": 4.6, "network_multiplier": 0.83, "schedule": "static:2.5", "semantics": "aitk"},
     {"guidance": 4.6, "lora_scale": 0.83, "schedule": "static:2.5"}),
    ({"sample_steps": 14, "network_multiplier": 0.7, "schedule": "static:3", "semantics": "aitk"},
     {"steps": 14, "lora_scale": 0.7, "schedule": "static:3"}),
])
def test_suspect_search_names_three_changed_knobs_in_few_renders(changes, named):
    """Three knobs at once within the issue's 30 renders per changed knob (the score-only coordinate search
    needed 57 and ran out of 90 on the other two; the fit of every knob at once from the recorded values did it in
    10-16 here, and lost on the tiny model where the picture is smooth only near the answer: the coarse scan and
    forward and backward selection now come first: 48-56 renders here)."""
    s = suspect_search(picture(RECORDED.with_(**changes)), RECORDED, Counting(), score, budget=90,
                       explained_tiers=("EXACT",))
    assert s.explained, s.verdict
    assert s.changes() == named
    assert s.extra_renders <= 90


def knob_values(spec: RenderSpec) -> np.ndarray:
    """A score-only fake's "picture": the knobs' values."""
    return np.array([spec.sample_steps, spec.guidance_scale, spec.network_multiplier,
                     equivalent_shift(spec) or 1.0, spec.seed], dtype=float)


def narrow_peak_psnr(image: np.ndarray, _target, peak: float | None = 7.1) -> dict:
    """Another picture (13-15 dB, as chance has it) everywhere but within 0.5 of guidance `peak` (None: nowhere),
    exact at it with the other knobs recorded."""
    import math

    steps, g, m, shift, seed = image
    if peak is not None and (steps, round(g, 6), m, seed) == (20, peak, 1.0, RECORDED.seed) and abs(shift - 1.58) < 0.02:
        psnr = float("inf")
    elif peak is not None and abs(g - peak) < 0.5 and seed == RECORDED.seed:
        psnr = 40 - 30 * abs(g - peak) - 5 * abs(m - 1) - abs(steps - 20) - 5 * abs(shift - 1.58)
    else:
        psnr = 14 + math.sin(1000 * g + 37 * steps + 91 * m + 13 * shift + 7 * seed)
    tier = "EXACT" if psnr == float("inf") else "DIFFERENT" if psnr < 20 else "DRIFT"
    return {"ssim": min(1.0, psnr / 100), "metrics": {"psnr": psnr, "ssim": min(1.0, psnr / 100)}, "tier": tier}


def test_a_coarse_scan_that_sees_no_basin_is_made_denser():
    """Every coarse render is another picture (13-15 dB, by chance), and the guidance's peak at 7.1 is narrower
    than the coarse spacing (5.5, 8): held-out model 1602, where guidance 6.8 / 7.0 / 7.2 scored 25 / 32 / 28 dB and
    the coarse values 14-16. The scan halves its spacing until a render stands out, and the search finds 7.1."""
    s = suspect_search(object(), RECORDED, knob_values, narrow_peak_psnr, budget=90, explained_tiers=("EXACT",))
    assert s.explained and s.changes() == {"guidance": 7.1}, s.verdict


def test_a_denser_scan_that_sees_no_basin_adds_no_starts():
    """Nothing stands out anywhere: the midpoints are rendered, then left out of the scan, so that none ahead of
    the recorded render by chance becomes one more start."""
    from parity.diagnose.scan import coarse_indices, coarse_scan

    session = Session(knob_values, lambda im, t: narrow_peak_psnr(im, t, peak=None), object(), budget=90,
                      cache=RenderCache(), metric="psnr")
    start = session.score(RECORDED, free=True)
    assert start[1] == "DIFFERENT"
    scans = coarse_scan(RECORDED, session, start, lambda sc: sc[1] == "EXACT", 0.1, axes_for(RECORDED), lift=3.0)
    coarse = sum(len(coarse_indices(c.axis)) for c in scans)
    assert session.extra_renders > coarse + 10   # the midpoints were rendered
    for c in scans:
        assert set(c.run.scores) - {c.run.i0} == set(coarse_indices(c.axis))
        assert c.best_index in coarse_indices(c.axis)


def test_a_seed_that_scores_a_little_better_by_chance_is_not_adopted():
    """The recorded render is another picture (guidance far off), so the seed patterns are tried first, and one
    of them scores a little better than the recorded render by chance (another picture all the same). Adopting it
    led every later search astray (held-out run 4); a seed is adopted only when it gains SEED_GAIN or explains the
    target, and the search names guidance. A score-only fake: the seed decides the picture, guidance its
    closeness."""
    def render(spec: RenderSpec) -> np.ndarray:
        return np.array([float(spec.seed), spec.guidance_scale])

    def psnr_of(image: np.ndarray, _target) -> dict:
        seed, g = image
        psnr = (float("inf") if g == 6.5 else 40 - 10 * abs(g - 6.5)) if seed == RECORDED.seed else \
            (16.5 if seed == 2 else 12.0)
        tier = "EXACT" if psnr == float("inf") else "DIFFERENT" if psnr < 20 else "DRIFT"
        return {"ssim": min(1.0, psnr / 100), "metrics": {"psnr": psnr, "ssim": min(1.0, psnr / 100)}, "tier": tier}

    assert psnr_of(render(RECORDED), None)["metrics"]["psnr"] + 0.5 < 16.5   # the trap: seed 2 gains > MIN_GAIN
    s = suspect_search(object(), RECORDED, render, psnr_of, index=1, budget=90, explained_tiers=("EXACT",))
    assert "seed" not in s.changes(), s.verdict
    assert s.explained and s.changes() == {"guidance": 6.5}, s.verdict


def _fit_at(truth: RenderSpec, render=picture):
    target = render(truth)
    session = Session(render, score, target, budget=90, cache=RenderCache(), metric="psnr")
    session.score(RECORDED, free=True)
    return ImageFit(RECORDED, session, target_blocks(target), axes_for(RECORDED), lambda s: s[1] == "EXACT")


def test_a_knob_the_evidence_does_not_need_is_put_back():
    """Backward elimination: a fit that ended with the steps moved along with the changed guidance is exact once
    the steps are back at their recorded value."""
    from parity.diagnose.fit import prune

    fit = _fit_at(RECORDED.with_(guidance_scale=5.3))
    start = fit.point_of(RECORDED)
    p = (26.0, 5.3) + start[2:]
    fit.evaluate(p)
    back = prune(fit, p, [0, 1])
    assert back is not None and back[1] == 0
    assert back[0] == (20.0, 5.3) + start[2:] and fit.evals[back[0]].score[1] == "EXACT"


def test_a_one_knob_fit_that_stopped_in_a_dip_scans_its_neighbourhood():
    from parity.diagnose.fit import scan_near

    fit = _fit_at(RECORDED.with_(guidance_scale=5.3))
    start = fit.point_of(RECORDED)
    p = (start[0], 5.0) + start[2:]
    fit.evaluate(p)
    q = scan_near(fit, p, 1)   # the first point SCAN_GAIN better; the fit goes on from there
    assert q is not None and abs(q[1] - 5.3) < abs(p[1] - 5.3)
    assert fit.evals[q].score[0] >= fit.evals[p].score[0] + 3.0
    end, _ = fit.fit(q, [1])
    assert end == (start[0], 5.3) + start[2:] and fit.evals[end].score[1] == "EXACT"


def test_a_knob_whose_unit_is_under_a_grid_step_still_gets_its_jacobian_column():
    """A few steps: one unit of the steps (15 %) rounds back to the same integer either way (3 x 1.15 = 3.45, 3 /
    1.15 = 2.6), and the column was 0 / 0: NaN, then a NaN step and a crash (ValueError converting NaN to an
    index; held-out model 7507, guidance 5.2 + multiplier 0.33). The column is then measured one grid step away."""
    fit = _fit_at(RECORDED.with_(guidance_scale=5.3))
    start = fit.point_of(RECORDED)
    p = (3.0,) + start[1:]
    here = fit.evaluate(p)
    J, hit = fit.jacobian(p, here, [0])
    assert hit is None and np.isfinite(J).all() and J[:, 0].any()
    assert (4.0,) + start[1:] in fit.evals or (2.0,) + start[1:] in fit.evals
    end, _ = fit.fit(p, [0, 1])   # the fit from there runs on finite numbers
    assert all(np.isfinite(end))


def test_the_polish_of_a_near_point_puts_a_knob_it_did_not_need_back():
    """Held-out run 18, model 4541: a preview at 21 steps (AI Toolkit's shift) ended at 21 steps + a static shift of
    1.95, NEAR, the valley walk having moved the shift with the steps; the recorded shift lies 7 grid steps away,
    beyond `climb` and `expand`. The polish puts each moved knob back once."""
    from parity.diagnose.fit import polish

    fit = _fit_at(RECORDED.with_(sample_steps=26))
    start = fit.point_of(RECORDED)
    p = (26.0,) + start[1:3] + (2.0,)
    fit.evaluate(p)
    q = polish(fit, p)
    assert q == (26.0,) + start[1:] and fit.evals[q].score[1] == "EXACT"


def valley_picture(spec: RenderSpec) -> np.ndarray:
    """Steps and the shift act through one combination (log shift - 0.8 log steps): a valley along which only a
    small term of the steps alone separates the points, visible in 8 bits."""
    y, x = np.mgrid[0:64, 0:64] / 64.0
    c = np.log(equivalent_shift(spec) or 1.0) - 0.8 * np.log(spec.sample_steps / 20.0)
    lum = 128 + 70 * np.sin(3.0 * x + 2.0 * y + 4.0 * c) + 1.5 * np.sin(7.0 * x * y) * spec.sample_steps / 10.0
    lum = np.clip(lum, 0, 255)
    return np.stack([lum, lum * 0.9, 255 - lum], axis=-1).astype(np.uint8)


def rising_valley_picture(spec: RenderSpec) -> np.ndarray:
    """Steps and the shift act mostly through one combination (log shift - 1.1 log steps), and the steps alone
    move the picture a little more: along the valley the score rises toward the answer, as measured on the smooth
    tiny models (held-out model 6619, 29 steps + shift 3.9: the best shift and PSNR at 20, 24, 28 steps 2.45 /
    41.2 dB, 3.15 / 43.4, 3.75 / 47.9; model 6213, 15 steps + shift 1.3: 1.10 / 40.2 at 13, 1.55 / 42.5 at 17,
    1.85 / 40.4 at 20), with a power (1.1) other than the one the walk assumes first (1.25)."""
    y, x = np.mgrid[0:64, 0:64] / 64.0
    c = np.log(equivalent_shift(spec) or 1.0) - 1.1 * np.log(spec.sample_steps / 20.0)
    lum = 128 + 70 * np.sin(3.0 * x + 2.0 * y + 1.5 * c) + 10 * np.sin(7.0 * x * y) * spec.sample_steps / 10.0
    lum = np.clip(lum, 0, 255)
    return np.stack([lum, lum * 0.9, 255 - lum], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("steps, shift, start_steps, renders", [(15, 1.3, 19, 22), (15, 1.3, 11, 20),   # trace_valley: 5 a step
                                                                (29, 3.9, 20, 36), (40, 2.2, 30, 32)])
def test_the_steps_shift_valley_is_walked_to_the_exact_point(steps, shift, start_steps, renders):
    """From a point on the valley some steps away, either side, the valley walk reaches the exact answer with a
    line search over the steps (a few valley points, not one per step). (Each valley point renders both neighbours
    of its predicted shift since session s11, `valley_point`: two renders more on two of these walks.)"""
    from parity.diagnose.fit import walk_valley

    render = Counting(rising_valley_picture)
    fit = _fit_at(RECORDED.with_(sample_steps=steps, schedule=f"static:{shift}", semantics="aitk"), render)
    start = fit.point_of(RECORDED)
    p = (float(start_steps),) + start[1:3] + (round(shift * (start_steps / steps) ** 1.1 * 20) / 20,)
    assert fit.evaluate(p).score[1] != "EXACT"
    before = render.renders
    q = walk_valley(fit, p)
    assert q is not None and q[0] == steps and q[3] == shift and fit.evals[q].score[1] == "EXACT"
    assert render.renders - before <= renders


def needle_picture(spec: RenderSpec) -> np.ndarray:
    """`picture` with fine noise at every static shift but 3.05 at 24 steps: as on the tiny models, near the answer
    the score is a needle, one grid step away no better than three (held-out model 5201 at 21 steps: 3.5 41.2 dB,
    3.55 43.7, 3.45 exact). The noise fades above the answer, so a climb from 3.1 goes up, away from it."""
    shift = equivalent_shift(spec) or 1.0
    base = picture(spec).astype(float)
    if (spec.sample_steps, round(shift * 20)) == (24, 61):
        return base.astype(np.uint8)
    amp = 10.0 if shift <= 3.05 else max(2.0, 10.0 - 40.0 * (shift - 3.05))
    noise = np.random.default_rng(spec.sample_steps * 1000 + round(shift * 20)).uniform(-amp, amp, base.shape[:2])
    return np.clip(base + noise[..., None], 0, 255).astype(np.uint8)


def test_a_valley_point_renders_both_neighbours_of_its_predicted_shift():
    """Predicted one grid step above the answer (3.1 from 2.45 at 20 steps, by the power law), the valley point at
    24 steps renders the shifts on both sides before it climbs, and so the exact 3.05."""
    from parity.diagnose.fit import valley_point

    fit = _fit_at(RECORDED.with_(sample_steps=24, schedule="static:3.05", semantics="aitk"), needle_picture)
    start = fit.point_of(RECORDED)
    known = (20.0,) + start[1:3] + (2.45,)
    fit.evaluate(known)
    q = valley_point(fit, [known], 24.0, 0, 3)
    assert q == (24.0,) + start[1:3] + (3.05,) and fit.evals[q].score[1] == "EXACT"


def ridge_picture(spec: RenderSpec) -> np.ndarray:
    """A picture the guidance and the multiplier move mostly together, along guidance + 2.5 x multiplier (a ridge
    whose multiplier falls 0.04 per 0.1 of guidance, as measured on the smooth tiny model), and a little apart."""
    y, x = np.mgrid[0:64, 0:64] / 64.0
    c = spec.guidance_scale + 2.5 * spec.network_multiplier
    lum = 128 + 70 * np.sin(3.0 * x + 2.0 * y + 1.5 * c) + 12 * np.sin(5.0 * x * y + 0.8 * spec.guidance_scale)
    lum = np.clip(lum, 0, 255)
    return np.stack([lum, lum * 0.9, 255 - lum], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("guidance, multiplier, start_guidance", [(5.7, 1.17, 5.8), (5.7, 1.17, 6.3), (3.2, 0.9, 2.6)])
def test_the_guidance_multiplier_ridge_is_walked_to_the_exact_point(guidance, multiplier, start_guidance):
    """From a point on the guidance-multiplier ridge, guidance steps away, the ridge walk (the valley walk of that
    pair) reaches the exact answer: the multiplier placed on the ridge by the slope that the renders around the
    start measure (`ridge_slope`), the guidance line-searched, each ridge point three renders or more (its
    predicted multiplier and both neighbours): at most six per guidance grid step (5 to 6 measured)."""
    from parity.diagnose.fit import ridge_pairs, ridge_slope, walk_valley

    render = Counting(ridge_picture)
    fit = _fit_at(RECORDED.with_(guidance_scale=guidance, network_multiplier=multiplier), render)
    start = fit.point_of(RECORDED)
    pair = ridge_pairs(fit)[1]
    assert [fit.axes[i].knob for i in pair] == ["guidance", "lora_scale"]
    on_ridge = round((multiplier - (start_guidance - guidance) / 2.5) * 100) / 100
    p = (start[0], start_guidance, on_ridge, start[3])
    for q in (p, (start[0], start_guidance + 0.1, on_ridge, start[3]), (start[0], start_guidance, on_ridge + 0.02, start[3])):
        fit.evaluate(q)   # the start and a Jacobian's two columns, as a fit leaves them
    assert fit.evals[p].score[1] != "EXACT"
    assert ridge_slope(fit, p, *pair) == pytest.approx(-0.4 * 0.1 / 0.02, rel=0.25)   # in the fit's units
    before = render.renders
    q = walk_valley(fit, p, pair)
    assert q is not None and (q[1], q[2]) == (guidance, multiplier) and fit.evals[q].score[1] == "EXACT"
    assert render.renders - before <= 6 * round(abs(start_guidance - guidance) * 10)


def test_a_stall_during_the_valley_walk_ends_the_start():
    """The stall rule (`fit_from`: a coarse start must gain within STALL renders) holds inside the valley walk
    too: the walk does not swallow it and keep the stalled start going (measured on held-out model 7341, 14
    steps: the start at a coarse shift of 2.3 stalled at its 12th render, inside the walk, and went on for five
    more renders before the recorded values had their turn)."""
    from parity.diagnose.fit import Stalled, walk_valley

    fit = _fit_at(RECORDED.with_(sample_steps=29, schedule="static:3.9", semantics="aitk"), rising_valley_picture)
    start = fit.point_of(RECORDED)
    p = (20.0,) + start[1:3] + (2.6,)
    here = fit.evaluate(p)
    fit.best_since, fit.near_since = here.score[0], False
    fit.watch = (fit.session.extra_renders + 1, here.score[0] + 100.0)   # due at the walk's first render
    with pytest.raises(Stalled):
        walk_valley(fit, p)


def test_the_residual_sees_colour_and_weighs_each_pixel_once():
    """A change of colour at equal luminance moves the residual (on the smooth tiny model the knobs move the
    chroma smoothly while the luminance blocks rise and fall), and a uniform change of d in Cb weighs what the
    same change in Y does: every pixel counts once whatever its plane's resolution."""
    grey = np.full((64, 64, 3), 128.0)
    d = 10.0
    luma = grey + d                                                # Y + d; Cb, Cr unchanged
    blue = grey + np.array([0.0, -0.344136, 1.772]) * d            # Cb + d; Y, Cr unchanged (JFIF's inverse)
    r0 = residual_blocks(grey)
    dy, db = residual_blocks(luma) - r0, residual_blocks(blue) - r0
    luminance = slice(0, 16 * 16)
    assert float(db[luminance] @ db[luminance]) == pytest.approx(0.0, abs=1e-9)
    assert float(dy @ dy) == pytest.approx(16 * 16 * (d / 255) ** 2)
    assert float(db @ db) == pytest.approx(float(dy @ dy), rel=1e-4)


def test_a_near_fit_one_grid_step_off_climbs_to_the_exact_point():
    """A fit that ends near the answer with one knob a grid step off (its last step was a whole scaled unit, or
    its share of the budget ran out) reaches the answer through the grid neighbours of the knobs it moved."""
    truth = RECORDED.with_(guidance_scale=4.6, network_multiplier=0.83, schedule="static:2.5", semantics="aitk")
    fit = _fit_at(truth)
    p = (20.0, 4.6, 0.83, 2.45)
    assert fit.evaluate(p).score[1] != "EXACT"
    before = fit.session.extra_renders
    end = climb(fit, p)
    assert end == (20.0, 4.6, 0.83, 2.5) and fit.evals[end].score[1] == "EXACT"
    assert fit.session.extra_renders - before <= 6    # one grid step either side of the three moved knobs


def rippled_picture(spec: RenderSpec) -> np.ndarray:
    """`picture` with a ripple over the shift that vanishes at 3.85 only: 4.0 is a local best 3 grid steps away
    (44 dB, its neighbours 37 and 35 dB), as the tiny model is rough at the grid's scale near its answers."""
    y, x = np.mgrid[0:64, 0:64] / 64.0
    ripple = 6.0 * np.sin(40.0 * ((equivalent_shift(spec) or 1.0) - 3.85)) * np.sin(5.0 * x + 1.0)
    return np.clip(picture(spec).astype(float) + ripple[..., None], 0, 255).astype(np.uint8)


def test_a_fit_of_two_knobs_that_stopped_near_scans_each_knobs_neighbourhood():
    """Once per set of moving knobs: the ripple's local best is where the one-knob scan found nothing to do
    (until then only a one-knob fit scanned; this case then spent all 90 renders)."""
    truth = RECORDED.with_(guidance_scale=5.7, schedule="static:3.85", semantics="aitk")
    target = rippled_picture(truth)
    render = Counting(rippled_picture)
    session = Session(render, score, target, budget=90, cache=RenderCache(), metric="psnr")
    session.score(RECORDED, free=True)
    fit = ImageFit(RECORDED, session, target_blocks(target), axes_for(RECORDED), lambda s: s[1] == "EXACT",
                   near=lambda s: s[1] in ("NEAR", "EXACT"))
    p = (20.0, 5.7, 1.0, 4.0)
    assert fit.evaluate(p).score[1] == "NEAR"
    end = grow(fit, p, [1, 3])
    assert end == (20.0, 5.7, 1.0, 3.85) and fit.evals[end].score[1] == "EXACT"
    assert render.renders <= 30


def noisy_picture(spec: RenderSpec) -> np.ndarray:
    """`picture` below guidance 9; above it a picture that changes at random with every knob (a region of no
    basin, as the tiny models' pictures are far from their answers)."""
    if spec.guidance_scale < 9:
        return picture(spec)
    key = round(spec.guidance_scale * 10) * 1000 + spec.sample_steps * 7 + round(spec.network_multiplier * 100)
    noise = np.random.default_rng(key).normal(0, 40, (64, 64, 1))
    return np.clip(picture(spec.with_(guidance_scale=5.5)).astype(float) + noise, 0, 255).astype(np.uint8)


def test_a_start_in_no_basin_yields_to_the_next_within_the_stall_renders():
    from parity.diagnose.fit import STALL, fit_from

    target = noisy_picture(RECORDED.with_(guidance_scale=6.1))
    render = Counting(noisy_picture)
    session = Session(render, score, target, budget=90, cache=RenderCache(), metric="psnr")
    start_score = session.score(RECORDED, free=True)
    fit = ImageFit(RECORDED, session, target_blocks(target), axes_for(RECORDED), lambda s: s[1] == "EXACT",
                   near=lambda s: s[1] in ("NEAR", "EXACT"))
    here = fit.point_of(RECORDED)
    starts = [(20.0, 11.5) + here[2:], (20.0, 5.5) + here[2:]]   # as the coarse scan ranked them on model 1482
    for s in starts:
        fit.evaluate(s)
    before = render.renders
    out = fit_from(fit, starts, start_score, 0.6, 6)
    assert out[-1].changes == {"guidance": 6.1} and out[-1].score[1] == "EXACT"
    assert render.renders - before <= STALL + 6     # without the rule: 55 renders, the first start its share


def test_the_valley_partner_joins_a_fit_of_one_of_a_pair_alone():
    """Steps and the shift trade off along a valley: a fit of one of them alone that stopped short of exact takes
    the other next (on model 6213 the Jacobian chose the multiplier, and 15 steps + shift 1.3 was never found);
    so do the guidance and the multiplier (on model 9086, guidance 6.6 + multiplier 0.47, the multiplier fitted
    alone and the Jacobian sent the steps to 100); a fit that already moves another knob, or a partner put back
    by the backward elimination, chooses as before."""
    from parity.diagnose.fit import valley_partner

    fit = _fit_at(RECORDED.with_(sample_steps=15, schedule="static:1.3", semantics="aitk"), valley_picture)
    steps, guidance, multiplier, shift = range(4)
    assert [a.knob for a in fit.axes] == ["steps", "guidance", "lora_scale", "schedule"]
    assert valley_partner(fit, [shift], [steps, guidance, multiplier]) == steps
    assert valley_partner(fit, [steps], [guidance, multiplier, shift]) == shift
    assert valley_partner(fit, [shift, multiplier], [steps, guidance]) is None
    assert valley_partner(fit, [shift], [guidance, multiplier]) is None      # the steps were put back
    assert valley_partner(fit, [guidance], [steps, multiplier, shift]) == multiplier
    assert valley_partner(fit, [multiplier], [steps, guidance, shift]) == guidance
    assert valley_partner(fit, [guidance], [steps, shift]) is None      # the multiplier was put back
    assert valley_partner(fit, [guidance, steps], [multiplier, shift]) is None


def two_summit_picture(spec: RenderSpec) -> np.ndarray:
    """The picture of 30 steps at a static shift of 3.2, plus a pattern whose strength grows with the distance
    (in grid steps) from that answer, or from a false summit 2 steps and 2 shift grid steps away, whichever is
    less: a landscape with two local maxima as around the tiny models' answers (benchmarks/landscape.py)."""
    dn = spec.sample_steps - 30
    ds = round(((equivalent_shift(spec) or 1.0) - 3.2) / 0.05)
    strength = min(dn ** 2 + ds ** 2, 0.5 + (dn - 2) ** 2 + (ds + 2) ** 2)
    y, x = np.mgrid[0:64, 0:64] / 64.0
    pattern = 3.0 * np.sqrt(strength) * np.sin(5.0 * x + 1.0) * np.cos(3.0 * y)
    truth = spec.with_(sample_steps=30, schedule="static:3.2")
    return np.clip(picture(truth).astype(float) + pattern[..., None], 0, 255).astype(np.uint8)


def test_a_near_point_on_a_false_summit_expands_best_first_to_the_answer():
    """climb stops on the false summit (no neighbour is better); the best-first expansion renders the next best
    points' neighbourhoods and reaches the answer two grid steps away on both knobs."""
    truth = RECORDED.with_(sample_steps=30, schedule="static:3.2", semantics="aitk")
    render = Counting(two_summit_picture)
    fit = _fit_at(truth, render=render)
    summit = (32.0, 4.0, 1.0, 3.1)
    assert fit.evaluate(summit).score[1] != "EXACT"
    assert climb(fit, summit) == summit
    before = render.renders
    end = expand(fit, summit)
    assert end == (30.0, 4.0, 1.0, 3.2) and fit.evals[end].score[1] == "EXACT"
    assert render.renders - before <= 24


def swap_picture(spec: RenderSpec) -> np.ndarray:
    """The valley of `valley_picture` (steps and the shift act through one combination) plus a guidance term: a
    preview whose shift changed is also fitted, a little worse, by other steps at the recorded shift."""
    y, x = np.mgrid[0:64, 0:64] / 64.0
    c = np.log(equivalent_shift(spec) or 1.0) - 0.8 * np.log(spec.sample_steps / 20.0)
    lum = (128 + 50 * np.sin(3.0 * x + 2.0 * y + 4.0 * c) + 40 * np.sin(2.0 * spec.guidance_scale * x + 1.5 * y)
           + 1.5 * np.sin(7.0 * x * y) * spec.sample_steps / 10.0)
    lum = np.clip(lum, 0, 255)
    return np.stack([lum, lum * 0.9, 255 - lum], axis=-1).astype(np.uint8)


def test_a_near_fit_that_moved_the_steps_for_the_shift_swaps_them():
    """Guidance 5.3 + shift 2.5 fitted as guidance 5.3 + 11 steps at the recorded shift (NEAR, on the valley):
    with the steps back at 20, the shift fitted alone reaches 2.5, and the knobs moving are guidance and shift."""
    from parity.diagnose.fit import swap

    render = Counting(swap_picture)
    fit = _fit_at(RECORDED.with_(guidance_scale=5.3, schedule="static:2.5", semantics="aitk"), render)
    start = fit.point_of(RECORDED)
    p = (11.0, 5.3) + start[2:]
    assert fit.evaluate(p).score[1] == "NEAR"
    before = render.renders
    out = swap(fit, p, [0, 1])
    assert out is not None
    q, moving = out
    assert q == (20.0, 5.3, 1.0, 2.5) and fit.evals[q].score[1] == "EXACT" and sorted(moving) == [1, 3]
    assert render.renders - before <= 12
    assert swap(fit, (20.0, 5.3) + start[2:], [1]) is None      # neither the steps nor the shift moved


def narrow_picture(spec: RenderSpec) -> np.ndarray:
    """`picture` at a static shift of 1.95, plus a pattern that fades only within a grid step of that shift: as on
    the tiny models,
    the shift's change is seen only near its answer, so the Jacobian one unit away from the recorded shift sees
    nothing while the picture is NEAR."""
    y, x = np.mgrid[0:64, 0:64] / 64.0
    shift = equivalent_shift(spec) or 1.0
    strength = 1.0 - np.exp(-(((shift - 1.95) / 0.06) ** 4))
    pattern = 4.0 * strength * np.sin(5.0 * x + 1.0) * np.cos(3.0 * y)
    base = picture(spec.with_(schedule="static:1.95", semantics="aitk"))   # the shift acts through the pattern only
    return np.clip(base.astype(float) + pattern[..., None], 0, 255).astype(np.uint8)


def test_a_near_fit_scans_the_knobs_it_has_not_moved():
    """Guidance and multiplier found (NEAR), the shift still recorded: `climb` (one grid step) and the expansion
    over the moved knobs cannot reach a shift of 1.95; the scan of the unmoved knobs renders 1.9 (3 dB better) and
    the climb from there reaches it exactly."""
    from parity.diagnose.fit import polish

    render = Counting(narrow_picture)
    fit = _fit_at(RECORDED.with_(guidance_scale=5.3, network_multiplier=0.83, schedule="static:1.95",
                                 semantics="aitk"), render)
    start = fit.point_of(RECORDED)
    p = (20.0, 5.3, 0.83, start[3])
    assert fit.evaluate(p).score[1] == "NEAR"
    before = render.renders
    end = polish(fit, p)
    assert end == (20.0, 5.3, 0.83, 1.95) and fit.evals[end].score[1] == "EXACT"
    assert render.renders - before <= 30


def _flat(level_of):
    """A renderer of flat grey pictures, the level a function of the guidance: against a black target, PSNR
    20 log10(255 / level)."""
    def draw(spec: RenderSpec) -> np.ndarray:
        return np.full((64, 64, 3), level_of(spec.guidance_scale), dtype=np.uint8)
    return draw


@pytest.mark.parametrize("near_on_the_way", [False, True])
def test_a_start_must_go_on_gaining_until_a_render_is_near(near_on_the_way):
    """The stall watch, once passed, is set again: a coarse start must gain STALL_GAIN in every STALL renders, until
    a render is near (then it is the polish's to finish)."""
    from parity.diagnose.fit import STALL, Stalled

    def level(g: float) -> int:   # 40 grey levels at 5.0, 20 (+6 dB) by 6.0, then flat; or 2 (NEAR) at 5.5
        return 2 if near_on_the_way and g == 5.5 else max(20, 40 - round((g - 5.0) * 20))

    target = np.zeros((64, 64, 3), dtype=np.uint8)
    session = Session(Counting(_flat(level)), score, target, budget=None, cache=RenderCache(), metric="psnr")
    fit = ImageFit(RECORDED, session, target_blocks(target), axes_for(RECORDED), lambda s: s[1] == "EXACT",
                   near=lambda s: s[1] in ("NEAR", "EXACT"))
    start = fit.point_of(RECORDED)
    point = [start[:1] + (round(5.0 + 0.1 * i, 1),) + start[2:] for i in range(3 * STALL)]
    fit.best_since = fit.evaluate(point[0]).score[0]
    fit.watch = (session.extra_renders + STALL, fit.best_since + 1.0)
    for p in point[1:2 * STALL - 1]:   # the first STALL renders gain: the watch passes (set again unless near)
        fit.evaluate(p)
    if near_on_the_way:
        for p in point[2 * STALL - 1:]:
            fit.evaluate(p)
    else:
        with pytest.raises(Stalled):
            for p in point[2 * STALL - 1:]:
                fit.evaluate(p)
        assert session.extra_renders == 2 * STALL + 1


def test_a_fit_far_ahead_of_its_start_ends_the_starts():
    """A fit 6 dB (FIT_LEAD) above its own start ends the starts even when it is not near: the next starts are
    coarse points no better than that start, and the score's descent goes on from the fit instead."""
    from parity.diagnose.fit import FIT_LEAD, fit_from

    target = picture(RECORDED.with_(guidance_scale=5.3, network_multiplier=0.83, schedule="static:2.5",
                                    semantics="aitk"))
    session = Session(Counting(), score, target, budget=90, cache=RenderCache(), metric="psnr")
    start_score = session.score(RECORDED, free=True)
    fit = ImageFit(RECORDED, session, target_blocks(target), axes_for(RECORDED), lambda s: s[1] == "EXACT",
                   near=lambda s: s[1] in ("NEAR", "EXACT"))
    here = fit.point_of(RECORDED)
    starts = [(20.0, 4.6) + here[2:], (20.0, 1.5) + here[2:]]
    first = fit.evaluate(starts[0]).score[0]
    fit.evaluate(starts[1])
    out = fit_from(fit, starts, start_score, 0.1, 6)   # a share of 0.1: the first fit stops short of near
    assert len(out) == 1 and out[0].score[1] == "DRIFT" and out[0].score[0] >= first + FIT_LEAD["psnr"]



@pytest.mark.parametrize("lead", [True, False])
def test_a_fit_far_ahead_of_its_start_is_polished_though_not_near(monkeypatch, lead):
    """A fit that ends FIT_LEAD (6 dB) above its start is polished like a near one (its knobs' neighbourhood
    scanned, the ridges walked), though the comparison does not call it near; one that gained less is not. The
    fit itself is replaced by its end point here, so only the rule is under test."""
    import parity.diagnose.fit as F

    target = picture(RECORDED.with_(guidance_scale=5.3))
    session = Session(Counting(), score, target, budget=90, cache=RenderCache(), metric="psnr")
    start_score = session.score(RECORDED, free=True)
    fit, probe = (ImageFit(RECORDED, session, target_blocks(target), axes_for(RECORDED), lambda s: s[1] == "EXACT",
                           near=lambda s: s[1] in ("NEAR", "EXACT")) for _ in range(2))
    here = fit.point_of(RECORDED)
    start = fit.evaluate(here).score[0]
    gained = {v: probe.evaluate(F.replaced(here, 1, v)).score for v in (4.1, 4.2, 4.4, 4.6, 4.8, 5.0)}
    ends = [F.replaced(here, 1, v) for v, (db, tier) in gained.items() if tier == "DRIFT"
            and (db >= start + F.FIT_LEAD["psnr"]) == lead and db > start]
    assert ends, gained   # the picture offers a fit's end of each kind
    end, polished = ends[0], []
    monkeypatch.setattr(F, "grow", lambda f, s, moved: f.evaluate(end))
    monkeypatch.setattr(F, "polish", lambda f, p: polished.append(p) or p)
    F.fit_from(fit, [here], start_score, 1.0, 6)
    assert polished == ([end] if lead else [])

def creeping_picture(spec: RenderSpec) -> np.ndarray:
    """A picture the steps move only by a fraction of a grey level over their whole range (as renders past 60
    steps hardly change), guidance moving it a lot."""
    y, x = np.mgrid[0:64, 0:64] / 64.0
    lum = (128 + 60 * np.sin(3 * x + 2 * y) + 30 * np.sin(2 * spec.guidance_scale * x)
           + 0.6 * np.sin(9 * x * y) * min(spec.sample_steps, 100) / 100)
    return np.stack([lum, lum * 0.9, 255 - lum], axis=-1).clip(0, 255).astype(np.uint8)


def test_a_stopped_fit_does_not_walk_on_gains_of_hundredths_of_a_db():
    """From 100 steps on a plateau, every step down scores a hair better: the walk moves only on
    WALK_GAIN (without it, it walks step by step until the case budget is spent)."""
    render = Counting(creeping_picture)
    fit = _fit_at(RECORDED.with_(guidance_scale=5.3), render)
    p = (100.0,) + fit.point_of(RECORDED)[1:]
    here = fit.evaluate(p)
    J, _ = fit.jacobian(p, here, [0])
    before = render.renders
    assert fit.walk(p, here, J, [0]) == p
    assert render.renders - before <= 6


def test_a_walk_that_keeps_gaining_doubles_its_stride():
    """A steady climb of one knob (guidance from 8.5 to the answer 7.2, better at every grid step) costs about the
    logarithm of its length: `run_on` doubles the stride while the score rises, the neighbours take it back past
    the answer. One grid step at a time it is 13 renders."""
    from parity.diagnose.fit import replaced

    render = Counting(_flat(lambda g: round(20 * abs(g - 7.2))))
    fit = _fit_at(RECORDED.with_(guidance_scale=7.2), render)   # the target: black
    g = next(i for i, a in enumerate(fit.axes) if a.knob == "guidance")
    p = replaced(fit.point_of(RECORDED), g, 8.5)
    here = fit.evaluate(p)
    before = render.renders
    end = fit.walk(p, here, np.zeros((len(here.residual), len(fit.axes))), [g])
    assert end[g] == 7.2 and fit.exact(fit.evals[end].score)
    assert render.renders - before <= 9


def test_an_answer_claims_what_its_spec_sets_not_a_stale_change():
    """A merged answer can carry a change that a later move replaced or put back (the fit's shift of 1.5 kept
    while the valley walk moved steps and shift to the exact 16 + 2.2): the claim is what the scored spec sets
    against the recorded one, in the answer's order, the knobs outside the search kept as they are."""
    from parity.diagnose.recover import Descent
    from parity.diagnose.suspects import claimed_changes

    found = RECORDED.with_(sample_steps=16, guidance_scale=7.2, schedule="static:2.2", semantics="aitk")
    stale = Descent(found, (1000.0, "EXACT"), changes={"guidance": 7.2, "schedule": "static:1.5", "seed": 9})
    assert claimed_changes(RECORDED, stale) == {"guidance": 7.2, "schedule": "static:2.2", "seed": 9, "steps": 16}
    back = Descent(RECORDED.with_(guidance_scale=7.2), (1000.0, "EXACT"),
                   changes={"guidance": 7.2, "schedule": "static:1.6"})   # AI Toolkit's own shift, as the grid names it
    assert claimed_changes(RECORDED, back) == {"guidance": 7.2}


def lone_steps_picture(spec: RenderSpec) -> np.ndarray:
    """`picture` with fine noise everywhere but at 27 steps and the recorded schedule: a preview whose steps alone
    changed, where the score near the answer is a needle (as on the tiny models: held-out run 21, 42 steps at AI
    Toolkit's shift, scored 32.8 dB at 49 steps, 37.8 at 51, 32.8 at 52)."""
    base = picture(spec).astype(float)
    if spec.sample_steps == 27 and spec.schedule == RECORDED.schedule:
        return base.astype(np.uint8)
    noise = np.random.default_rng(spec.sample_steps * 1000 + round((equivalent_shift(spec) or 1.0) * 20))
    return np.clip(base + noise.uniform(-8, 8, base.shape[:2])[..., None], 0, 255).astype(np.uint8)


def test_a_near_point_that_moved_steps_and_shift_tries_each_alone():
    """A near point that moved both the steps and the shift: the shift put back to its recorded value and the
    steps' line scanned around the point, nearest first, reaches a preview whose steps alone changed (27 from 31
    steps + shift 1.45: nine renders); a point that moved one of the two is not projected."""
    from parity.diagnose.fit import project

    render = Counting(lone_steps_picture)
    fit = _fit_at(RECORDED.with_(sample_steps=27), render)
    start = fit.point_of(RECORDED)
    p = (31.0,) + start[1:3] + (1.45,)
    fit.evaluate(p)
    before = render.renders
    q = project(fit, p)
    assert q == (27.0,) + start[1:] and fit.evals[q].score[1] == "EXACT"
    assert render.renders - before == 9      # 31 at the recorded shift, then 32, 30, 33, 29, 34, 28, 35, 27
    before = render.renders
    assert project(fit, (31.0,) + start[1:]) is None and render.renders == before
