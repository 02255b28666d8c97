"""Global before local: a coarse scan of every knob's whole plausible range, then the best basins refined.

A descent started at the recorded values walks into whichever basin is nearer. Steps and the schedule's shift both
only change how the sampling ODE is discretised, so a preview rendered at a static shift of 2.5 also looks a bit
like 14 steps: two basins, and the nearer one is not always the right one. So the search first renders each knob
at a few values spread over its whole range (the others held at the recorded values; halfway between them too
when the recorded render is another picture and no coarse render stands out, `densify`), ranks the knobs by the best
coarse score, and refines the best basins one after the other (a bracketed search on that knob, then coordinate
descent over all knobs from there). It stops as soon as one reproduces the target exactly; otherwise the best two
answers are compared, and when they score within the noise of each other the caller asks another item to separate
them, or reports both ("ambiguous").

Pure: rendering and scoring come in through a `Session`, like parity.diagnose.recover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from parity.diagnose.cache import BudgetExhausted, Session
from parity.diagnose.recover import Axis, Descent, Scored, Valley, _AxisRun, _golden, axes_for, axis_value, descend
from parity.spec import RenderSpec
from parity.tier import DIFFERENT, explains

BASINS = 3            # at most this many basins refined
MIN_REFINE = 6        # renders a basin needs to be refined at all
SHARE = 0.6           # of the renders left, the most one basin's descent may spend before the next basin
BASIN_RANGE = 3.0     # dB: a basin whose coarse score is this far below the best one's is not refined


@dataclass
class Coarse:
    """One knob's coarse scan: grid index -> score, the recorded start included when it is on the grid."""

    axis: Axis
    run: _AxisRun
    best_index: int | None = None
    best_score: float = -math.inf


@dataclass
class Answer:
    """One refined basin: where its descent ended."""

    knob: str                         # the knob whose basin it started in
    descent: Descent

    @property
    def score(self) -> float:
        return self.descent.score[0]

    def key(self) -> tuple:
        return tuple(sorted(self.descent.changes.items()))


@dataclass
class ScanResult:
    answers: list[Answer] = field(default_factory=list)   # best first
    scans: list[Coarse] = field(default_factory=list)
    out_of_budget: bool = False


def minimum_renders(spec: RenderSpec) -> int:
    """The fewest extra renders a search needs not to guess: the coarse scan and a short refinement."""
    return sum(len(coarse_indices(a)) for a in axes_for(spec)) + MIN_REFINE


def close(score: Scored, explained: Callable[[Scored], bool]) -> bool:
    """Near the answer: NEAR or EXACT (identical but for the JPEG error), or explaining the target."""
    return explains(score[1]) or explained(score)


def can_render(session: Session) -> bool:
    return session.budget is None or session.extra_renders < session.budget


def coarse_indices(axis: Axis) -> list[int]:
    """Grid indices of the coarse values of `axis`, without those the recorded value stands for."""
    out = []
    declared = axis.declared   # coarse values over the plausible range (parity.knobs): any value lies in the basin
    near = declared.near       # of one of them or of the recorded value, which stands for those within `near`
    for v in declared.coarse:
        if not axis.lo <= v <= axis.hi:
            continue
        close = (max(v, axis.start) / max(min(v, axis.start), 1e-9) < near) if declared.ratio \
            else abs(v - axis.start) < near
        if not close:
            out.append(axis.index(v))
    return sorted(set(out) - {axis.index(axis.start)})


def coarse_scan(spec: RenderSpec, session: Session, start: Scored, done: Callable[[Scored], bool],
                min_gain: float, axes: list[Axis] | None = None, lift: float | None = None) -> list[Coarse]:
    """Every knob at its coarse values; stops early when one reproduces the target (`done`). With `lift` (in the
    score's unit), a scan in which no render is lifted that far above the others is made denser (`densify`)."""
    out: list[Coarse] = []
    for axis in axes if axes is not None else axes_for(spec):
        c = Coarse(axis, _AxisRun(axis, spec, session, start, done, min_gain))
        out.append(c)
        for i in coarse_indices(axis):
            score = c.run.f(i)
            if score > c.best_score:
                c.best_index, c.best_score = i, score
            if done(c.run.scores[i]):
                return out
    if lift is not None and start[1] == DIFFERENT.name and not lifted(out, start, lift):
        densify(out, start, done, lift)
    return out


LIFT = {"psnr": 3.0, "ssim": 0.03}   # a coarse score this far above the median of the scan's is evidence of a basin


