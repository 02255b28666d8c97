"""Parameter recovery: the value of each sampling knob that rendered a target image, found by search.

Used when the recorded settings do not reproduce the preview (suspects.py) and to explain a render from another
stack (the target is then that render). Each continuous knob is an `Axis`: a grid over its real value space
(steps: integers; guidance, multiplier, static shift: a grid at the resolution the answer is stated in). On a grid
the search is over integers, and a value users really type (5.5, 0.6, 12) is hit exactly: a JPEG preview then
compares EXACT, which is the evidence the answer is right.

The search per axis assumes the score is unimodal around the answer (true of a trained model's response to these
knobs; docs/parameter-recovery.md has the measured curves):
  1. screen: the two neighbours of the current value at the axis's first step (2 renders);
  2. bracket: walk downhill... uphill from the better neighbour with growing steps until the score drops;
  3. refine: golden-section on the integer bracket until it is 1 grid step wide.
Knobs are combined by coordinate descent (`descend`): screen every axis at the current point, search the one that
gained most, adopt its value, repeat until the target is reproduced, nothing gains, or the budget ends.

Pure: rendering and scoring come in as a `Session` (parity.diagnose.cache), so this module never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from parity.diagnose.cache import BudgetExhausted, Session
from parity.diagnose.paramdiff import knob_value
from parity import knobs
from parity.knobs import SearchAxis
from parity.spec import RenderSpec

GOLDEN = (math.sqrt(5) - 1) / 2      # 0.618...
MIN_GAIN = 0.002                      # a probe must beat the current score by this to count as a direction
SCREEN_SCALES = (1.0, 0.4)             # screening distances, as fractions of each axis's first step
POLISH_GAIN = 0.005                   # once explained (NEAR), another round only while a round gains this much
LARGE_GAIN = 40                       # x the direction gain: a screen this good is searched without screening the rest
REVISIT = 3                           # large gains of the score after which a settled knob is screened again
SCHEDULE = "schedule"                 # the knob whose axis value (a static shift) is not its setting's value

Scored = tuple[float, "str | None"]   # (SSIM-like score, tier or None)
# a better point along the steps-shift valley from a spec and its score, or None (parity.diagnose.fit.walk_valley)
Valley = Callable[[RenderSpec, Scored], "tuple[RenderSpec, Scored] | None"]


# ---------------------------------------------------------------------------------------------- value spaces


@dataclass(frozen=True)
class Axis:
    """One searchable knob: values lo + i * resolution for i in 0..n, as the knob registry declares its space."""

    knob: str                 # parity.knobs name
    declared: SearchAxis      # the knob's value space (parity.knobs)
    start: float              # the current (recorded) value on this axis, maybe between grid points

    @property
    def lo(self) -> float:
        return self.declared.lo

    @property
    def hi(self) -> float:
        return self.declared.top(self.start)

    @property
    def resolution(self) -> float:
        return self.declared.resolution

    @property
    def first_step(self) -> float:
        """Distance of the two screening probes from the current value."""
        return self.declared.first(self.start)

    @property
    def n(self) -> int:
        return int(round((self.hi - self.lo) / self.resolution))

    def index(self, value: float) -> int:
        return min(self.n, max(0, int(round((value - self.lo) / self.resolution))))

    def value(self, i: int) -> float:
        v = self.lo + i * self.resolution
        return int(round(v)) if self.declared.integer else round(v, 6)

    def apply(self, spec: RenderSpec, i: int) -> RenderSpec:
        v = self.value(i)
        if self.knob == SCHEDULE:
            return spec.with_(schedule=static_name(v), semantics="aitk")
        return knobs.with_settings(spec, **{knobs.knob(self.knob).settings[0]: v if self.declared.integer else float(v)})

    def stored(self, i: int) -> Any:
        """The value as results store it: a number, or the schedule's name ("static:2.5")."""
        return static_name(self.value(i)) if self.knob == SCHEDULE else self.value(i)


def static_name(shift: float) -> str:
    return f"static:{shift:g}"


def equivalent_shift(spec: RenderSpec) -> float | None:
    """The static shift the spec's schedule equals at its size: e^mu for AI Toolkit's mu (the same time shift,
    aitk-flux2-previews.md section C step 9), the shift itself for "static:S"; None for diffusers' empirical mu
    (step-dependent, no single equivalent)."""
    from parity.engine.schedule import aitk_mu, image_seq_len, parse_schedule
    from parity.job.sizes import effective_size

    kind, shift = parse_schedule(spec.schedule)
    if kind == "static":
        return shift
    if kind == "aitk":
        return math.exp(aitk_mu(image_seq_len(*effective_size(spec.width, spec.height))))
    return None


