"""Suspect search: the settings on record agree with the inference settings, yet the images differ.

Usual reasons (aitk-flux2-previews.md sections A.2 and G): the config copy no longer says what rendered the
previews (edited after the run, a resumed job with other sample settings, a LoRA strength changed), or the UI's
defaults were assumed where the code's applied. We recover the values that did render the target:
  1. the preview's own pixel size, when it differs from the recorded one (certain, one render);
  2. the seed patterns AI Toolkit and the UI produce (walk on/off, start 0/42) when the picture is another one
     (tier DIFFERENT: a seed changes the composition, the sampling knobs do not);
  3. a search over the continuous knobs, steps / guidance / multiplier / static shift (parity.diagnose.recover),
     combined by coordinate descent;
  4. what is left: the diffusers empirical schedule, and the seed patterns if not tried yet.
The answer reads "previews look like 12 steps, not 20 (SSIM 1.000 vs 0.803 with the recorded settings)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from parity.diagnose.cache import BudgetExhausted, RenderCache, RenderFn, ScoreFn, Session
from parity.diagnose.recover import AxisSearch, Descent, Scored, Valley, axes_for, descend
from parity.diagnose.fit import FIT_LEAD, ImageFit, fit_from, moves_valley, target_blocks, walk_valley
from parity.diagnose.scan import (LIFT, MIN_REFINE, SHARE, Answer, ScanResult, can_render, close, coarse_scan,
                                  coarse_starts, global_search, minimum_renders)
from parity.job.sizes import effective_size
from parity import knobs
from parity.spec import RenderSpec
from parity.tier import DIFFERENT, EXACT, explaining_tiers, explains
from parity.values import knob_text

# A change must beat the recorded settings' score by this much to count as evidence; the search climbs PSNR (dB)
# when the comparison gives one, else the plain SSIM-like score of the score callable.
MIN_GAIN = {"psnr": 0.5, "ssim": 0.01}
DIRECTION_GAIN = {"psnr": 0.05, "ssim": 0.002}   # a probe better by this sets a search direction
POLISH_GAIN = {"psnr": 0.25, "ssim": 0.005}      # once explained, one more round only while it gains this
NOISE = {"psnr": 0.5, "ssim": 0.01}              # two answers closer than this explain the target equally
SEED_GAIN = {"psnr": 2.0, "ssim": 0.1}            # a seed pattern must gain this to be adopted (seed_evidence)
START_GAIN = {"psnr": 1.0, "ssim": 0.02}          # a coarse point this much better starts a fit before the recorded values
FIT_STARTS = 3                                   # the image fit starts from this many of the coarse scan's best points
                                                 # and from the recorded values (parity.diagnose.scan.coarse_starts)
SAMPLING = tuple(knobs.searchable())   # the knobs a search moves: those with a search axis in parity.knobs


@dataclass(frozen=True)
class Candidate:
    """A discrete alternative (a seed pattern, a size, another schedule family)."""

    knob: str                      # a KNOBS name
    label: str                     # human text of the value, e.g. "3 (seed walk off)"
    changes: tuple[tuple[str, Any], ...]   # RenderSpec field -> value

    def apply(self, spec: RenderSpec) -> RenderSpec:
        return spec.with_(**dict(self.changes))

    @property
    def value(self) -> Any:
        fields = dict(self.changes)
        if self.knob == "defaults":
            return self.label
        if self.knob == "resolution":
            return f"{fields['width']}x{fields['height']}"
        return next(iter(fields.values()))


def _image_size(path: Any) -> tuple[int, int] | None:
    """(width, height) of the preview file, or None if it cannot be read (the comparison reports that)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any unreadable file: no size hint
        return None


def seed_candidates(spec: RenderSpec, index: int) -> list[Candidate]:
    """Seed walk (section A.2): on -> start + i, off -> the start for every prompt; starts 0 (code) and 42 (UI,
    and the reference server's 42 + i). Structured patterns only, never a blind scan."""
    seeds: list[tuple[int, str]] = []
    if index:
        seeds += [(spec.seed - index, f"{spec.seed - index} (seed walk off)"),
                  (spec.seed + index, f"{spec.seed + index} (seed walk on)")]
    seeds += [(index, f"{index} (start 0, walk on)"), (42 + index, f"{42 + index} (start 42, walk on)"),
              (0, "0 (start 0, walk off)"), (42, "42 (start 42, walk off)")]
    seen, out = {spec.seed}, []
    for s, label in seeds:
        if s >= 0 and s not in seen:
            seen.add(s)
            out.append(Candidate("seed", label, (("seed", s),)))
    return out


