"""What a CI job hands GitHub (`--github`): a PR-comment body, the same text for the job's step summary, and a
commit status. parity makes no network call: it writes files the workflow posts with its own tools
(examples/github/, docs/ci.md).

    pr-comment.md        markdown opening with COMMENT_MARKER, so a workflow finds its earlier comment and
                         edits it instead of adding another: the verdict, items per tier, the failing items
                         with their top cause (linked into the hosted report), expected differences folded away
    commit-status.json   {"state", "description", "target_url", "context"}: the body of GitHub's
                         "create a commit status" call as it is

The step summary ($GITHUB_STEP_SUMMARY, when set) gets the comment body appended."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from parity.report.html import report_href, safe_out_dir, safe_target
from parity import fileio
from parity.report.markdown import headline_lines, item_href, md_text, tier_table
from parity.report.store import Results
from parity.report.summary import Summary, summarize, verdict
from parity.tier import ERROR

COMMENT_MARKER = "<!-- parity-report -->"
COMMENT_NAME = "pr-comment.md"
STATUS_NAME = "commit-status.json"
STATUS_CONTEXT = "parity"
STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
MAX_ROWS = 30                 # rows per table: the comment stays a ten-second read (and far below GitHub's limit)
MAX_DESCRIPTION = 140         # GitHub's limit for a commit status description


@dataclass
class GithubPaths:
    comment: Path
    status: Path
    step_summary: Path | None  # the file appended to, when $GITHUB_STEP_SUMMARY was set


def _hosted_href(report_url: str | None) -> str | None:
    """Links only to a hosted report: a relative index.html means nothing inside a PR comment."""
    return report_href(report_url) if report_url else None


def _why(it: dict[str, Any]) -> str:
    v = verdict(it)
    return f"{v.gate or 'none'} | {md_text(v.why or 'not attributed', 160)}"


def _why_expected(it: dict[str, Any]) -> str:
    return md_text(it.get("expected") or "", 160)


def _item_rows(items: list[dict[str, Any]], href: str | None, header: str,
               cells: Callable[[dict[str, Any]], str]) -> list[str]:
    """A table of items (at most MAX_ROWS; the rest counted): id (linked), tier, then `cells(item)`."""
    rows = [f"| item | tier | {header} |", "|---|---|" + "---|" * (header.count("|") + 1)]
    for it in items[:MAX_ROWS]:
        name = md_text(it["id"], 80)
        if href:
            name = f"[{name}]({item_href(href, it['id'])})"
        rows.append(f"| {name} | {it['tier']} | {cells(it)} |")
    if len(items) > MAX_ROWS:
        rows.append(f"| … and {len(items) - MAX_ROWS} more in the full report |" + " |" * (header.count("|") + 2))
    return rows + [""]


def comment_body(results: Results, *, report_url: str | None = None, summary: Summary | None = None) -> str:
    """The PR comment: marker, verdict, items per tier, failing items, expected differences in <details>."""
    s = summary or summarize(results.items, results.run)
    href = _hosted_href(report_url)
    failing = [it for it in s.worst if not it.get("passed")]
    expected = [it for it in s.worst if it.get("passed") and it.get("expected")]
    lines = [COMMENT_MARKER, *headline_lines(s, results), *tier_table(s)]
    lines += [f"**{len(failing)} failing** · {len(expected)} expected difference(s) · "
              f"{s.passed - len(expected)} ok", ""]
    if failing:
        lines += ["### Failing items", "", *_item_rows(failing, href, "gate | why", _why)]
    if expected:
        lines += ["<details>", f"<summary>{len(expected)} expected difference(s): below the gate only through "
                  "differences their case lists (expect.mismatches / expect.tier), so they pass</summary>", "",
                  *_item_rows(expected, href, "why it passes", _why_expected), "</details>", ""]
    if href:
        lines += [f"[Full report]({href})", ""]
    else:
        lines += ["The full report is in the run's artifacts (give `--report-url` to link it here).", ""]
    return "\n".join(lines)


def commit_status(results: Results, *, report_url: str | None = None, summary: Summary | None = None
                  ) -> dict[str, Any]:
    """The commit status: `error` when parity could not judge (the run is incomplete or has no item),
    `failure` when an item is below its gate, else `success`; the description says how many, in 140 characters."""
    s = summary or summarize(results.items, results.run)
    errors = s.tiers.get(ERROR.name, 0)
    expected = sum(1 for it in results.items if it.get("passed") and it.get("expected"))
    if not results.complete or not s.total:
        state = "error"
        desc = f"incomplete run: {s.total} item(s) recorded" if s.total else "no items were run"
    else:
        state = "failure" if s.failed else "success"
        desc = f"{s.passed}/{s.total} items meet their gate"
        desc += f", {s.failed} failing" + (f" ({errors} {ERROR.name})" if errors else "") if s.failed else ""
        desc += f", {expected} expected difference(s)" if expected else ""
    if len(desc) > MAX_DESCRIPTION:
        desc = desc[: MAX_DESCRIPTION - 1] + "…"
    status: dict[str, Any] = {"state": state, "description": desc, "context": STATUS_CONTEXT}
    href = _hosted_href(report_url)
    if href:
        status["target_url"] = href
    return status


def write_github_outputs(results: Results, out_dir: str | Path, *, report_url: str | None = None) -> GithubPaths:
    """pr-comment.md and commit-status.json into `out_dir` (atomically); the comment appended to the step summary
    when $GITHUB_STEP_SUMMARY is set."""
    out = safe_out_dir(out_dir)
    s = summarize(results.items, results.run)
    body = comment_body(results, report_url=report_url, summary=s)
    paths = GithubPaths(comment=safe_target(out, COMMENT_NAME), status=safe_target(out, STATUS_NAME),
                        step_summary=None)
    fileio.write_text(paths.comment, body)
    fileio.write_text(paths.status, json.dumps(commit_status(results, report_url=report_url, summary=s),
                                               indent=1, ensure_ascii=False) + "\n")
    step_summary = os.environ.get(STEP_SUMMARY_ENV)
    if step_summary:  # GitHub's own file for this step: appended to, as every step does
        fileio.append_text(Path(step_summary), body + "\n")
        paths.step_summary = Path(step_summary)
    return paths
