"""What every output says of a run and of one item (the CLI table, the pytest failure screen, progress lines,
HTML, markdown, JUnit, the PR comment): item score, worst-first order, counts per tier, per case and per knob,
score-by-step series, and each item's verdict (`verdict`: one function, every output formats its fields). Plain
functions over the results dicts."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from parity import knobs as registry
from parity.tier import tier_names, tier_rank
from parity.values import cause_text

SCORE_METRICS: tuple[str, ...] = ("ssim", "ssim_y")


def score_metric(run: dict[str, Any]) -> str:
    """The metric used as "score" for sorting and plots: the run's `settings.score_metric`, else SSIM."""
    m = (run.get("settings") or {}).get("score_metric")
    return m if isinstance(m, str) and m else SCORE_METRICS[0]


def item_score(item: dict[str, Any], metric: str = "ssim") -> float | None:
    """The item's score (higher is better) or None (an ERROR item, a missing or non-finite metric)."""
    metrics = item.get("metrics") or {}
    for name in (metric, *SCORE_METRICS):
        v = metrics.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def worst_first_key(item: dict[str, Any], metric: str = "ssim") -> tuple:
    """Sort key: failed gates first, then worse tier, then lower score (None lowest), then id."""
    s = item_score(item, metric)
    return (bool(item.get("passed")), -tier_rank(item["tier"]), -math.inf if s is None else s, item["id"])


def verdict_mark(item: dict[str, Any]) -> str:
    """How an item stands against its gate in one word: ok, expected (below it only through listed differences,
    so it passes) or FAIL."""
    if item.get("passed"):
        return "expected" if item.get("expected") else "ok"
    return "FAIL"


def shown_verdict(suspects: dict[str, Any] | None) -> str | None:
    """The verdict of a parameter search worth a line: recovered values, two answers that explain the preview
    equally, or a search the budget did not allow (never a guess)."""
    s = suspects or {}
    return s.get("verdict") if (s.get("best") or s.get("ambiguous") or s.get("not_searched")) else None


def top_cause(item: dict[str, Any]) -> str | None:
    """What explains an item in one line, the same in the console table, summary.md and the PR comment: its
    error, the explanation of an external render, the top-ranked cause, the settings recovered when every knob
    agrees, else its mismatching knobs (None when there is nothing to say)."""
    if item.get("error"):
        return str(item["error"]).strip().splitlines()[0] if str(item["error"]).strip() else "error"
    if (item.get("explanation") or {}).get("verdict"):
        return str(item["explanation"]["verdict"])
    causes = [c for c in item.get("causes") or [] if isinstance(c, dict) and c.get("knob")]
    if causes:
        c = causes[0]
        return "top cause: " + cause_text(str(c["knob"]), c.get("value_preview"), c.get("value_inference"))
    if shown_verdict(item.get("suspects")):
        return str(item["suspects"]["verdict"])
    if item.get("mismatches"):
        return "mismatched: " + ", ".join(map(str, item["mismatches"]))
    return None


@dataclass(frozen=True)
class Verdict:
    """One item's verdict as every output states it: its tier against its gate, how it stands (`mark`: ok,
    expected or FAIL), its score and what explains it (`why`: `top_cause`)."""

    tier: str
    gate: str | None
    mark: str
    why: str | None
    score: float | None
    error: bool = False          # `why` is the item's error
    reason: str | None = None    # the first reason it fails (said when nothing else explains it)

    @property
    def tier_text(self) -> str:
        """The tier, marked when the item passes as an expected difference: "DRIFT (expected)"."""
        return f"{self.tier} (expected)" if self.mark == "expected" else self.tier

    @property
    def status(self) -> str:
        """The tier with how it stands: "NEAR", "DRIFT (expected)", "DRIFT FAIL", "ERROR FAIL"."""
        return f"{self.tier} FAIL" if self.mark == "FAIL" else self.tier_text

    @property
    def line(self) -> str:
        """The verdict line: "tier DRIFT (gate NEAR); top cause: steps 20 -> 28", "tier ERROR (gate NEAR): <error>"
        (pytest's short summary, the failure screen's first line, JUnit's failure message, the HTML card)."""
        head = f"tier {self.tier} ({f'gate {self.gate}' if self.gate else 'no gate'})"
        why = self.why or (self.reason if self.mark == "FAIL" else None)
        return f"{head}{':' if self.error else ';'} {why}" if why else head