def resolution_candidate(spec: RenderSpec, preview_size: tuple[int, int] | None) -> Candidate | None:
    """The preview's own pixel size is what rendered it: the one size to try when it differs."""
    if preview_size is None or tuple(preview_size) == effective_size(spec.width, spec.height):
        return None
    w, h = preview_size
    return Candidate("resolution", f"{w}x{h}", (("width", w), ("height", h)))


# The default sets people mix up (aitk-flux2-previews.md sections A.2 and D.1): AI Toolkit's code, its UI, the
# reference server, stock diffusers. Tried first: the commonest mismatch costs four renders instead of a search.
DEFAULT_SETS: tuple[tuple[str, int, float, str | None], ...] = (
    ("AI Toolkit code defaults", 20, 7.0, None), ("AI Toolkit UI defaults", 30, 4.0, None),
    ("reference server defaults", 25, 4.0, None),            # its schedule is AI Toolkit's (section D)
    ("diffusers defaults", 50, 4.0, "empirical"))            # stock Flux2Pipeline: its empirical mu too


def default_set_candidates(spec: RenderSpec) -> list[Candidate]:
    """Each default set that differs from `spec` in steps and guidance (one knob alone the search finds)."""
    out = []
    for name, steps, guidance, schedule in DEFAULT_SETS:
        if steps == spec.sample_steps or guidance == spec.guidance_scale:
            continue
        changes: tuple[tuple[str, Any], ...] = (("sample_steps", steps), ("guidance_scale", guidance))
        if schedule and schedule != spec.schedule:
            changes += (("schedule", schedule),)
        label = f"{name} ({steps} steps, guidance {guidance:g}" + (f", {schedule} schedule)" if schedule else ")")
        out.append(Candidate("defaults", label, changes))
    return out


def schedule_candidates(spec: RenderSpec) -> list[Candidate]:
    """Schedules the continuous shift axis cannot reach: diffusers' step-dependent empirical mu."""
    return [] if spec.schedule == "empirical" else [Candidate("schedule", "empirical", (("schedule", "empirical"),))]


@dataclass
class Tried:
    knob: str
    value: Any       # the value as stored: a number, "static:2.5", "96x64", a seed
    score: float
    tier: str | None
    gain: float
    label: str = ""  # human text ("12", "static shift 2.5", "3 (seed walk off)")

    def to_dict(self) -> dict[str, Any]:
        return {"knob": self.knob, "value": self.value, "label": self.label or str(self.value),
                "score": self.score, "tier": self.tier, "gain": self.gain}


@dataclass
class Suspects:
    baseline: float
    baseline_tier: str | None
    tried: list[Tried]                        # every render, ranked best first
    best: list[Tried] = field(default_factory=list)   # the recovered change(s), each with its value
    best_score: float | None = None
    best_tier: str | None = None
    explained: bool = False
    verdict: str = ""
    skipped: list[str] = field(default_factory=list)   # what the budget left out
    extra_renders: int = 0
    recorded: dict[str, Any] = field(default_factory=dict)   # knob -> the recorded value, for each knob in best
    searches: list[AxisSearch] = field(default_factory=list)  # per searched knob: the trace (values, scores)
    confirmed_from: str | None = None         # the item whose search found these values (case-level search)
    metric: str = "ssim"                      # what `score` fields hold: "psnr" (dB) when the comparison gives it
    ssim_recorded: float | None = None        # SSIM of the recorded settings' render (the verdict's evidence)
    ssim_best: float | None = None            # SSIM of the recovered settings' render
    # two answers that explain the target equally, even on the other items: [{"changes", "text", "score"}], best
    # first; empty when one answer is certain
    ambiguous: list[dict[str, Any]] = field(default_factory=list)
    not_searched: bool = False                # the budget was too small to search (the verdict says so)
    lora_free: bool = False                   # searched on a target rendered without a LoRA (step 0)

    def to_dict(self) -> dict[str, Any]:
        return {"ambiguous": list(self.ambiguous), "not_searched": self.not_searched, "baseline": self.baseline, "baseline_tier": self.baseline_tier,
                "tried": [t.to_dict() for t in self.tried], "best": [t.to_dict() for t in self.best],
                "best_score": self.best_score, "best_tier": self.best_tier, "explained": self.explained,
                "verdict": self.verdict, "skipped": list(self.skipped), "extra_renders": self.extra_renders,
                "recorded": dict(self.recorded), "searches": [s.to_dict() for s in self.searches],
                "confirmed_from": self.confirmed_from, "metric": self.metric,
                "ssim_recorded": self.ssim_recorded, "ssim_best": self.ssim_best}

    def changes(self) -> dict[str, Any]:
        """knob -> recovered value (what `apply_changes` takes)."""
        return {b.knob: b.value for b in self.best}


