"""Results store and reports (HTML, JUnit, markdown). Imports no torch: `parity report` runs without it.

Public API:
    ResultsStore(run_dir).start(run_meta) / .add(item) / .finish() / .done_ids()
    load(path) -> Results            merge([Results, ...]) -> Results
    write_report(results, out_dir) -> ReportPaths
    junit_xml(results) -> str        markdown_summary(results) -> str
    synthetic_results(n, out_dir) -> Path   (fake runs for tests and benchmarks)
"""

from parity.report.html import ReportPaths, write_report
from parity.report.junit import junit_xml
from parity.report.markdown import markdown_summary
from parity.report.store import SCHEMA, Results, ResultsStore, load, merge, normalize_item
from parity.report.summary import item_score, summarize
from parity.report.synthetic import synthetic_results

__all__ = ["SCHEMA", "ReportPaths", "Results", "ResultsStore", "item_score", "junit_xml", "load",
           "markdown_summary", "merge", "normalize_item", "summarize", "synthetic_results", "write_report"]
