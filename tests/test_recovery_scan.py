"""Global-before-local parameter recovery on pure fakes: two basins, the tie-break on another item, "ambiguous".

The fake renderer returns the spec itself; the fake comparisons below are written here as functions of the spec
(two basins that explain a target equally well), so what the search must say follows from them, not from the code.
"""

from __future__ import annotations

import numpy as np

from parity.diagnose import suspect_search
from parity.spec import RenderSpec

RECORDED = RenderSpec(prompt="ohwx a cat", width=512, height=512, seed=3, sample_steps=20, guidance_scale=4.0,
                      lora_path="/l.safetensors", network_multiplier=1.0)
A_STEPS = 11            # basin A: 11 steps at the recorded schedule
B_SHIFT = 2.3           # basin B: a static shift of 2.3 at the recorded 20 steps


class FakeEngine:
    def __init__(self):
        self.calls: list[RenderSpec] = []

    def render(self, spec: RenderSpec) -> np.ndarray:
        self.calls.append(spec)
        out = np.empty((), dtype=object)
        out[()] = spec
        return out


def _shift(spec: RenderSpec) -> float:
    """The static shift, or AI Toolkit's mu at 512 px as a shift (e^mu, 1.88; aitk-flux2-previews.md C step 9)."""
    return float(spec.schedule.split(":")[1]) if spec.schedule.startswith("static:") else 1.88


def two_basins(a_top: float, b_top: float):
    """Steps and the shift trade off: near A the score falls 0.01 per step away, near B 0.01 per 0.05 of shift;
    any other knob away from the recorded value costs 0.05 per unit. A's peak scores `a_top`, B's `b_top`."""
    def score(image, target) -> float:
        s: RenderSpec = image[()]
        other = 0.05 * (abs(s.guidance_scale - 4.0) + abs(s.network_multiplier - 1.0))
        shift = _shift(s)
        a = a_top - 0.01 * abs(s.sample_steps - A_STEPS) - 0.2 * abs(shift - 1.88)
        b = b_top - 0.01 * abs(s.sample_steps - 20) - 0.2 * abs(shift - B_SHIFT)
        return max(0.0, max(a, b) - other)
    return score


def test_two_answers_within_the_noise_are_reported_as_ambiguous_with_both_values():
    s = suspect_search("p.jpg", RECORDED, FakeEngine().render, two_basins(0.97, 0.968), preview_size=(512, 512))
    assert not s.explained
    assert [a["changes"] for a in s.ambiguous] == [{"steps": A_STEPS}, {"schedule": f"static:{B_SHIFT:g}"}]
    assert s.verdict == (f"ambiguous: {A_STEPS} steps or static shift {B_SHIFT:g} explain equally "
                         "(0.970 vs 0.968)")
    # both basins were searched: each knob's trace (the report's curves) reaches its answer
    assert any(t.knob == "steps" and t.best == A_STEPS for t in s.searches)
    assert any(t.knob == "schedule" and t.best == f"static:{B_SHIFT:g}" for t in s.searches)


def test_a_clearly_better_basin_is_named_without_ambiguity():
    s = suspect_search("p.jpg", RECORDED, FakeEngine().render, two_basins(0.95, 1.0), preview_size=(512, 512))
    assert s.explained and not s.ambiguous
    assert {b.knob: b.value for b in s.best} == {"schedule": f"static:{B_SHIFT:g}"}


def test_another_item_separates_two_answers_that_tie_on_the_first():
    """The second prompt is reproduced exactly by basin B only: rendering both answers there decides."""
    other = RECORDED.with_(prompt="ohwx a dog", seed=4)

    def score(image, target):
        if target == "q.jpg":  # the other item: only B reproduces it
            s: RenderSpec = image[()]
            return 1.0 if (_shift(s) == B_SHIFT and s.sample_steps == 20) else 0.9
        return two_basins(0.97, 0.968)(image, target)

    eng = FakeEngine()
    s = suspect_search("p.jpg", RECORDED, eng.render, score, preview_size=(512, 512), others=[("q.jpg", other)])
    assert not s.ambiguous and {b.knob: b.value for b in s.best} == {"schedule": f"static:{B_SHIFT:g}"}
    assert other.with_(schedule=f"static:{B_SHIFT:g}") in eng.calls
    assert s.extra_renders == len(eng.calls) - 1   # the tie-break's renders count against the budget