def knob_setting(name: str) -> str:
    """The RenderSpec setting a recovered value of a knob goes into: the knob's first (parity.knobs)."""
    return knobs.knob(name).settings[0]


def recorded_value(spec: RenderSpec, knob: str) -> Any:
    if knob == "resolution":
        w, h = effective_size(spec.width, spec.height)
        return f"{w}x{h}"
    return spec.value(knob_setting(knob))


def apply_changes(spec: RenderSpec, changes: dict[str, Any]) -> RenderSpec:
    """The recovered values applied to another item's spec (the case-level confirmation). Seeds are per prompt,
    so a recovered seed is not carried over."""
    out = spec
    for knob, value in changes.items():
        if knob == "resolution":
            w, h = (int(x) for x in str(value).split("x"))
            out = out.with_(width=w, height=h)
        elif knob == "schedule":
            out = out.with_(schedule=value, semantics="aitk")
        elif knob in knobs.searchable():   # a recovered seed is per prompt: never carried over
            out = knobs.with_settings(out, **{knob_setting(knob): value})
    return out


Restores = Callable[[tuple[float, "str | None"]], bool]


def suspect_search(
    preview_path: Any,
    spec: RenderSpec,
    render: RenderFn,
    score: ScoreFn,
    *,
    index: int = 0,
    budget: int | None = None,
    cache: RenderCache | None = None,
    preview_size: tuple[int, int] | None = None,
    explained_at: float = 0.98,
    explained_tiers: tuple[str, ...] | None = None,
    others: list[tuple[Any, RenderSpec]] = (),
    pinned: dict[str, Any] | None = None,
) -> Suspects:
    """Recover the settings that rendered `preview_path` (a preview, or any target image), starting from the
    recorded `spec`. `index` is the prompt index (seed-walk patterns); `preview_size` the target's pixel size (read
    from the file when None). `budget` caps the extra renders (the recorded spec's own render is free). Without
    tiers, a change "explains" the target when its score reaches `explained_at`; with tiers, when its tier is one of
    `explained_tiers` (default: every tier that explains a preview, parity.tier; the tiers that meet the item's gate: EXACT alone for a case that asks for EXACT). `others`:
    the case's other items as (target, recorded spec), rendered only to separate two answers that explain this
    target equally. `pinned`: knob -> value found elsewhere (the step-0 previews, rendered without the LoRA): the
    search starts there and searches only the other knobs."""
    session = Session(render, score, preview_path, budget=budget, cache=cache, metric="psnr")
    base = session.score(spec, free=True)
    unit = "psnr" if session.ssim(spec) != base[0] else "ssim"
    if preview_size is None and not hasattr(preview_path, "shape"):
        preview_size = _image_size(preview_path)

    tiers = explaining_tiers() if explained_tiers is None else explained_tiers   # asked now: a registered tier counts

    def done(sc: tuple[float, str | None]) -> bool:
        return sc[1] in tiers if sc[1] is not None else sc[0] >= explained_at

    def exact(sc: tuple[float, str | None]) -> bool:
        return sc[1] == EXACT.name if sc[1] is not None else sc[0] >= 1.0

    result = Suspects(baseline=base[0], baseline_tier=base[1], tried=[], metric=unit, lora_free=spec.lora_path is None)
    if _no_search(result, spec, base, done, budget):
        return result
    state = _Search(session, spec, base, done, exact, result, unit)
    if budget is not None and others:   # one render per other item kept for confirming the answer there
        session.budget = max(minimum_renders(spec), budget - len(others))
    if pinned:
        state.pin(pinned)
    state.run(index, preview_size)
    session.budget = budget
    if state.rival is not None:
        separate(state, spec, others, render, score, cache)
    _conclude(result, spec, base, state)
    return result