def axes_for(spec: RenderSpec) -> list[Axis]:
    """The continuous knobs of `spec`, each over the value space the knob registry declares for it
    (docs/parameter-recovery.md); a knob without a value on this spec (the multiplier without a LoRA, diffusers'
    step-dependent empirical mu) is not searched."""
    out = []
    for name, declared in knobs.searchable().items():
        start = recorded_on_axis(spec, name)
        if start is not None:
            out.append(Axis(name, declared, start))
    return out


def recorded_on_axis(spec: RenderSpec, name: str) -> float | None:
    """The recorded value of a searchable knob on its axis: the schedule as its equivalent static shift."""
    if name == SCHEDULE:
        return equivalent_shift(spec) if spec.semantics == "aitk" else None
    return knob_value(spec, name)


# ---------------------------------------------------------------------------------------------- one axis


@dataclass
class Probe:
    value: Any          # stored value (number or schedule name)
    score: float
    tier: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "score": self.score, "tier": self.tier}


@dataclass
class AxisSearch:
    """The search trace of one knob from one starting point."""

    knob: str
    recorded: Any                   # the value the search started from (stored form)
    probes: list[Probe] = field(default_factory=list)   # in the order rendered
    best: Any = None                # best value found (stored form); None: no probe beat the start
    best_score: float | None = None
    best_tier: str | None = None
    gain: float = 0.0               # best_score - the start's score
    resolution: float = 0.0
    complete: bool = False          # False: screened only, or stopped by the budget

    def to_dict(self) -> dict[str, Any]:
        return {"knob": self.knob, "recorded": self.recorded, "best": self.best, "best_score": self.best_score,
                "best_tier": self.best_tier, "gain": self.gain, "resolution": self.resolution,
                "complete": self.complete, "probes": [p.to_dict() for p in self.probes]}


class _AxisRun:
    """Evaluate grid indices of one axis around `spec`, memoised (the session caches renders across runs), with
    the trace kept. The start is the recorded spec itself, whose score is known; when it lies between grid points
    (AI Toolkit's schedule as a shift of e^mu) it is not a grid point and only bounds the bracket."""

    def __init__(self, axis: Axis, spec: RenderSpec, session: Session, start_score: Scored,
                 done: Callable[[Scored], bool], min_gain: float = MIN_GAIN):
        self.axis, self.spec, self.session, self.done, self.min_gain = axis, spec, session, done, min_gain
        self.i0 = axis.index(axis.start)
        self.start_score = start_score
        self.scores: dict[int, Scored] = {}
        if axis.knob != "schedule" and axis.value(self.i0) == axis.start:
            self.scores[self.i0] = start_score
        self.trace = AxisSearch(axis.knob, spec.schedule if axis.knob == "schedule" else axis.start,
                                resolution=axis.resolution)

    def f(self, i: int) -> float:
        if i not in self.scores:
            s, t = self.session.score(self.axis.apply(self.spec, i))  # may raise BudgetExhausted
            self.scores[i] = (s, t)
            self.trace.probes.append(Probe(self.axis.stored(i), s, t))
        return self.scores[i][0]

    def best(self) -> tuple[int | None, Scored]:
        """Best evaluated index (None when nothing beats the start by MIN_GAIN) and its score."""
        best_i, best = None, self.start_score
        for i, sc in self.scores.items():
            if sc[0] > best[0] + (self.min_gain if best_i is None else 0.0):
                best_i, best = i, sc
        return best_i, best

    def finished(self) -> bool:
        i, sc = self.best()
        return i is not None and self.done(sc)

    def conclude(self, complete: bool) -> AxisSearch:
        i, (score, tier) = self.best()
        t = self.trace
        t.complete = complete
        if i is not None:
            t.best, t.best_score, t.best_tier = self.axis.stored(i), score, tier
            t.gain = score - self.start_score[0]
        return t


def screen(run: _AxisRun, step: float | None = None) -> None:
    """The two neighbours of the start, `step` (default: the axis's first step) away, clamped to the range."""
    d = max(1, int(round((step if step is not None else run.axis.first_step) / run.axis.resolution)))
    for i in (run.i0 - d, run.i0 + d):
        if 0 <= i <= run.axis.n and not run.finished():
            run.f(i)