def verdict(item: dict[str, Any], metric: str = SCORE_METRICS[0]) -> Verdict:
    """The verdict of one results item (a record's `to_dict()`)."""
    reasons = [str(r) for r in item.get("fail_reasons") or [] if r]
    return Verdict(tier=item["tier"], gate=item.get("gate") or None, mark=verdict_mark(item), why=top_cause(item),
                   score=item_score(item, metric), error=bool(str(item.get("error") or "").strip()),
                   reason=reasons[0] if reasons else None)


@dataclass
class Summary:
    total: int
    passed: int
    failed: int
    tiers: dict[str, int]
    cases: dict[str, dict[str, Any]]              # case -> {"n", "passed", "failed", "tiers": {tier: n}, "min_score"}
    knobs: dict[str, dict[str, int]]              # knob -> {"mismatch": n, "top_cause": n, "cause": n}
    irreducible: dict[str, int]
    worst: list[dict[str, Any]]                   # items, worst first (all of them)
    steps: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)  # case -> [(step, mean, min)]
    metric: str = "ssim"
    noise_floor: dict[str, int] = field(default_factory=dict)  # {"measured": n, "lifted": n} (irreducible-only items)


def summarize(items: list[dict[str, Any]], run: dict[str, Any]) -> Summary:
    metric = score_metric(run)
    tiers = {t: 0 for t in tier_names()}
    cases: dict[str, dict[str, Any]] = {}
    knobs: dict[str, dict[str, int]] = defaultdict(lambda: {"mismatch": 0, "top_cause": 0, "cause": 0})
    irreducible: Counter[str] = Counter()
    by_step: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    passed = 0
    floor = {"measured": 0, "lifted": 0}
    for it in items:
        nf = it.get("noise_floor")
        if isinstance(nf, dict) and nf.get("metrics"):
            floor["measured"] += 1
            floor["lifted"] += bool(nf.get("applied"))
        tiers[it["tier"]] += 1
        passed += bool(it.get("passed"))
        c = cases.setdefault(it.get("case") or "", {"n": 0, "passed": 0, "failed": 0,
                                                      "tiers": {t: 0 for t in tier_names()}, "min_score": None})
        c["n"] += 1
        c["passed" if it.get("passed") else "failed"] += 1
        c["tiers"][it["tier"]] += 1
        s = item_score(it, metric)
        if s is not None:
            c["min_score"] = s if c["min_score"] is None else min(c["min_score"], s)
            if isinstance(it.get("step"), (int, float)):
                by_step[it.get("case") or ""][float(it["step"])].append(s)
        for k in dict.fromkeys(str(k) for k in it.get("mismatches", [])):
            knobs[k]["mismatch"] += 1
        causes = [c for c in it.get("causes", []) if isinstance(c, dict) and c.get("knob")]
        for i, cause in enumerate(causes):
            knobs[str(cause["knob"])]["cause"] += 1
            if i == 0:
                knobs[str(cause["knob"])]["top_cause"] += 1
        irreducible.update(list(dict.fromkeys(str(k) for k in it.get("irreducible", []))))
    order = {k: i for i, k in enumerate(registry.knob_names() + registry.irreducible_names())}
    knobs_sorted = dict(sorted(knobs.items(), key=lambda kv: (-kv[1]["mismatch"], -kv[1]["top_cause"],
                                                               order.get(kv[0], 99), kv[0])))
    steps = {case: sorted((st, sum(v) / len(v), min(v)) for st, v in per.items()) for case, per in by_step.items()}
    return Summary(total=len(items), passed=passed, failed=len(items) - passed, tiers=tiers,
                   cases=dict(sorted(cases.items())), knobs=knobs_sorted, irreducible=dict(irreducible.most_common()),
                   worst=sorted(items, key=lambda it: worst_first_key(it, metric)), steps=steps, metric=metric,
                   noise_floor=floor)