def _no_search(result: Suspects, spec: RenderSpec, base: tuple[float, str | None], done: Restores,
               budget: int | None) -> bool:
    """Nothing to search (the recorded settings explain the target), or too small a budget to search without
    guessing: the verdict says which."""
    if done(base):
        result.explained = True
        result.verdict = "the recorded settings already reproduce the preview"
        return True
    if budget is not None and budget < minimum_renders(spec):
        result.skipped.append("the search (budget too small)")
        result.not_searched = True
        result.verdict = ("not searched: no extra render left of the case budget" if budget == 0 else
                          f"not searched: {budget} extra render(s) left of the case budget, too few to search "
                          f"(a search needs at least {minimum_renders(spec)}; raise --budget or budget:)")
        return True
    return False


def changes_between(recorded: RenderSpec, found: RenderSpec) -> dict[str, Any]:
    """knob -> value for the sampling knobs `found` sets otherwise than `recorded`."""
    return {k: recorded_value(found, k) for k in SAMPLING if recorded_value(found, k) != recorded_value(recorded, k)}


def rival_of(answers: list[Answer], exact: Restores, noise: float, done: Restores) -> Answer | None:
    """An answer other than the best that scores within `noise` of it: none when the best is exact, or not even
    close (NEAR) to explaining the target (two poor answers are no explanation, ambiguous or not)."""
    best = answers[0]
    if exact(best.descent.score) or not close(best.descent.score, done):
        return None
    return next((a for a in answers[1:] if a.descent.spec != best.descent.spec and best.score - a.score < noise),
                None)


def separate(state: _Search, spec: RenderSpec, others: list[tuple[Any, RenderSpec]], render: RenderFn,
             score: ScoreFn, cache: RenderCache | None) -> None:
    """Two answers explain the target equally: render both on the case's other items, one item at a time, until
    their summed scores differ by more than the noise (or one reproduces an item exactly and the other does not).
    The rival wins: it is adopted. Still tied after every item: the rival stays (the verdict says "ambiguous")."""
    rival = state.rival
    assert rival is not None
    mine, theirs = changes_between(spec, state.spec), changes_between(spec, rival.descent.spec)
    totals = [state.score[0], rival.score]
    for target, other in others:
        left = None if state.session.budget is None else state.session.budget - state.session.extra_renders
        if left is not None and left < 2:
            break
        session = Session(render, score, target, budget=left, cache=state.session.cache, metric="psnr")
        a, b = session.score(apply_changes(other, mine)), session.score(apply_changes(other, theirs))
        state.session.extra_renders += session.extra_renders
        totals = [totals[0] + a[0], totals[1] + b[0]]
        if state.exact(a) != state.exact(b) or abs(totals[0] - totals[1]) >= NOISE[state.unit]:
            if totals[1] > totals[0] or (state.exact(b) and not state.exact(a)):
                for knob in changes_between(spec, state.spec):
                    state.adopted.pop(knob, None)
                state._adopt(rival.descent)
            state.rival = None
            break
    state.result.extra_renders = state.session.extra_renders