def search(run: _AxisRun) -> None:
    """From the screened neighbours: bracket (grow the step while the score rises), then golden-section."""
    b, _ = run.best()
    if b is None or run.finished():
        return
    direction = 1 if b > run.i0 else -1
    behind, step = run.i0, abs(b - run.i0)
    while True:
        step = max(step + 1, int(math.ceil(step / GOLDEN)))
        ahead = min(run.axis.n, max(0, b + direction * step))
        if ahead == b:             # the best is the end of the range
            return
        if run.f(ahead) > run.f(b):
            behind, b = b, ahead
            if run.finished():
                return
        else:
            break
    lo, hi = sorted((behind, ahead))
    _golden(run, lo, b, hi)


def _golden(run: _AxisRun, lo: int, b: int, hi: int) -> None:
    """Golden-section on integers: lo < b < hi with f(b) >= f(lo), f(hi); shrink until hi - lo <= 2."""
    while hi - lo > 2 and not run.finished():
        if b - lo > hi - b:
            x = b - max(1, int(round((1 - GOLDEN) * (b - lo))))
        else:
            x = b + max(1, int(round((1 - GOLDEN) * (hi - b))))
        if run.f(x) > run.f(b):
            lo, hi = (lo, b) if x < b else (b, hi)
            b = x
        elif x < b:
            lo = x
        else:
            hi = x
    _climb(run, b)


def _climb(run: _AxisRun, b: int) -> None:
    """End on a grid point better than both neighbours: a bracket end may be the start, never rendered on the
    grid (AI Toolkit's shift between grid points), or the search may stop with one neighbour unseen."""
    while not run.finished():
        around = [i for i in (b - 1, b + 1) if 0 <= i <= run.axis.n]
        better = [i for i in around if run.f(i) > run.f(b)]
        if not better:
            return
        b = max(better, key=run.f)


# ---------------------------------------------------------------------------------------------- knobs together


@dataclass
class Descent:
    """What coordinate descent found: the adopted values (stored form) and the spec they make."""

    spec: RenderSpec
    score: Scored
    changes: dict[str, Any] = field(default_factory=dict)     # knob -> value, in adoption order
    searches: list[AxisSearch] = field(default_factory=list)  # every axis run, in order
    out_of_budget: bool = False
    gains: dict[str, float] = field(default_factory=dict)     # knob -> what its last screen gained
    # knob -> the score when it was settled: even its fine screen lost a lot on both sides (its answer is here, and
    # the knob is sharp); not screened again until the score has risen by REVISIT large gains since
    settled: dict[str, float] = field(default_factory=dict)


def descend(spec: RenderSpec, session: Session, start: Scored, exact: Callable[[Scored], bool],
            explained: Callable[[Scored], bool] | None = None, *,
            axes_of: Callable[[RenderSpec], list[Axis]] = axes_for, max_rounds: int = 4,
            min_gain: float = MIN_GAIN, polish_gain: float = POLISH_GAIN, searched: set[str] | None = None,
            valley: Valley | None = None) -> Descent:
    """Coordinate descent: each round screens every axis at the current point, searches the one that gained most
    and adopts its best value. Stops when the target is reproduced `exact`ly, when nothing gains, when the budget
    ends, or when it is `explained` (NEAR) and the last round gained less than POLISH_GAIN: a NEAR found with one
    knob can hide a second, smaller one (24 steps + guidance 3 is NEAR at guidance 3 alone), so one more round is
    spent while it still pays. `min_gain` / `polish_gain` are in the session's score unit (SSIM defaults; the
    suspect search climbs PSNR and passes dB). An axis screened again after its own search uses a quarter of its first step (its
    optimum moves little when another knob changes); `searched` names the knobs already searched before. When no
    knob gains alone, `valley` (the image fit's walk along the steps-shift valley, when there is one) goes first,
    then the diagonals; it also goes at once after a search of the steps or the shift, whose answer then lies on
    the valley (screening every knob there twice first left it too few renders: held-out model 5569, 16 steps +
    guidance 7.2 + shift 2.2)."""
    explained = explained or exact
    out = Descent(spec, start)
    searched = set(searched or ())
    history = [spec]   # the point after each round: two rounds' moves together point along a ridge
    try:
        for _ in range(max_rounds):
            if exact(out.score):
                break
            before = out.score[0]
            gaining: list[_AxisRun] = []
            for scale in SCREEN_SCALES:  # coarse first; finer when the answer lies between the coarse probes
                runs: list[_AxisRun] = []
                try:
                    _screen_all(out, session, exact, searched, axes_of, scale, min_gain, runs)
                finally:  # out of budget while screening: the best probe so far still counts
                    gaining = [r for r in runs if r.best()[0] is not None]
                    if gaining and len(runs) and session.budget is not None \
                            and session.extra_renders >= session.budget:
                        _adopt(out, max(gaining, key=lambda r: r.best()[1][0]), searched)
                if gaining:
                    break
            if not gaining:
                if _along_valley(out, valley, axes_of, searched) or _diagonal(out, session, axes_of, min_gain, searched):
                    continue
                break
            run = max(gaining, key=lambda r: r.best()[1][0])
            try:
                search(run)
            finally:  # out of budget mid-search: keep the best found so far
                _adopt(out, run, searched)
            history.append(out.spec)
            if len(history) >= 3 and not exact(out.score) and _extrapolate(out, history[-3], session, axes_of,
                                                                              min_gain):
                history.append(out.spec)
            if run.axis.knob in PAIRED and not exact(out.score) and _along_valley(out, valley, axes_of, searched):
                history.append(out.spec)   # a searched steps or shift lands on the valley: walked at once
            if exact(out.score) or (explained(out.score) and out.score[0] - before < polish_gain):
                break
    except BudgetExhausted:
        out.out_of_budget = True
    return out


