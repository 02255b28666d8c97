"""JUnit XML: one testsuite per case, one testcase per item (classname = case, name = item id); a <failure> for
an item below its gate, an <error> for an ERROR item; metrics, tier, gate and causes as <properties>.
Built with ElementTree (which escapes markup); XML 1.0 forbids most control characters, so user text is
cleaned of them first."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from parity.report.markdown import item_href
from parity.report.store import Results, dumps
from parity.report.summary import Verdict, score_metric, verdict
from parity.tier import ERROR
from parity.values import cause_text

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def xml_text(value: Any) -> str:
    """`value` as text that XML 1.0 can hold (forbidden characters replaced by U+FFFD)."""
    s = value if isinstance(value, str) else dumps(value) if isinstance(value, (dict, list)) else str(value)
    return _XML_BAD.sub("\ufffd", s)


def _seconds(item: dict[str, Any]) -> float:
    t = item.get("timings") or {}
    for key in ("total", "total_s", "seconds"):
        v = t.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    vals = [v for v in t.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return float(sum(vals)) if vals else 0.0


def _failure_lines(it: dict[str, Any], v: Verdict, metric: str) -> list[str]:
    """The failure's text: the verdict line, then the score, the mismatching knobs and the prompt."""
    lines = [v.line] + ([f"{metric} {v.score:.4f}"] if v.score is not None else [])
    if it.get("mismatches"):
        lines.append("mismatched: " + ", ".join(map(str, it["mismatches"])))
    return lines + (["prompt: " + it["prompt"]] if it.get("prompt") else [])


def _testcase(suite: ET.Element, case: str, it: dict[str, Any], metric: str,
              report_href: str | None) -> tuple[float, str | None]:
    """One <testcase> with its properties and <error>/<failure>. Returns (seconds, "errors" | "failures" | None)."""
    tc = ET.SubElement(suite, "testcase", classname=xml_text(case or "parity"), name=xml_text(it["id"]))
    secs = _seconds(it)
    tc.set("time", f"{secs:.3f}")
    _properties(ET.SubElement(tc, "properties"), it, report_href)
    if it["tier"] == ERROR.name:
        err = ET.SubElement(tc, "error", message=xml_text(str(it.get("error") or ERROR.name).splitlines()[0]),
                            type="ParityError")
        err.text = xml_text(it.get("error") or "")
        return secs, "errors"
    if not it.get("passed"):
        v = verdict(it, metric)
        fail = ET.SubElement(tc, "failure", message=xml_text(v.line), type="ParityMismatch")
        fail.text = xml_text("\n".join(_failure_lines(it, v, metric)))
        return secs, "failures"
    return secs, None


def _properties(props: ET.Element, it: dict[str, Any], report_href: str | None) -> None:
    def prop(name: str, value: Any) -> None:
        ET.SubElement(props, "property", name=xml_text(name), value=xml_text(value))

    prop("tier", it["tier"])
    if it.get("gate"):
        prop("gate", it["gate"])
    for key in ("step", "index"):
        if it.get(key) is not None:
            prop(key, it[key])
    if it.get("expected"):
        prop("expected", it["expected"])
    for k, v in it.get("metrics", {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):  # an unset metric is left out, not "None"
            prop(f"metric.{k}", v)
    if it.get("mismatches"):
        prop("mismatches", ",".join(map(str, it["mismatches"])))
    if it.get("irreducible"):
        prop("irreducible", ",".join(map(str, it["irreducible"])))
    nf = it.get("noise_floor")
    if isinstance(nf, dict) and nf.get("metrics"):
        prop("noise_floor", f"{'within' if nf.get('applied') else 'above'}: {nf.get('reason') or ''}")
    if it.get("reason"):
        prop("tier_reason", it["reason"])
    for n, c in enumerate(it.get("causes", []), 1):
        prop(f"cause.{n}", cause_text(str(c.get("knob")), c.get("value_preview"), c.get("value_inference"),
                                      c.get("ssim_aligned")))
    if report_href:
        prop("report", item_href(report_href, it["id"]))


def junit_xml(results: Results, *, report_href: str | None = "index.html") -> str:
    metric = score_metric(results.run)
    root = ET.Element("testsuites", name=xml_text(f"parity {results.run.get('id', '')}".strip()))
    by_case: dict[str, list[dict[str, Any]]] = {}
    for it in results.items:
        by_case.setdefault(it.get("case") or "", []).append(it)
    totals = {"tests": 0, "failures": 0, "errors": 0, "time": 0.0}
    for case, items in sorted(by_case.items()):
        suite = ET.SubElement(root, "testsuite", name=xml_text(case or "parity"))
        counts = {"tests": len(items), "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
        for it in items:
            secs, outcome = _testcase(suite, case, it, metric, report_href)
            counts["time"] += secs
            if outcome:
                counts[outcome] += 1
        for k, v in counts.items():
            suite.set(k, f"{v:.3f}" if k == "time" else str(v))
            if k in totals:
                totals[k] += v
    for k, v in totals.items():
        root.set(k, f"{v:.3f}" if k == "time" else str(v))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
