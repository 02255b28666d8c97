"""A markdown summary for a CI job summary ($GITHUB_STEP_SUMMARY) or a PR comment: tier counts, cases, the
worst items and the top causes. GitHub renders inline HTML and links in markdown, so user text is escaped
(markup characters as entities or backslash escapes, newlines flattened)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from parity.report.store import Results
from parity.report.summary import Summary, summarize, verdict
from parity.tier import DRIFT, NEAR, tier_names

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")  # emphasis, code, links, table cells; <>& become entities


def md_text(value: Any, limit: int = 120) -> str:
    """User text safe inside a markdown table cell: no HTML, no links, no pipes, one line, at most `limit` chars."""
    s = " ".join(str(value).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", s)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def item_href(report_href: str, item_id: str) -> str:
    """The link to one item in the hosted (or local) report: the report's #item= fragment."""
    return f"{report_href}#item={quote(item_id, safe='')}"


def headline_lines(s: Summary, results: Results) -> list[str]:
    """The verdict heading (✅ / ❌ / ⚠️ and how many items meet their gate) and, for an unfinished run, a note."""
    status = "✅" if s.failed == 0 and results.complete else "❌" if s.failed else "⚠️"
    lines = [f"## {status} parity: {s.passed}/{s.total} items meet their gate", ""]
    if not results.complete:
        lines += [f"> **Incomplete run**: the run did not finish; {s.total} items were recorded.", ""]
    return lines


def tier_table(s: Summary) -> list[str]:
    """Items per tier as a one-row markdown table."""
    names = tier_names()
    return ["| " + " | ".join(names) + " |", "|" + "---:|" * len(names),
            "| " + " | ".join(str(s.tiers[t]) for t in names) + " |", ""]


def _worst_table(bad: list[dict[str, Any]], metric: str, report_href: str | None) -> list[str]:
    """The worst items (or lowest scores when all pass) with their tier, score, mismatches and top cause."""
    title = "Worst items" if any(not it.get("passed") for it in bad) else "Lowest scores"
    lines = [f"### {title}", "", f"| item | tier | gate | {md_text(metric)} | mismatched knobs | why |",
             "|---|---|---|---:|---|---|"]
    for it in bad:
        name = md_text(it["id"], 80)
        if report_href:
            name = f"[{name}]({item_href(report_href, it['id'])})"
        v = verdict(it, metric)
        cause_s = md_text(v.why or "not attributed", 160)
        lines.append(f"| {name} | {v.tier_text} | {v.gate or 'none'} | {_fmt(v.score)} | "
                     f"{md_text(', '.join(map(str, it.get('mismatches', []))) or 'none', 80)} | {cause_s} |")
    return lines + [""]


def markdown_summary(results: Results, *, report_href: str | None = "index.html", worst: int = 10,
                     summary: Summary | None = None) -> str:
    s = summary or summarize(results.items, results.run)
    run = results.run
    lines = headline_lines(s, results)
    meta = [f"run `{md_text(run.get('id', ''), 60)}`"] if run.get("id") else []
    if run.get("device"):
        meta.append(f"device {md_text(run['device'], 60)}")
    versions = run.get("versions") or {}
    if versions:
        meta.append(", ".join(f"{md_text(k, 30)} {md_text(v, 30)}" for k, v in versions.items()))
    if meta:
        lines += [" · ".join(meta), ""]
    lines += tier_table(s)
    if len(s.cases) > 1:
        names = tier_names()
        lines += ["| case | items | pass | fail | " + " | ".join(names) + f" | min {md_text(s.metric)} |",
                  "|---|---:|---:|---:|" + "---:|" * len(names) + "---:|"]
        for case, c in s.cases.items():
            lines.append(f"| {md_text(case or '–', 60)} | {c['n']} | {c['passed']} | {c['failed']} | "
                         + " | ".join(str(c["tiers"][t]) for t in names) + f" | {_fmt(c['min_score'])} |")
        lines.append("")
    bad = [it for it in s.worst if not it.get("passed")][:worst] or s.worst[:worst]
    if bad:
        lines += _worst_table(bad, s.metric, report_href)
    causes = [(k, v) for k, v in s.knobs.items() if v["mismatch"] or v["top_cause"]]
    if causes:
        lines += ["### Knobs", "", "| knob | items mismatched | top cause of |", "|---|---:|---:|"]
        for k, v in causes[:15]:
            lines.append(f"| {md_text(k, 40)} | {v['mismatch']} | {v['top_cause']} |")
        lines.append("")
    if s.irreducible:
        lines.append("Irreducible differences (a re-render cannot remove them): "
                     + ", ".join(f"{md_text(k, 40)} ({n})" for k, n in s.irreducible.items()))
        lines.append("")
    if s.noise_floor.get("measured"):
        lines.append(f"Noise floor: {s.noise_floor['measured']} {DRIFT.name} item(s) differing only irreducibly were "
                     f"judged against a measured noise floor; {s.noise_floor['lifted']} lay within it ({NEAR.name}).")
        lines.append("")
    if report_href:
        lines += [f"Full report: [{md_text(report_href)}]({quote(report_href, safe='/:%#?=&~')})", ""]
    return "\n".join(lines)
