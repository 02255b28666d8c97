"""Attribution and suspect search with pure fakes: the ranking, memoisation and budget logic.

The fake "renderer" encodes the spec in a small vector and the fake "comparison" scores it against the preview's
spec with weights chosen here, so every expected ranking follows from these weights, not from the code under test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from parity.diagnose import attribute, causes_list, param_diff, suspect_search
from parity.diagnose.cache import RenderCache
from parity.spec import RenderSpec, ResolvedSpec

PREVIEW = RenderSpec(prompt="ohwx a cat", width=512, height=512, seed=3, sample_steps=20, guidance_scale=7.0,
                     lora_path="/l.safetensors", network_multiplier=1.0)
# Loss per differing knob (seed dominates: a different seed is a different picture).
WEIGHTS = {"seed": 0.6, "resolution": 1.0, "schedule": 0.3, "steps": 0.15, "guidance": 0.1, "lora_scale": 0.08}
FIELDS = {"seed": ("seed",), "resolution": ("width", "height"), "schedule": ("schedule", "semantics"),
          "steps": ("sample_steps",), "guidance": ("guidance_scale",), "lora_scale": ("network_multiplier",)}


class FakeEngine:
    """render(spec) -> the spec itself wrapped in a 0-d object array; counts calls."""

    def __init__(self):
        self.calls: list[RenderSpec] = []

    def render(self, spec: RenderSpec) -> np.ndarray:
        self.calls.append(spec)
        out = np.empty((), dtype=object)
        out[()] = spec
        return out


def fake_score(truth: RenderSpec, *, interaction: bool = False):
    """Score 1 - sum of weights of differing knobs. With `interaction`, while the seed differs the other knobs
    barely matter (each counts a tenth), as in real images where a wrong seed swamps everything else."""
    def score(image: np.ndarray, preview) -> float:
        s: RenderSpec = image[()]
        bad = [k for k, fs in FIELDS.items() if any(getattr(s, f) != getattr(truth, f) for f in fs)]
        if interaction and "seed" in bad:
            return max(0.0, 1 - WEIGHTS["seed"] - sum(WEIGHTS[k] / 10 for k in bad if k != "seed"))
        return max(0.0, 1 - sum(WEIGHTS[k] for k in bad))
    return score


def test_single_knob_is_ranked_first_and_explains():
    eng = FakeEngine()
    inf = PREVIEW.with_(guidance_scale=4.0)
    a = attribute("p.jpg", PREVIEW, inf, eng.render, fake_score(PREVIEW))
    assert a.baseline == pytest.approx(0.9)
    assert [c.knob for c in a.causes] == ["guidance"]
    c = a.causes[0]
    assert (c.value_preview, c.value_inference) == (7.0, 4.0)
    assert c.ssim_aligned == pytest.approx(1.0) and a.all_aligned == pytest.approx(1.0)
    assert a.explained is True
    assert len(eng.calls) == 2  # inference render + the aligned render (all-aligned is the same spec)
    assert causes_list(a) == [{"knob": "guidance", "value_preview": 7.0, "value_inference": 4.0, "ssim_aligned": 1.0}]


def test_ranking_follows_recovered_similarity():
    eng = FakeEngine()
    inf = PREVIEW.with_(sample_steps=25, guidance_scale=4.0, schedule="empirical", network_multiplier=0.5)
    a = attribute("p.jpg", PREVIEW, inf, eng.render, fake_score(PREVIEW))
    # recovered = the knob's weight: schedule 0.3 > steps 0.15 > guidance 0.1 > lora_scale 0.08
    assert [c.knob for c in a.causes] == ["schedule", "steps", "guidance", "lora_scale"]
    assert a.causes[0].recovered == pytest.approx(0.3)
    assert a.explained is True
    # 1 inference + 1 all-aligned + 4 singles + 4 leave-one-out
    assert a.extra_renders == 9 and len(eng.calls) == 10


def test_interacting_knobs_are_both_named():
    eng = FakeEngine()
    inf = PREVIEW.with_(seed=44, guidance_scale=4.0)
    a = attribute("p.jpg", PREVIEW, inf, eng.render, fake_score(PREVIEW, interaction=True))
    knobs = [c.knob for c in a.causes]
    assert knobs == ["seed", "guidance"]
    g = a.causes[1]
    # aligning guidance alone recovers almost nothing (seed still wrong), but leaving it out costs its weight
    assert g.recovered == pytest.approx(0.01)
    assert g.necessity == pytest.approx(0.1)
    assert a.all_aligned == pytest.approx(1.0) and a.explained
    assert len(eng.calls) == 4  # with two knobs the leave-one-out renders are the singles, from the cache


def test_unexplained_gap():
    truth = PREVIEW.with_(sample_steps=30)  # the preview was really made with 30 steps; the record says 20
    a = attribute("p.jpg", PREVIEW, PREVIEW.with_(guidance_scale=4.0), FakeEngine().render, fake_score(truth))
    assert a.all_aligned == pytest.approx(0.85) and a.explained is False


def test_budget_caps_extra_renders_and_names_skipped_knobs():
    eng = FakeEngine()
    inf = PREVIEW.with_(sample_steps=25, guidance_scale=4.0, schedule="empirical")
    a = attribute("p.jpg", PREVIEW, inf, eng.render, fake_score(PREVIEW), budget=2)
    assert a.extra_renders == 2 and len(eng.calls) == 3
    assert a.all_aligned == pytest.approx(1.0)  # the all-aligned render goes first
    skipped = {s["knob"] for s in a.skipped}
    tried = [c.knob for c in a.causes if c.ssim_aligned is not None]
    assert len(tried) == 1 and skipped == {"schedule", "steps", "guidance"} - set(tried)
    assert tried == ["schedule"]  # the likeliest large effect first (section G)
    a0 = attribute("p.jpg", PREVIEW, inf, FakeEngine().render, fake_score(PREVIEW), budget=0)
    assert a0.all_aligned is None and a0.explained is None and a0.extra_renders == 0


def test_items_with_the_same_knob_set_share_renders():
    eng = FakeEngine()
    cache = RenderCache()
    inf = PREVIEW.with_(guidance_scale=4.0, sample_steps=25)
    a1 = attribute("p.jpg", PREVIEW, inf, eng.render, fake_score(PREVIEW), cache=cache)
    n = len(eng.calls)
    a2 = attribute("p.jpg", PREVIEW, inf, eng.render, fake_score(PREVIEW), cache=cache, budget=0)
    assert len(eng.calls) == n and a2.extra_renders == 0
    assert [c.knob for c in a2.causes] == [c.knob for c in a1.causes]
    # a different preview file of the same spec reuses the renders, re-scoring them only
    attribute("other.jpg", PREVIEW, inf, eng.render, fake_score(PREVIEW), cache=cache)
    assert len(eng.calls) == n


def test_already_at_parity_and_no_differing_knobs():
    @dataclass
    class Comp:
        tier: str
        metrics: dict

    eng = FakeEngine()
    a = attribute("p.jpg", PREVIEW, PREVIEW.with_(guidance_scale=4.0), eng.render,
                  lambda img, p: Comp("NEAR", {"ssim": 0.99}))
    assert a.causes == [] and a.explained and len(eng.calls) == 1 and "parity" in a.note
    a = attribute("p.jpg", PREVIEW, PREVIEW, eng.render, lambda img, p: Comp("DRIFT", {"ssim": 0.8}))
    assert a.causes == [] and a.explained is False and "suspect" in a.note


def test_tiers_decide_explained_when_the_score_returns_a_comparison():
    score = fake_score(PREVIEW)

    def compare(img, p):
        s = score(img, p)
        return {"ssim": s, "tier": "EXACT" if s == 1.0 else "DRIFT"}

    a = attribute("p.jpg", PREVIEW, PREVIEW.with_(sample_steps=25), FakeEngine().render, compare)
    assert a.baseline_tier == "DRIFT" and a.all_aligned_tier == "EXACT" and a.explained
    assert a.causes[0].tier_aligned == "EXACT"


def test_ruled_out_knobs_are_not_rendered_alone():
    eng = FakeEngine()
    inf = PREVIEW.with_(guidance_scale=4.0, prompt="ohwx a cat ")
    a = attribute("p.jpg", PREVIEW, inf, eng.render, fake_score(PREVIEW), ruled_out=["prompt"])
    assert {"knob": "prompt", "reason": "ruled out by the input hashes"} in a.skipped
    assert a.causes[0].knob == "guidance"


def test_causes_list_entries_are_item_record_causes():
    import json

    from parity.record import ItemRecord

    inf = PREVIEW.with_(guidance_scale=4.0)
    diff = param_diff(ResolvedSpec(PREVIEW), ResolvedSpec(inf))
    a = attribute("p.jpg", PREVIEW, inf, FakeEngine().render, fake_score(PREVIEW))
    rec = ItemRecord.from_dict({"id": "x", "tier": "DRIFT", "mismatches": list(diff.mismatches),
                                "causes": causes_list(a)})
    assert rec.mismatches == ["guidance"]
    assert rec.causes[0].knob == "guidance" and rec.causes[0].extra == {}  # exactly the record's cause fields
    assert rec.causes[0].value_preview == 7.0 and rec.causes[0].value_inference == 4.0
    json.dumps(rec.to_dict())  # JSON-serialisable


# ---------------------------------------------------------------------------------------------------------------
# Suspect search (parameter recovery) on a smooth fake: each continuous knob costs a loss that grows linearly with
# the distance from the truth up to a cap (unimodal, as a trained model's response); seed and size are all or nothing.
# Exactly the truth scores 1.0, so the search must land on the truth's grid value.

SMOOTH = {"sample_steps": (0.004, 0.2), "guidance_scale": (0.05, 0.3), "network_multiplier": (0.4, 0.3)}


def smooth_score(truth: RenderSpec):
    def score(image: np.ndarray, preview) -> float:
        s: RenderSpec = image[()]
        loss = sum(min(cap, per * abs(getattr(s, f) - getattr(truth, f))) for f, (per, cap) in SMOOTH.items())
        if s.schedule != truth.schedule:
            shift = lambda x: float(x.split(":")[1]) if x.startswith("static:") else 1.6  # noqa: E731
            loss += min(0.3, 0.1 * abs(shift(s.schedule) - shift(truth.schedule)) + 0.001)
        if s.seed != truth.seed or (s.width, s.height) != (truth.width, truth.height):
            loss += 0.7
        return max(0.0, 1.0 - loss)
    return score


def _found(s) -> dict:
    return {b.knob: b.value for b in s.best}


@pytest.mark.parametrize("changes, knob, value", [
    ({"guidance_scale": 5.5}, "guidance", 5.5),
    ({"guidance_scale": 2.3}, "guidance", 2.3),
    ({"sample_steps": 12}, "steps", 12),
    ({"sample_steps": 41}, "steps", 41),
    ({"network_multiplier": 0.62}, "lora_scale", 0.62),
    ({"schedule": "static:3.15"}, "schedule", "static:3.15"),
])
def test_suspects_recover_one_knob_with_its_value(changes, knob, value):
    truth = PREVIEW.with_(**changes)
    eng = FakeEngine()
    s = suspect_search("p.jpg", PREVIEW, eng.render, smooth_score(truth), preview_size=(512, 512))
    assert s.explained and _found(s) == {knob: value}, s.verdict
    assert s.verdict.startswith("previews look like") and ", not " in s.verdict
    assert s.extra_renders <= 28 and len(eng.calls) == s.extra_renders + 1  # 30 a case, less two confirmations
    trace = next(t for t in s.searches if t.knob == knob and t.complete)
    assert trace.best == value and [p.value for p in trace.probes][-1] == value


def test_suspects_recover_two_knobs_by_coordinate_descent():
    truth = PREVIEW.with_(sample_steps=24, guidance_scale=3.0)
    s = suspect_search("p.jpg", PREVIEW, FakeEngine().render, smooth_score(truth), preview_size=(512, 512))
    assert s.explained and _found(s) == {"steps": 24, "guidance": 3.0}, s.verdict
    assert "24 steps (not 20)" in s.verdict and "guidance 3 (not 7)" in s.verdict


def test_suspects_seed_walk_patterns_when_the_picture_is_another_one():
    # recorded seed 5 at prompt index 2 with walk on; the preview was rendered with walk off (seed 3)
    truth = PREVIEW.with_(seed=3)

    def score(img, p):  # a wrong seed is another picture: tier DIFFERENT
        v = smooth_score(truth)(img, p)
        return {"ssim": v, "tier": "EXACT" if v == 1.0 else ("DIFFERENT" if v < 0.5 else "DRIFT")}

    eng = FakeEngine()
    s = suspect_search("p.jpg", PREVIEW.with_(seed=5), eng.render, score, index=2, preview_size=(512, 512))
    assert _found(s) == {"seed": 3} and s.explained
    assert "previews look like seed 3 (seed walk off), not 5" in s.verdict, s.verdict   # the knob is named
    assert len(eng.calls) == 2  # the first seed pattern tried, before any continuous search


def test_suspects_nothing_explains_and_budget():
    truth = PREVIEW.with_(prompt="something else entirely")
    eng = FakeEngine()

    def score(img, p):
        return 0.2 if img[()].prompt != truth.prompt else 1.0

    s = suspect_search("p.jpg", PREVIEW, eng.render, score, preview_size=(512, 512))
    assert not s.explained and s.best == [] and s.verdict.startswith("nothing tried explains it")
    eng = FakeEngine()
    s = suspect_search("p.jpg", PREVIEW, eng.render, score, preview_size=(512, 512), budget=30)
    assert s.extra_renders == 30 and len(eng.calls) == 31 and s.skipped


def test_a_budget_too_small_to_search_says_so_instead_of_guessing():
    from parity.diagnose.scan import minimum_renders

    truth = PREVIEW.with_(guidance_scale=5.5)
    need = minimum_renders(PREVIEW)
    eng = FakeEngine()
    s = suspect_search("p.jpg", PREVIEW, eng.render, smooth_score(truth), preview_size=(512, 512), budget=need - 1)
    assert s.not_searched and s.best == [] and not s.explained and len(eng.calls) == 1
    assert s.verdict == (f"not searched: {need - 1} extra render(s) left of the case budget, too few to search (a "
                         f"search needs at least {need}; raise --budget or budget:)")
    s = suspect_search("p.jpg", PREVIEW, FakeEngine().render, smooth_score(truth), preview_size=(512, 512), budget=0)
    assert s.not_searched and s.verdict == "not searched: no extra render left of the case budget"


def test_suspects_budget_mid_search_keeps_the_best_so_far():
    from parity.diagnose.scan import minimum_renders

    truth = PREVIEW.with_(guidance_scale=5.8, sample_steps=31)
    budget = minimum_renders(PREVIEW) + 2
    s = suspect_search("p.jpg", PREVIEW, FakeEngine().render, smooth_score(truth), preview_size=(512, 512),
                       budget=budget)
    assert s.extra_renders == budget and s.skipped == ["the rest of the search (render budget spent)"]
    assert s.best and not s.explained and s.best_score > s.baseline and s.verdict.startswith("closest: ")


def test_suspect_size_from_the_preview_file(tmp_path):
    from PIL import Image

    p = tmp_path / "prev.jpg"
    Image.new("RGB", (768, 512)).save(p)
    truth = PREVIEW.with_(width=768)
    eng = FakeEngine()
    s = suspect_search(str(p), PREVIEW, eng.render, smooth_score(truth))
    assert _found(s) == {"resolution": "768x512"} and len(eng.calls) == 2


def test_confirm_changes_on_another_item():
    from parity.diagnose import confirm_changes

    truth = PREVIEW.with_(sample_steps=12)
    found = suspect_search("p.jpg", PREVIEW, FakeEngine().render, smooth_score(truth), preview_size=(512, 512))
    other = PREVIEW.with_(prompt="ohwx a dog", seed=4)
    eng = FakeEngine()
    c = confirm_changes("q.jpg", other, found, eng.render, smooth_score(other.with_(sample_steps=12)), source="a")
    assert c.explained and c.extra_renders == 1 and c.confirmed_from == "a" and _found(c) == {"steps": 12}
    c = confirm_changes("q.jpg", other, found, FakeEngine().render, smooth_score(other.with_(sample_steps=30)))
    assert not c.explained


def test_a_stock_diffusers_stack_is_recognised_as_its_default_set():
    """Stock Flux2Pipeline: 50 steps, guidance 4 and its empirical schedule (aitk-flux2-previews.md D.1, E): the
    default sets are tried first, so the commonest mix-up costs a few renders, not a search."""
    truth = PREVIEW.with_(sample_steps=50, guidance_scale=4.0, schedule="empirical")
    eng = FakeEngine()
    s = suspect_search("p.jpg", PREVIEW, eng.render, smooth_score(truth), preview_size=(512, 512))
    assert s.explained and _found(s) == {"steps": 50, "guidance": 4.0, "schedule": "empirical"}, s.verdict
    assert s.extra_renders <= 3


# ---------------------------------------------------------------------------------------------------------------
# Global before local (parity/diagnose/scan.py): two basins that explain a target equally well, as functions of the
# spec written here; the tie-break on another item; "ambiguous".

SCAN_RECORDED = RenderSpec(prompt="ohwx a cat", width=512, height=512, seed=3, sample_steps=20, guidance_scale=4.0,
                      lora_path="/l.safetensors", network_multiplier=1.0)
A_STEPS = 11            # basin A: 11 steps at the recorded schedule
B_SHIFT = 3.2           # basin B: a static shift of 3.2 at the recorded 20 steps


def _shift(spec: RenderSpec) -> float:
    """The static shift, or AI Toolkit's mu at 512 px as a shift (e^mu, 1.88; aitk-flux2-previews.md C step 9)."""
    return float(spec.schedule.split(":")[1]) if spec.schedule.startswith("static:") else 1.88