class _Search:
    """The order of suspect_search's steps, with what each adopted."""

    def __init__(self, session: Session, spec: RenderSpec, base: tuple[float, str | None], done: Restores,
                 exact: Restores, result: Suspects, unit: str = "ssim"):
        self.session, self.done, self.exact, self.result, self.unit = session, done, exact, result, unit
        self.spec, self.score, self.base, self.recorded = spec, base, base, spec
        self.adopted: dict[str, Tried] = {}
        self.rival: Answer | None = None     # another answer within NOISE of the adopted one
        self.pinned: set[str] = set()        # knobs fixed by another group's answer: not searched
        self.starts_best = math.inf          # the best score among the image fit's starts (fit_image)
        self.valley: Valley | None = None    # the image fit's valley walk, when the target and renders are images

    def axes_of(self, spec: RenderSpec) -> list:
        return [a for a in axes_for(spec) if a.knob not in self.pinned]

    def pin(self, values: dict[str, Any]) -> None:
        """Start at `values` (found on the step-0 previews) and search only the other knobs."""
        spec = apply_changes(self.spec, values)
        sc = self.session.score(spec)
        self.pinned = set(values)
        if sc[0] > self.score[0]:
            self.spec, self.score = spec, sc
            for knob, value in values.items():
                self.adopted[knob] = Tried(knob, value, sc[0], sc[1], sc[0] - self.base[0], knob_text(knob, value))

    def run(self, index: int, preview_size: tuple[int, int] | None) -> None:
        try:
            res = resolution_candidate(self.spec, preview_size)
            self.try_discrete([res] if res else [])
            seeds = seed_candidates(self.spec, index)
            if self.score[1] == DIFFERENT.name and not self.done(self.score):
                self.try_discrete(seeds, adopt_if=self.seed_evidence)
                seeds = []
            if not self.exact(self.score) and not self.pinned:
                self.try_discrete(default_set_candidates(self.spec), only_if_explains=True)
            if not self.exact(self.score):  # explained but not exact: one polishing round still pays
                self.search_globally(self.fit_image())
            near = explains(self.score[1])   # NEAR with AI Toolkit's family: no other family to try
            for c in schedule_candidates(self.spec) if not (self.exact(self.score) or self.pinned or near) else []:
                self.try_schedule(c)
            if not self.exact(self.score) and self.try_discrete(seeds, adopt_if=self.seed_evidence):
                self.descend()
        except BudgetExhausted:
            self.result.skipped.append("the rest of the search (render budget spent)")
        self.result.extra_renders = self.session.extra_renders

    def fit_image(self) -> list[Answer]:
        """The image fit (parity.diagnose.fit) from the recorded values or the best points of the coarse scan:
        every knob at once, one render informing all of them. Only where the gate asks for EXACT; empty when the
        target or the renders are no images (the score search then does it all)."""
        if any(self.done((0.0, t)) for t in explaining_tiers() if t != EXACT.name):
            # a gate that passes NEAR (any explaining tier short of EXACT) claims a near answer, and the fit moves every knob at once: within the JPEG
            # error steps and the shift trade off, so a near fit can carry knobs that never changed (measured:
            # 25 steps + guidance 3 + multiplier 1.01 + shift 1.75 claimed for 24 steps + guidance 3). There the
            # score search, knob by knob, decides alone.
            return []
        target = target_blocks(self.session.preview_path)
        axes = self.axes_of(self.spec)
        if target is None or not axes:
            return []
        # a fit this close (NEAR) scans its neighbourhood and ends the starts: the polish follows
        fit = ImageFit(self.spec, self.session, target, axes, self.exact, self.unit,
                       near=lambda sc: close(sc, self.done))
        here = fit.point_of(self.spec)
        if here is None or fit.evaluate(here) is None:
            return []
        self.valley = valley_walk(fit)
        # the coarse scan first, whatever the recorded render scores: a knob's picture is smooth only near the
        # answer (measured on the smooth tiny model, a static shift of 3.1 recorded as AI Toolkit's 1.58: the
        # blocks' error falls smoothly only from 2.9 to 3.4; from 1.6 to 2.8 it rises and falls, so a fit from the
        # recorded values stops at 13 steps and a shift of 1.8, not exact)
        scans = coarse_scan(self.spec, self.session, self.score, self.exact, DIRECTION_GAIN[self.unit], axes,
                            LIFT[self.unit])
        self._traces([c.run.trace for c in scans if c.run.trace.probes])
        starts = coarse_starts(scans, here, self.score, START_GAIN[self.unit])[:FIT_STARTS + 1]
        scored = [fit.evaluate(s) for s in starts]   # rendered already: the coarse scan's points
        self.starts_best = max((ev.score[0] for ev in scored if ev is not None), default=math.inf)
        return [Answer("fit", d) for d in fit_from(fit, starts, self.score, SHARE, MIN_REFINE)]

    def search_globally(self, fitted: list[Answer] = ()) -> None:
        """Coarse scan of every knob, the best basins refined (parity.diagnose.scan), unless the image fit already
        reproduced the target; the best answer of both adopted and a rival within NOISE of it kept for the
        tie-break."""
        answers = sorted(fitted, key=lambda a: -a.score)
        out_of_budget = False
        lead = bool(answers) and answers[0].score >= self.starts_best + FIT_LEAD[self.unit]
        if answers and (close(answers[0].descent.score, self.done) or lead) and not self.exact(answers[0].descent.score):
            # the fit is near the answer, or far ahead of every start it had (the global search starts from those:
            # measured on held-out model 3895, guidance 4.4 + shift 3, the fit reached guidance 4.4 at 35.9 dB, and
            # the global search spent its last 17 renders around a coarse 80 steps at 20.7): the score's own descent
            # finishes it, every render left (aiming at EXACT whatever the gate: a NEAR fit can still carry a knob
            # the valley moved a little)
            d = descend(answers[0].descent.spec, self.session, answers[0].descent.score, self.exact, self.exact,
                        axes_of=self.axes_of, min_gain=DIRECTION_GAIN[self.unit], polish_gain=POLISH_GAIN[self.unit],
                        max_rounds=10, valley=self.valley)
            self._traces(d.searches)
            d.changes, out_of_budget = {**answers[0].descent.changes, **d.changes}, d.out_of_budget
            if d.score[0] >= answers[0].score:   # the polished answer replaces its start: not a rival of it
                answers[0] = Answer("fit", d)
        elif not (answers and self.exact(answers[0].descent.score)) and can_render(self.session):
            r = global_search(self.spec, self.session, self.score, self.exact, self.done,
                              min_gain=DIRECTION_GAIN[self.unit], polish_gain=POLISH_GAIN[self.unit],
                              axes_of=self.axes_of, valley=self.valley, lift=LIFT[self.unit])
            self._record(r)
            answers = sorted(answers + r.answers, key=lambda a: -a.score)
            out_of_budget = r.out_of_budget
        if answers and answers[0].score > self.score[0]:
            self._adopt(answers[0].descent)
            self.rival = rival_of(answers, self.exact, NOISE[self.unit], self.done)
        if out_of_budget or not can_render(self.session):
            raise BudgetExhausted

    def _record(self, r: ScanResult) -> None:
        """Every probe of the scan and of the basins' descents, as traces (the report's curves) and as tried."""
        traces = [c.run.trace for c in r.scans if c.run.trace.probes]
        for a in r.answers:
            traces += [t for t in a.descent.searches if t not in traces]
        self._traces(traces)

    def _traces(self, traces: list[AxisSearch]) -> None:
        self.result.searches += traces
        for s in traces:
            self.result.tried += [Tried(s.knob, p.value, p.score, p.tier, p.score - self.base[0],
                                        knob_text(s.knob, p.value)) for p in s.probes]

    def seed_evidence(self, sc: Scored) -> bool:
        """A seed is adopted only when it explains the target or gains SEED_GAIN over what we have: another seed is
        another picture, and among other pictures one scores a little better by chance (measured on the smooth tiny
        model, where a guidance 1.8 off is DIFFERENT too: the six seed patterns scored 2-4 dB below the recorded
        render; the right seed with guidance 1 off, 3.1 dB above it), which would lead every later search astray."""
        return self.done(sc) or sc[0] >= self.score[0] + SEED_GAIN[self.unit]

    def try_discrete(self, candidates: list[Candidate], only_if_explains: bool = False,
                     adopt_if: Restores | None = None) -> bool:
        """Render each candidate on the current spec (until one reproduces the target); adopt the best if it gains
        (`only_if_explains`: if it explains the target; a default set that only gains would lead the search off;
        `adopt_if`: if the best's score passes it)."""
        best: tuple[Candidate, tuple[float, str | None]] | None = None
        for c in candidates:
            sc = self.session.score(c.apply(self.spec))
            self.result.tried.append(Tried(c.knob, c.value, sc[0], sc[1], sc[0] - self.base[0], c.label))
            if best is None or sc[0] > best[1][0]:
                best = (c, sc)
            if self.exact(sc):
                break
        if best is None or best[1][0] <= self.score[0] + MIN_GAIN[self.unit]:
            return False
        if (only_if_explains and not self.done(best[1])) or (adopt_if is not None and not adopt_if(best[1])):
            return False
        c, sc = best
        self.spec, self.score = c.apply(self.spec), sc
        if c.knob == "defaults":  # a set: each of its knobs is a finding of its own
            for knob, value in (("steps", self.spec.sample_steps), ("guidance", self.spec.guidance_scale),
                                ("schedule", self.spec.schedule)):
                self.adopted[knob] = Tried(knob, value, sc[0], sc[1], sc[0] - self.base[0], knob_text(knob, value))
        else:
            self.adopted[c.knob] = Tried(c.knob, c.value, sc[0], sc[1], sc[0] - self.base[0], c.label)
        return True

    def try_schedule(self, c: Candidate) -> None:
        """Another schedule family changes how every other knob acts (the steps that look best under AI Toolkit's
        schedule are not those under diffusers' empirical one), so it is judged after a short descent of its own
        and adopted only if that ends better than what we have."""
        spec = c.apply(self.spec)
        sc = self.session.score(spec)
        self.result.tried.append(Tried(c.knob, c.value, sc[0], sc[1], sc[0] - self.base[0], c.label))
        before = self.score
        d = self.descend(spec, sc, max_rounds=2, adopt=False)
        if d.score[0] > before[0] + MIN_GAIN[self.unit]:
            self.adopted[c.knob] = Tried(c.knob, c.value, d.score[0], d.score[1], d.score[0] - self.base[0], c.label)
            self._adopt(d)
        elif sc[0] > before[0] + MIN_GAIN[self.unit]:
            self.spec, self.score = spec, sc
            self.adopted[c.knob] = Tried(c.knob, c.value, sc[0], sc[1], sc[0] - self.base[0], c.label)

    def descend(self, spec: RenderSpec | None = None, score: tuple[float, str | None] | None = None, *,
                max_rounds: int = 4, adopt: bool = True) -> Descent:
        d = descend(spec or self.spec, self.session, score or self.score, self.exact, self.done, axes_of=self.axes_of,
                    min_gain=DIRECTION_GAIN[self.unit], polish_gain=POLISH_GAIN[self.unit], max_rounds=max_rounds,
                    valley=self.valley)
        self._traces(d.searches)
        if adopt and d.score[0] > self.score[0]:
            self._adopt(d)
        if d.out_of_budget:
            raise BudgetExhausted
        return d

    def _adopt(self, d: Descent) -> None:
        self.spec, self.score, changes = d.spec, d.score, claimed_changes(self.recorded, d)
        for knob in set(SAMPLING) - set(changes):   # put back to its recorded value: no longer claimed
            self.adopted.pop(knob, None)
        for knob, value in changes.items():
            self.adopted[knob] = Tried(knob, value, d.score[0], d.score[1], d.score[0] - self.base[0],
                                       knob_text(knob, value))