def _screen_all(out: Descent, session: Session, done: Callable[[Scored], bool], searched: set[str],
                axes_of: Callable[[RenderSpec], list[Axis]], scale: float = 1.0,
                min_gain: float = MIN_GAIN, runs: list[_AxisRun] | None = None) -> list[_AxisRun]:
    """Screen every axis at the current point into `runs` (filled as it goes, so a caller keeps what was screened
    when the budget ends midway)."""
    runs = [] if runs is None else runs
    try:  # the knobs that gained most at the last screen first: a large gain there ends the screen early
        for axis in sorted(axes_of(out.spec), key=lambda a: -out.gains.get(a.knob, 0.0)):
            if out.changes and next(reversed(out.changes)) == axis.knob:
                continue  # just adopted at this point: nothing to screen
            if axis.knob in out.settled and out.score[0] - out.settled[axis.knob] < LARGE_GAIN * min_gain * REVISIT:
                continue  # settled, and the score has not moved much since
            run = _AxisRun(axis, out.spec, session, out.score, done, min_gain)
            runs.append(run)
            screen(run, axis.first_step * scale / (4 if axis.knob in searched else 1))
            out.gains[axis.knob] = run.best()[1][0] - out.score[0]
            probes = [sc[0] for i, sc in run.scores.items() if i != run.i0]
            if scale < 1 and probes and max(probes) < out.score[0] - LARGE_GAIN * min_gain:
                out.settled[axis.knob] = out.score[0]
            if run.finished() or out.gains[axis.knob] >= LARGE_GAIN * min_gain:
                break
    finally:
        out.searches += [r.conclude(complete=False) for r in runs if r.trace.probes]
    return runs


PAIRED = ("steps", "schedule")        # both only set how the sampling ODE is discretised: their effects trade off
# knobs whose effects trade off, so that a fit of one alone stops where the other would carry it on
# (parity.diagnose.fit.valley_partner): the steps and the shift; the guidance and the LoRA multiplier, which both
# set how far the picture moves from the base model's (measured: `valley_partner`)
PARTNERS = (PAIRED, ("guidance", "lora_scale"))
DIAGONAL_SCALES = (0.5, 0.25, 0.0)    # diagonal probes, as fractions of each paired axis's first step (0: one grid step)


def _along_valley(out: Descent, valley: Valley | None, axes_of: Callable[[RenderSpec], list[Axis]],
                  searched: set[str]) -> bool:
    """`valley`'s better point, adopted with the steps and the shift as it has them; False when there is none."""
    moved = valley(out.spec, out.score) if valley is not None else None
    if moved is None:
        return False
    out.spec, out.score = moved
    for axis in axes_of(out.spec):
        if axis.knob in PAIRED:   # as the spec has them (AI Toolkit's own shift included: the claim is the spec's)
            out.changes.pop(axis.knob, None)
            out.changes[axis.knob] = stored_value(axis, out.spec)
            searched.add(axis.knob)
    return True