def two_basins(a_top: float, b_top: float):
    """Steps and the shift trade off: near A the score falls 0.01 per step away, near B 0.01 per 0.05 of shift;
    any other knob away from the recorded value costs 0.05 per unit. A's peak scores `a_top`, B's `b_top`; the
    tier is EXACT at 1, NEAR from 0.96."""
    def score(image, target) -> float:
        s: RenderSpec = image[()]
        other = 0.05 * (abs(s.guidance_scale - 4.0) + abs(s.network_multiplier - 1.0))
        shift = _shift(s)
        a = a_top - 0.01 * abs(s.sample_steps - A_STEPS) - 0.2 * abs(shift - 1.88)
        b = b_top - 0.01 * abs(s.sample_steps - 20) - 0.2 * abs(shift - B_SHIFT)
        v = max(0.0, max(a, b) - other)
        return {"ssim": v, "tier": "EXACT" if v >= 1.0 else "NEAR" if v >= 0.96 else "DRIFT"}
    return score


def test_two_answers_within_the_noise_are_reported_as_ambiguous_with_both_values():
    """Both NEAR, 0.002 apart: neither is claimed, both are named."""
    s = suspect_search("p.jpg", SCAN_RECORDED, FakeEngine().render, two_basins(0.97, 0.968), preview_size=(512, 512))
    assert not s.explained
    assert [a["changes"] for a in s.ambiguous] == [{"steps": A_STEPS}, {"schedule": f"static:{B_SHIFT:g}"}]
    assert s.verdict == (f"ambiguous: {A_STEPS} steps or static shift {B_SHIFT:g} explain equally "
                         "(0.970 vs 0.968)")
    # both basins were searched: each knob's trace (the report's curves) reaches its answer
    assert any(t.knob == "steps" and t.best == A_STEPS for t in s.searches)
    assert any(t.knob == "schedule" and t.best == f"static:{B_SHIFT:g}" for t in s.searches)