def claimed_changes(recorded: RenderSpec, d: Descent) -> dict[str, Any]:
    """What answer `d` claims: its changes, the sampling knobs as its spec sets them against `recorded`, so the
    claim is always the spec that scored. (A merged answer can carry a value that a later move changed or put
    back: on held-out model 5569, 16 steps + guidance 7.2 + shift 2.2, the valley walk reached the exact spec
    while the fit's shift of 1.5 stayed among the changes, and "guidance 7.2, static shift 1.5" was claimed.)"""
    moved = changes_between(recorded, d.spec)
    out = {k: (moved.get(k) if k in SAMPLING else v) for k, v in d.changes.items()}
    return {k: v for k, v in {**out, **moved}.items() if v is not None}


def valley_walk(fit: ImageFit) -> Valley:
    """The score descent's move when no knob gains alone or the steps or the shift were just searched: the image
    fit's valley walk (parity.diagnose.fit.walk_valley) from a spec where either moved; its diagonals fall off the
    valley (docs/parameter-recovery.md, held-out model 5569, 16 steps + guidance 7.2 + shift 2.2)."""
    def walk(spec: RenderSpec, score: Scored) -> tuple[RenderSpec, Scored] | None:
        p = fit.point_of(spec)
        if p is None or not moves_valley(fit, p):
            return None   # neither moved: no valley to walk (a guidance case stalled near its answer)
        q = walk_valley(fit, p) if fit.evaluate(p) is not None else None
        return (fit.evals[q].spec, fit.evals[q].score) if q is not None else None
    return walk


