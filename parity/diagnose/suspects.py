"""Suspect search: the settings on record agree with the inference settings, yet the images differ.

Usual reasons (aitk-flux2-previews.md sections A.2 and G): the config copy no longer matches what rendered the
previews (edited after the run, a resumed job with other sample settings), or the UI's defaults were assumed where
the code's applied (steps 30 vs 20, guidance 4 vs 7, seed 42 with walk vs 0 without, 1024 vs 512 px). We re-render
with the likely alternatives one knob at a time, rank them by score, combine the winners, and say e.g.
"previews look like guidance 7, not 4" with the scores as evidence -- or that nothing tried explains it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from parity.diagnose.cache import PARITY_TIERS, BudgetExhausted, RenderCache, RenderFn, ScoreFn, Session
from parity.job.sizes import effective_size
from parity.spec import RenderSpec

# Candidate values, most likely first (section A.2 / D.1 / G): AI Toolkit code default, UI default, the reference
# server's default, then common community values.
STEP_CANDIDATES: tuple[int, ...] = (20, 30, 25, 28, 50)
GUIDANCE_CANDIDATES: tuple[float, ...] = (7.0, 4.0, 3.5, 2.5, 5.0, 3.0)
MULTIPLIER_CANDIDATES: tuple[float, ...] = (1.0, 0.0, 0.5, 0.75, 1.25)
SIZE_CANDIDATES: tuple[tuple[int, int], ...] = ((1024, 1024), (512, 512), (768, 768))
MIN_GAIN = 0.01   # a candidate must beat the baseline score by this much to count as evidence


@dataclass(frozen=True)
class Candidate:
    knob: str                      # a KNOBS name, or "defaults" for a whole default set
    label: str                     # human text of the value, e.g. "7" or "AI Toolkit code defaults"
    changes: tuple[tuple[str, Any], ...]   # RenderSpec field -> value

    def apply(self, spec: RenderSpec) -> RenderSpec:
        return spec.with_(**dict(self.changes))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _image_size(path: Any) -> tuple[int, int] | None:
    """(width, height) of the preview file, or None if it cannot be read (the comparison reports that)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any unreadable file: no size hint
        return None


def candidates_for(spec: RenderSpec, index: int = 0, preview_size: tuple[int, int] | None = None) -> dict[str, list[Candidate]]:
    """Per knob, the alternatives worth a render for this spec (values equal to the spec's own are left out)."""
    out: dict[str, list[Candidate]] = {}
    out["steps"] = [Candidate("steps", str(n), (("sample_steps", n),)) for n in STEP_CANDIDATES if n != spec.sample_steps]
    out["guidance"] = [Candidate("guidance", _fmt(g), (("guidance_scale", g),))
                       for g in GUIDANCE_CANDIDATES if g != spec.guidance_scale]
    other = "empirical" if spec.schedule == "aitk" else "aitk"
    out["schedule"] = [Candidate("schedule", other, (("schedule", other),))]
    # Seed walk (section A.2): on -> seed + i, off -> the start seed for every prompt. Both start seeds 0 (code) and
    # 42 (UI, and the reference server's 42 + i).
    seeds: list[tuple[int, str]] = []
    if index:
        seeds += [(spec.seed - index, f"{spec.seed - index} (seed walk off)"),
                  (spec.seed + index, f"{spec.seed + index} (seed walk on)")]
    seeds += [(0 + index, f"{index} (start 0, walk on)"), (42 + index, f"{42 + index} (start 42, walk on)"),
              (0, "0 (start 0, walk off)"), (42, "42 (start 42, walk off)")]
    seen = {spec.seed}
    out["seed"] = []
    for s, label in seeds:
        if s >= 0 and s not in seen:
            seen.add(s)
            out["seed"].append(Candidate("seed", label, (("seed", s),)))
    if spec.lora_path is not None:
        out["lora_scale"] = [Candidate("lora_scale", _fmt(m) + (" (LoRA not applied)" if m == 0 else ""),
                                       (("network_multiplier", m),))
                             for m in MULTIPLIER_CANDIDATES if m != spec.network_multiplier]
    eff = effective_size(spec.width, spec.height)
    if preview_size is not None:
        # The preview's own pixel size is what rendered it: if it differs, that is the size to try; if it agrees,
        # no other size could produce an image of this size.
        out["resolution"] = ([Candidate("resolution", f"{preview_size[0]}x{preview_size[1]}",
                                        (("width", preview_size[0]), ("height", preview_size[1])))]
                             if tuple(preview_size) != eff else [])
    else:
        sizes = [*SIZE_CANDIDATES, (spec.height, spec.width)]
        out["resolution"] = [Candidate("resolution", f"{w}x{h}", (("width", w), ("height", h)))
                             for w, h in dict.fromkeys(sizes) if effective_size(w, h) != eff]
    return out