def _extrapolate(out: Descent, then: RenderSpec, session: Session, axes_of: Callable[[RenderSpec], list[Axis]],
                 min_gain: float) -> bool:
    """Powell's step: coordinate descent on two knobs that trade off zig-zags (guidance down, then the multiplier
    up, then guidance again); the move of the last two rounds together points along the ridge, so one render
    goes that far again. Adopted when it gains."""
    probe, moved = out.spec, []
    for axis in axes_of(out.spec):
        a, b = axis_value(axis, then), axis_value(axis, out.spec)
        if a is None or b is None or axis.index(a) == axis.index(b):
            continue
        probe = axis.apply(probe, min(axis.n, max(0, 2 * axis.index(b) - axis.index(a))))
        moved.append(axis)
    if len(moved) < 2:
        return False
    sc = session.score(probe)
    if sc[0] <= out.score[0] + min_gain:
        return False
    out.spec, out.score = probe, sc
    for axis in moved:
        out.changes.pop(axis.knob, None)
        out.changes[axis.knob] = stored_value(axis, probe)
    return True


def _diagonal(out: Descent, session: Session, axes_of: Callable[[RenderSpec], list[Axis]], min_gain: float,
              searched: set[str]) -> bool:
    """When no knob gains alone: two knobs together, along the four diagonals. Knobs trade off: off by a few
    steps, a preview's shift is invisible (33 steps at a shift of 2.05 looks like 37 steps at 1.58), and guidance
    and the LoRA multiplier both set how strongly the prompt and the LoRA pull; coordinate descent stalls on such a
    ridge, moving two at once climbs off it. Pairs: steps with the shift, then the knobs searched so far. Adopts
    the best probe that gains; False when none does."""
    axes = {a.knob: a for a in axes_of(out.spec)}
    pairs = [PAIRED] if all(k in axes for k in PAIRED) else []
    moved = [k for k in axes if k in searched]
    pairs += [(x, y) for n, x in enumerate(moved) for y in moved[n + 1:] if (x, y) != PAIRED]
    for scale in DIAGONAL_SCALES:
        best = None
        for pair in pairs:
            for spec, sc in _diagonal_probes(out.spec, session, [axes[k] for k in pair], scale, searched):
                if sc[0] > out.score[0] + min_gain and (best is None or sc[0] > best[1][0]):
                    best = (spec, sc, pair)
        if best is not None:
            out.spec, out.score = best[0], best[1]
            for knob in best[2]:
                out.changes.pop(knob, None)
                out.changes[knob] = stored_value(axes[knob], out.spec)
                searched.add(knob)   # placed to a quarter step: screened finely from now on
            return True
    return False


def _diagonal_probes(spec: RenderSpec, session: Session, pair: list[Axis], scale: float,
                     searched: set[str]) -> list[tuple[RenderSpec, Scored]]:
    """The four diagonal neighbours of `spec` in the plane of two axes (a searched axis at a quarter step)."""
    here = [x.index(v) if (v := axis_value(x, spec)) is not None else None for x in pair]
    if None in here:
        return []
    steps = [max(1, int(round(x.first_step * scale / (4 if x.knob in searched else 1) / x.resolution))) for x in pair]
    out = []
    for sa in (-1, 1):
        for sb in (-1, 1):
            i, j = here[0] + sa * steps[0], here[1] + sb * steps[1]
            if 0 <= i <= pair[0].n and 0 <= j <= pair[1].n:
                probe = pair[0].apply(pair[1].apply(spec, j), i)
                out.append((probe, session.score(probe)))
    return out


def axis_value(axis: Axis, spec: RenderSpec) -> float | None:
    """The value `spec` has on `axis` (None: the schedule is not a static shift)."""
    if axis.knob == "schedule":
        return equivalent_shift(spec)
    return {"steps": spec.sample_steps, "guidance": spec.guidance_scale,
            "lora_scale": spec.network_multiplier}[axis.knob]


def stored_value(axis: Axis, spec: RenderSpec) -> Any:
    v = axis_value(axis, spec)
    return axis.stored(axis.index(v)) if v is not None else spec.schedule


def _adopt(out: Descent, run: _AxisRun, searched: set[str]) -> None:
    i, score = run.best()
    trace = run.conclude(complete=True)
    if trace not in out.searches:
        out.searches.append(trace)
    searched.add(run.axis.knob)
    if i is not None:
        out.spec = run.axis.apply(out.spec, i)
        out.score = score
        out.changes.pop(run.axis.knob, None)
        out.changes[run.axis.knob] = run.axis.stored(i)