def _conclude(result: Suspects, spec: RenderSpec, base: tuple[float, str | None], state: _Search) -> None:
    """The recovered changes and the verdict in words."""
    result.tried.sort(key=lambda t: -t.score)
    final, gained = state.score, state.score[0] - base[0]
    if not state.adopted or gained <= MIN_GAIN[state.unit]:
        top = max((t.score for t in result.tried), default=base[0])
        result.verdict = (f"nothing tried explains it: {len(result.tried)} alternative(s) scored at most "
                          f"{_score_text(top, state.unit)} vs {_score_text(base[0], state.unit)} for the recorded "
                          "settings")
        return
    # every adopted change carries the final score: they are one finding together
    result.best = [Tried(t.knob, t.value, final[0], final[1], gained, t.label) for t in state.adopted.values()
                   if t.value != recorded_value(spec, t.knob)]
    result.best_score, result.best_tier = final
    result.recorded = {t.knob: recorded_value(spec, t.knob) for t in result.best}
    result.explained = state.done(final)
    result.ssim_recorded, result.ssim_best = state.session.ssim(spec), state.session.ssim(state.spec)
    result.verdict = _verdict(result)
    if state.rival is not None:
        _ambiguous(result, spec, [(state.spec, final[0]), (state.rival.descent.spec, state.rival.score)], state.unit)