def default_sets(spec: RenderSpec, index: int = 0) -> list[Candidate]:
    """Whole default sets users mix up (section A.2): AI Toolkit's code defaults vs its UI defaults."""
    sets = [
        Candidate("defaults", "AI Toolkit code defaults (20 steps, guidance 7, seed 0, no walk)",
                  (("sample_steps", 20), ("guidance_scale", 7.0), ("seed", 0))),
        Candidate("defaults", "AI Toolkit UI defaults (30 steps, guidance 4, seed 42 + i)",
                  (("sample_steps", 30), ("guidance_scale", 4.0), ("seed", 42 + index))),
    ]
    return [c for c in sets if c.apply(spec) != spec]


@dataclass
class Tried:
    knob: str
    value: str
    score: float
    tier: str | None
    gain: float

    def to_dict(self) -> dict[str, Any]:
        return {"knob": self.knob, "value": self.value, "score": self.score, "tier": self.tier, "gain": self.gain}


@dataclass
class Suspects:
    baseline: float
    baseline_tier: str | None
    tried: list[Tried]                        # ranked best first
    best: list[Tried] = field(default_factory=list)   # the winning change(s); several when combined
    best_score: float | None = None
    best_tier: str | None = None
    explained: bool = False
    verdict: str = ""
    skipped: list[str] = field(default_factory=list)   # candidates not rendered (budget)
    extra_renders: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "baseline_tier": self.baseline_tier,
                "tried": [t.to_dict() for t in self.tried], "best": [t.to_dict() for t in self.best],
                "best_score": self.best_score, "best_tier": self.best_tier, "explained": self.explained,
                "verdict": self.verdict, "skipped": list(self.skipped), "extra_renders": self.extra_renders}


def _current_label(spec: RenderSpec, knob: str) -> str:
    return {"steps": str(spec.sample_steps), "guidance": _fmt(spec.guidance_scale), "schedule": spec.schedule,
            "seed": str(spec.seed), "lora_scale": _fmt(spec.network_multiplier),
            "resolution": "x".join(map(str, effective_size(spec.width, spec.height))),
            "defaults": "the recorded settings"}.get(knob, "?")


def _round_robin(groups: dict[str, list[Candidate]], order: Sequence[str]) -> list[Candidate]:
    """Interleave the knobs' candidate lists so a small budget still tries the likeliest value of every knob."""
    queues = [list(groups.get(k, [])) for k in order]
    out: list[Candidate] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


KNOB_ORDER: tuple[str, ...] = ("resolution", "steps", "guidance", "seed", "schedule", "lora_scale")


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
    candidates: dict[str, list[Candidate]] | None = None,
    explained_at: float = 0.98,
    exhaustive: bool = False,
) -> Suspects:
    """Try likely alternatives to the recorded `spec` (steps, guidance, schedule, size, seed walk, LoRA multiplier;
    then the AI Toolkit code/UI default sets; then the per-knob winners combined), ranked by score.

    `index` is the prompt index (for the seed-walk alternatives); `preview_size` the preview's pixel size (read from
    the file when None). `budget` caps the renders (the recorded spec's own render is free). Without tiers, a
    candidate "explains" the preview when its score reaches `explained_at`. The search stops at the first candidate
    that restores parity unless `exhaustive` (each render of the real model costs GPU minutes)."""
    session = Session(render, score, preview_path, budget=budget, cache=cache)
    base, base_tier = session.score(spec, free=True)
    if preview_size is None:
        preview_size = _image_size(preview_path) if not hasattr(preview_path, "shape") else None
    groups = candidates if candidates is not None else candidates_for(spec, index, preview_size)
    order = [k for k in KNOB_ORDER if k in groups] + [k for k in groups if k not in KNOB_ORDER]
    queue = _round_robin(groups, order) + default_sets(spec, index)

    def restores(s: float, t: str | None) -> bool:
        return t in PARITY_TIERS if t is not None else s >= explained_at

    tried: list[Tried] = []
    result = Suspects(baseline=base, baseline_tier=base_tier, tried=tried)
    if restores(base, base_tier):
        result.verdict = "the recorded settings already reproduce the preview"
        result.explained = True
        return result
    cand_of = _try_each(session, spec, queue, base, restores, exhaustive, result)
    combo = _combine_winners(session, spec, cand_of, restores, result)
    tried.sort(key=lambda x: -x.score)
    result.extra_renders = session.extra_renders
    _conclude(result, spec, base, combo, restores)
    return result


