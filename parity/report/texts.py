"""The words the HTML page shows of one item, formatted here once and carried in its page data (`texts`), so
static/report.js never re-implements a formatter: the item's verdict (parity.report.summary.verdict) and every
knob value it shows, through parity.values (parameter table, causes, size mismatch, schedule, facts, the settings
recovered for an external render and the parameter search's curves). results.json is not changed by it."""

from __future__ import annotations

from typing import Any

from parity.report.summary import verdict
from parity.values import knob_text, plain_text, schedule_text, size_mismatch_text

SIDES = ("preview", "inference")
# Rows of the page's metrics table after the metrics: (label, item field), shown when set.
FACTS = (("tier", "tier"), ("gate", "gate"), ("expected", "expected"), ("JPEG", "jpeg"),
         ("JPEG ceiling", "ceiling"), ("timings (s)", "timings"))


def _entry_value(entry: Any) -> Any:
    """A params entry is {"value", "source"} (older files: the bare value)."""
    return entry["value"] if isinstance(entry, dict) and "value" in entry else entry


def _schedule_side(value: Any, mu: Any) -> str:
    if isinstance(value, dict):
        return schedule_text(value)
    return f"mu {plain_text(round(mu, 3))}" if isinstance(mu, (int, float)) else "schedule"


def _pair(knob: str, a: Any, b: Any) -> list[str]:
    return [knob_text(knob, a), knob_text(knob, b)]


def _recovery(sp: Any) -> dict[str, Any] | None:
    """Per search trace (in `suspects.searches` order) its recorded value and each probe's value in words, and
    the value recovered per knob (the best answer, else an ambiguous candidate)."""
    if not isinstance(sp, dict):
        return None
    found: dict[str, Any] = {b["knob"]: b.get("value") for b in sp.get("best") or [] if isinstance(b, dict)}
    for a in sp.get("ambiguous") or []:
        for k, v in ((a or {}).get("changes") or {}).items():
            found.setdefault(k, v)
    recorded = sp.get("recorded") or {}
    searches = [{"recorded": knob_text(t.get("knob"), recorded.get(t.get("knob"), t.get("recorded"))),
                 "probes": [knob_text(t.get("knob"), p.get("value")) for p in t.get("probes") or []]}
                for t in sp.get("searches") or [] if isinstance(t, dict)]
    return {"searches": searches, "recovered": {k: knob_text(k, v) for k, v in found.items()}}


def item_texts(it: dict[str, Any], metric: str) -> dict[str, Any]:
    """The pre-formatted strings of one item's page data."""
    v = verdict(it, metric)
    params = it.get("params") or {}
    out: dict[str, Any] = {
        "verdict": {"mark": v.mark, "line": v.line},
        "params": {side: {k: knob_text(k, _entry_value(e)) for k, e in (params.get(side) or {}).items()}
                   for side in SIDES},
        "causes": [_pair(str(c.get("knob")), c.get("value_preview"), c.get("value_inference"))
                   for c in it.get("causes") or [] if isinstance(c, dict)],
        "irreducible": {str(d["knob"]): [plain_text(d.get("preview")), plain_text(d.get("inference"))]
                        for d in it.get("irreducible_details") or [] if isinstance(d, dict) and d.get("knob")},
        "facts": [[label, plain_text(it[key])] for label, key in FACTS if it.get(key) is not None],
    }
    if isinstance(it.get("size_mismatch"), dict):
        out["size_mismatch"] = size_mismatch_text(it["size_mismatch"])
    sched = it.get("schedule")
    if isinstance(sched, dict):
        out["schedule"] = {side: _schedule_side(_entry_value((params.get(side) or {}).get("schedule")),
                                                sched.get(f"mu_{side}")) for side in SIDES}
    settings = (it.get("explanation") or {}).get("settings")
    if isinstance(settings, dict):
        out["settings"] = {k: _pair(k, (s or {}).get("value"), (s or {}).get("preview")) for k, s in settings.items()}
    recovery = _recovery(it.get("suspects"))
    if recovery:
        out["recovery"] = recovery
    return out