def _ambiguous(result: Suspects, spec: RenderSpec, answers: list[tuple[RenderSpec, float]], unit: str) -> None:
    """Two answers the case's items cannot tell apart: both named, neither claimed."""
    result.explained = False
    result.ambiguous = [{"changes": changes_between(spec, s), "score": sc,
                         "text": " + ".join(_change_text(k, v) for k, v in changes_between(spec, s).items())}
                        for s, sc in answers]
    a, b = result.ambiguous[:2]
    result.verdict = (f"ambiguous: {a['text']} or {b['text']} explain equally "
                      f"({_score_text(a['score'], unit)} vs {_score_text(b['score'], unit)})")


def _score_text(value: float, unit: str) -> str:
    if unit == "psnr":
        return "identical" if value >= 999 else f"PSNR {value:.1f} dB"
    return f"{value:.3f}"


def _verdict(result: Suspects, source: str | None = None) -> str:
    pairs = [(f"seed {t.label}" if t.knob == "seed" else _change_text(t.knob, t.value),
              knob_text(t.knob, result.recorded[t.knob])) for t in result.best]
    looks = (f"{pairs[0][0]}, not {pairs[0][1]}" if len(pairs) == 1
             else ", ".join(f"{now} (not {was})" for now, was in pairs))
    evidence = f"SSIM {result.ssim_best or 0.0:.3f} vs {result.ssim_recorded or 0.0:.3f} with the recorded settings"
    if source:
        evidence += f"; found on {source}, confirmed here with one render"
    if result.explained:
        return f"previews look like {looks} ({evidence})"
    return f"closest: {looks}, {evidence}; nothing found fully explains the preview"


def confirm_changes(preview_path: Any, spec: RenderSpec, found: Suspects, render: RenderFn, score: ScoreFn, *,
                    budget: int | None = None, cache: RenderCache | None = None, source: str | None = None,
                    explained_at: float = 0.98, explained_tiers: tuple[str, ...] | None = None) -> Suspects:
    """One render: the values `found` on another item of the case, applied to this item's `spec`. Explained when
    the render reproduces this item's preview; otherwise the caller searches this item on its own."""
    session = Session(render, score, preview_path, budget=budget, cache=cache, metric="psnr")
    base = session.score(spec, free=True)
    unit = "psnr" if session.ssim(spec) != base[0] else "ssim"
    result = Suspects(baseline=base[0], baseline_tier=base[1], tried=[], confirmed_from=source, metric=unit)
    if found.ambiguous:  # the search already rendered both answers on this item to separate them
        result.ambiguous, result.verdict = list(found.ambiguous), f"{found.verdict}; found on {source}" if source else found.verdict
        return result
    changes = {k: v for k, v in found.changes().items() if k != "seed"}  # seeds are per prompt
    target = apply_changes(spec, changes)
    if not changes or target == spec:
        return result
    try:
        final = session.score(target)
    except BudgetExhausted:
        result.skipped.append("confirming " + ", ".join(changes) + " (render budget spent)")
        return result
    labels = {t.knob: t.label for t in found.best}
    result.best = [Tried(k, v, final[0], final[1], final[0] - base[0], labels.get(k, "")) for k, v in changes.items()]
    result.tried = list(result.best)
    result.best_score, result.best_tier = final
    result.recorded = {t.knob: recorded_value(spec, t.knob) for t in result.best}
    result.extra_renders = session.extra_renders
    tiers = explaining_tiers() if explained_tiers is None else explained_tiers
    result.explained = (final[1] in tiers) if final[1] is not None else final[0] >= explained_at
    result.ssim_recorded, result.ssim_best = session.ssim(spec), session.ssim(target)
    result.verdict = _verdict(result, source)
    return result


def _change_text(knob: str, value: Any) -> str:
    """"12 steps", "guidance 5.5", "LoRA multiplier 0.6", "static shift 2.5", "seed 3 (seed walk off)"."""
    text = knob_text(knob, value)
    if knob == "steps":
        return f"{text} steps"
    if knob == "lora_scale":
        return f"LoRA multiplier {text}"
    if knob in ("guidance", "seed", "resolution"):
        return f"{knob} {text}"
    return text