Restores = Callable[[float, "str | None"], bool]


def _try_each(session: Session, spec: RenderSpec, queue: list[Candidate], base: float, restores: Restores,
              exhaustive: bool, result: Suspects) -> dict[int, Candidate]:
    """Render every candidate once (until one restores parity unless `exhaustive`) into `result.tried`.
    Returns the candidate behind each tried entry (by id)."""
    cand_of: dict[int, Candidate] = {}
    seen_specs = {spec}
    for c in queue:
        if c.apply(spec) in seen_specs:  # e.g. a default set that only changes the seed: already tried
            continue
        seen_specs.add(c.apply(spec))
        try:
            s, t = session.score(c.apply(spec))
        except BudgetExhausted:
            result.skipped.append(f"{c.knob}={c.label}")
            continue
        result.tried.append(Tried(c.knob, c.label, s, t, s - base))
        cand_of[id(result.tried[-1])] = c
        if not exhaustive and restores(s, t):
            break
    return cand_of


def _combine_winners(session: Session, spec: RenderSpec, cand_of: dict[int, Candidate], restores: Restores,
                     result: Suspects) -> tuple[list[Tried], float, str | None] | None:
    """The best value of every knob that helped, combined in one render, when no single change explains the
    preview: (winners, score, tier), or None."""
    per_knob: dict[str, Tried] = {}
    for tr in result.tried:
        if tr.knob != "defaults" and tr.gain > MIN_GAIN and (tr.knob not in per_knob
                                                             or tr.score > per_knob[tr.knob].score):
            per_knob[tr.knob] = tr
    best_single = max(result.tried, key=lambda x: x.score, default=None)
    if len(per_knob) < 2 or (best_single and restores(best_single.score, best_single.tier)):
        return None
    winners = sorted(per_knob.values(), key=lambda x: -x.score)
    combined = spec
    for w in winners:
        combined = cand_of[id(w)].apply(combined)
    try:
        s, t = session.score(combined)
    except BudgetExhausted:
        result.skipped.append("combination of " + ", ".join(f"{w.knob}={w.value}" for w in winners))
        return None
    return winners, s, t


def _conclude(result: Suspects, spec: RenderSpec, base: float,
              combo: tuple[list[Tried], float, str | None] | None, restores: Restores) -> None:
    """The best finding (a single change or the combination) and the verdict in words."""
    best_single = max(result.tried, key=lambda x: x.score, default=None)
    if combo is not None and (best_single is None or combo[1] > best_single.score):
        result.best, result.best_score, result.best_tier = combo[0], combo[1], combo[2]
    elif best_single is not None:
        result.best, result.best_score, result.best_tier = [best_single], best_single.score, best_single.tier
    if not result.best or result.best_score is None or result.best_score - base <= MIN_GAIN:
        result.best = []
        result.verdict = (f"nothing tried explains it: {len(result.tried)} alternative(s) scored at most "
                          f"{max((x.score for x in result.tried), default=base):.3f} vs {base:.3f} for the recorded "
                          "settings")
        return
    result.explained = restores(result.best_score, result.best_tier)
    looks = ", ".join(f"{w.knob} {w.value}" if w.knob != "defaults" else w.value for w in result.best)
    nots = ", ".join(f"not {_current_label(spec, w.knob)}" for w in result.best if w.knob != "defaults")
    evidence = f"score {result.best_score:.3f} vs {base:.3f} with the recorded settings"
    if result.explained:
        result.verdict = f"previews look like {looks}" + (f", {nots}" if nots else "") + f" ({evidence})"
    else:
        result.verdict = (f"closest: {looks}" + (f" ({nots})" if nots else "") +
                          f", {evidence}; nothing tried fully explains the preview")