def test_a_clearly_better_basin_is_named_without_ambiguity():
    s = suspect_search("p.jpg", SCAN_RECORDED, FakeEngine().render, two_basins(0.95, 1.0), preview_size=(512, 512))
    assert s.explained and not s.ambiguous
    assert {b.knob: b.value for b in s.best} == {"schedule": f"static:{B_SHIFT:g}"}


def test_two_poor_answers_are_no_explanation_ambiguous_or_not():
    """Both basins far from reproducing the target (DRIFT): the closest values are reported, nothing claimed."""
    def poor(image, target):
        return {"ssim": two_basins(0.9, 0.898)(image, target)["ssim"], "tier": "DRIFT"}

    s = suspect_search("p.jpg", SCAN_RECORDED, FakeEngine().render, poor, preview_size=(512, 512))
    assert not s.explained and not s.ambiguous and s.verdict.startswith("closest: ")


def test_another_item_separates_two_answers_that_tie_on_the_first():
    """The second prompt is reproduced exactly by basin B only: rendering both answers there decides."""
    other = SCAN_RECORDED.with_(prompt="ohwx a dog", seed=4)

    def score(image, target):
        if target == "q.jpg":  # the other item: only B reproduces it
            s: RenderSpec = image[()]
            return {"ssim": 1.0, "tier": "EXACT"} if (_shift(s) == B_SHIFT and s.sample_steps == 20) else 0.9
        return two_basins(0.97, 0.968)(image, target)

    eng = FakeEngine()
    s = suspect_search("p.jpg", SCAN_RECORDED, eng.render, score, preview_size=(512, 512), others=[("q.jpg", other)])
    assert not s.ambiguous and {b.knob: b.value for b in s.best} == {"schedule": f"static:{B_SHIFT:g}"}
    assert other.with_(schedule=f"static:{B_SHIFT:g}") in eng.calls
    assert s.extra_renders == len(eng.calls) - 1   # the tie-break's renders count against the budget


def test_pinned_knobs_from_the_step_0_previews_are_not_searched_again():
    """The step-0 previews (no LoRA) gave 12 steps: a trained item starts there and searches the others only."""
    truth = SCAN_RECORDED.with_(sample_steps=12, network_multiplier=0.62)
    eng = FakeEngine()
    s = suspect_search("p.jpg", SCAN_RECORDED, eng.render, smooth_score(truth), preview_size=(512, 512),
                       pinned={"steps": 12})
    assert s.explained and {b.knob: b.value for b in s.best} == {"steps": 12, "lora_scale": 0.62}, s.verdict
    assert all(c.sample_steps == 12 for c in eng.calls[1:])   # every render after the recorded one at 12 steps
    assert "steps" not in {t.knob for t in s.searches}