def lifted(scans: list[Coarse], start: Scored, lift: float) -> bool:
    """Some coarse score stands `lift` above the median of all of them (the recorded render's included): a basin
    seen. Otherwise every coarse render is as far from the target as any other picture."""
    scores = sorted([start[0]] + [sc[0] for c in scans for sc in c.run.scores.values()])
    return scores[-1] >= scores[len(scores) // 2] + lift


def densify(scans: list[Coarse], start: Scored, done: Callable[[Scored], bool], lift: float) -> None:
    """The recorded render is another picture and no coarse render is lifted above the rest (`lifted`): each
    knob's line again halfway between its coarse values (geometric midpoints on a ratio axis; the recorded value
    counts as one), knob by knob, until a render is lifted or reproduces the target. Measured on held-out model
    1602, guidance 7.1: every coarse render 13-16 dB (another picture; the guidance line 15.0 at 1.5, 14.0 at 5.5,
    15.9 at 8.0), while guidance 6.8 / 7.0 / 7.2 score 25.4 / 32.0 / 27.9: a peak narrower than the coarse spacing,
    and the fits from the coarse points followed noise for 60 renders. When none is lifted, the midpoints are
    left out of the scan (they stay rendered): one more point ahead of the recorded render by chance is one more
    start that stalls (measured on development draw 597080, 27 steps + multiplier 1.12: right in 51 renders
    without the midpoints, open with them as starts)."""
    added: list[tuple[Coarse, int]] = []
    try:
        _densify(scans, start, done, lift, added)
    finally:
        if not lifted(scans, start, lift) and not any(done(c.run.scores[i]) for c, i in added):
            for c, i in added:
                del c.run.scores[i]
            for c in {id(c): c for c, _ in added}.values():   # the best coarse value again, as coarse_scan had it
                c.best_index = max(coarse_indices(c.axis), key=lambda i: c.run.scores[i][0], default=None)
                c.best_score = c.run.scores[c.best_index][0] if c.best_index is not None else -math.inf


def _densify(scans: list[Coarse], start: Scored, done: Callable[[Scored], bool], lift: float,
             added: list[tuple[Coarse, int]]) -> None:
    for c in scans:
        a, session = c.axis, c.run.session
        seen = sorted(set(c.run.scores) | {c.run.i0})
        for lo, hi in zip(seen, seen[1:]):
            x, y = a.value(lo), a.value(hi)
            mid = a.index(math.sqrt(x * y) if a.declared.ratio and x > 0 else (x + y) / 2)
            if session.budget is not None and session.budget - session.extra_renders <= MIN_REFINE:
                return   # the renders left go to the search itself
            if lo < mid < hi:
                score = c.run.f(mid)
                added.append((c, mid))
                if score > c.best_score:
                    c.best_index, c.best_score = mid, score
                if done(c.run.scores[mid]) or lifted(scans, start, lift):
                    return


def coarse_starts(scans: list[Coarse], here: tuple[float, ...], score: Scored, ahead_by: float
                  ) -> list[tuple[float, ...]]:
    """Where the local fits start: the recorded point `here` (the recorded value of each scanned axis, in the
    scans' order), after the coarse points that beat its `score` by `ahead_by` and before the others, each group
    best score first. Most knobs keep their recorded values, and an answer between a recorded value and its coarse
    neighbours can score below both (guidance 3.2 recorded as 4, coarse 1.5 and 5.5); a coarse point goes first
    only on clear evidence, since the steps move a picture least and a coarse steps value often scores a little
    better by chance (measured: 11 steps, +0.7 dB, for a true guidance 3.2)."""
    points = []
    for n, c in enumerate(scans):
        for i, sc in c.run.scores.items():
            p = list(here)
            p[n] = float(c.axis.value(i))
            if tuple(p) != here:
                points.append((sc[0], tuple(p)))
    points.sort(key=lambda t: -t[0])
    ahead = [p for sc, p in points if sc >= score[0] + ahead_by]
    return ahead + [here] + [p for sc, p in points if sc < score[0] + ahead_by]


def basins(scans: list[Coarse], start: Scored) -> list[Coarse]:
    """Knobs whose coarse best beats the recorded values, best first, within BASIN_RANGE of the best."""
    gaining = sorted((c for c in scans if c.best_index is not None and c.best_score > start[0]),
                     key=lambda c: -c.best_score)
    if not gaining:
        return []
    top = gaining[0].best_score
    return [c for c in gaining[:BASINS] if c.best_score >= top - BASIN_RANGE]


def bracket(c: Coarse) -> tuple[int, int]:
    """The coarse neighbours of the knob's best coarse value (the recorded start counts as one): its basin."""
    b = c.best_index
    assert b is not None
    seen = sorted(set(c.run.scores) | {c.run.i0})
    lower = [i for i in seen if i < b]
    upper = [i for i in seen if i > b]
    return (lower[-1] if lower else 0), (upper[0] if upper else c.axis.n)


def refine_basin(c: Coarse) -> None:
    """Golden-section inside the basin, then a climb to a grid local maximum."""
    lo, hi = bracket(c)
    _golden(c.run, lo, c.best_index, hi)


def covered(c: Coarse, answers: list[Answer]) -> bool:
    """An answer found before already moved this knob into its basin (several knobs differ: the first basin's
    descent adopted this one too), so refining it again would repeat that descent."""
    lo, hi = bracket(c)
    for a in answers:
        v = axis_value(c.axis, a.descent.spec)
        if v is not None and v != c.axis.start and lo <= c.axis.index(v) <= hi:
            return True
    return False


def global_search(spec: RenderSpec, session: Session, start: Scored, exact: Callable[[Scored], bool],
                  explained: Callable[[Scored], bool], *, min_gain: float, polish_gain: float,
                  axes_of: Callable[[RenderSpec], list[Axis]] = axes_for, valley: Valley | None = None,
                  lift: float | None = None) -> ScanResult:
    """Coarse scan, then each basin refined and descended from, best basin first, until one is exact; the best
    answer then gets what is left of the budget. A basin's descent may spend at most SHARE of the renders left,
    so a wrong first basin cannot starve the right one."""
    result = ScanResult()
    args = (session, start, exact, explained, min_gain, polish_gain, axes_of, valley)
    try:
        result.scans = coarse_scan(spec, session, start, exact, min_gain, axes_of(spec), lift)
        todo = [c for c in basins(result.scans, start)]
        for c in todo + [None]:
            if c is None and any(close(a.descent.score, explained) for a in result.answers):
                break   # no need for the recorded values' own basin
            if c is not None and covered(c, result.answers):
                continue
            result.answers.append(_shared(session, SHARE, lambda c=c: _descend_from(c, spec, *args) if c is not None
                                          else _local(spec, *args)))
            if exact(result.answers[-1].descent.score) or not can_render(session):
                break
        _polish(result, *args)
    except BudgetExhausted:
        pass
    result.out_of_budget = not can_render(session)
    result.answers.sort(key=lambda a: -a.score)
    return result


def _shared(session: Session, share: float, run: Callable[[], Answer]) -> Answer:
    """`run` with the session's budget cut to `share` of the renders left (at least MIN_REFINE)."""
    total = session.budget
    if total is not None:
        session.budget = min(total, session.extra_renders + max(MIN_REFINE,
                                                                 int((total - session.extra_renders) * share)))
    try:
        return run()
    finally:
        session.budget = total


def _polish(result: ScanResult, session: Session, start: Scored, exact: Callable[[Scored], bool],
            explained: Callable[[Scored], bool], min_gain: float, polish_gain: float,
            axes_of: Callable[[RenderSpec], list[Axis]], valley: Valley | None) -> None:
    """The best answer, not exact, continues its descent with every render left (its share may have cut it)."""
    if not result.answers:
        return
    best = max(result.answers, key=lambda a: a.score)
    if exact(best.descent.score) or not can_render(session):
        return
    d = descend(best.descent.spec, session, best.descent.score, exact, explained, axes_of=axes_of, min_gain=min_gain,
                polish_gain=polish_gain, max_rounds=10, searched=set(best.descent.changes), valley=valley)
    best.descent.searches += d.searches
    if d.score[0] > best.score:
        best.descent.spec, best.descent.score = d.spec, d.score
        best.descent.changes.update(d.changes)


def _local(spec: RenderSpec, session: Session, start: Scored, exact: Callable[[Scored], bool],
           explained: Callable[[Scored], bool], min_gain: float, polish_gain: float,
           axes_of: Callable[[RenderSpec], list[Axis]], valley: Valley | None) -> Answer:
    """The basin around the recorded values themselves: between them and the coarse values next to them every
    coarse render may score lower while the answer lies in between (a shift of 2.3 recorded as 1.9, coarse at
    0.8 and 3.4). The local descent from the recorded values finds it."""
    return Answer("recorded", descend(spec, session, start, exact, explained, axes_of=axes_of, min_gain=min_gain,
                                      polish_gain=polish_gain, max_rounds=10, valley=valley))


def _descend_from(c: Coarse, spec: RenderSpec, session: Session, start: Scored, exact: Callable[[Scored], bool],
                  explained: Callable[[Scored], bool], min_gain: float, polish_gain: float,
                  axes_of: Callable[[RenderSpec], list[Axis]], valley: Valley | None) -> Answer:
    """Refine the basin on its knob, adopt the value, and descend over every knob from there."""
    try:
        refine_basin(c)
    except BudgetExhausted:
        pass
    i, score = c.run.best()
    trace = c.run.conclude(complete=True)
    if i is None:
        return Answer(c.axis.knob, Descent(spec, start, searches=[trace]))
    here = c.axis.apply(spec, i)
    d = descend(here, session, score, exact, explained, axes_of=axes_of, min_gain=min_gain,
                polish_gain=polish_gain, max_rounds=10, searched={c.axis.knob}, valley=valley) \
        if not exact(score) and can_render(session) \
        else Descent(here, score)
    d.changes = {c.axis.knob: c.axis.stored(i), **d.changes}   # a later value of the same knob wins
    d.searches.insert(0, trace)
    if not can_render(session):
        d.out_of_budget = True
    return Answer(c.axis.knob, d)
