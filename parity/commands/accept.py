"""`parity accept RESULTS`: write the failing items' differences into their cases' `expect:` blocks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "accept a run's failing items as known differences: widen their cases' expect: (shows the YAML diff first)"
EXAMPLES = """
  parity accept reports/run1                          # every failing item (DIFFERENT ones refused)
  parity accept reports/run1 --case portrait-v1 --dry-run   # show what would change, write nothing
  parity accept reports/run1 --allow-different        # also accept items whose render is a different picture
  parity accept parity-report/results.json            # a CI run's report: its case files found in cases/ by hash
exit codes: 0 every failing item accepted (or none failed), 1 some refused (ERROR, DIFFERENT without
--allow-different; the others are still written), 2 bad input: a case file gone or changed since the run
(nothing is written), an unknown --case, unreadable results
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", metavar="RESULTS", help="results.json, results.jsonl or a run directory")
    p.add_argument("--case", default=None, metavar="NAME", help="accept only this case's items")
    p.add_argument("--dry-run", action="store_true", help="show the diff and what would widen; write nothing")
    p.add_argument("--cases", dest="search", action="append", type=Path, default=None, metavar="DIR",
                   help="where to look for a case file the results name by another machine's path (results from "
                        "a CI runner), matched by its SHA-256 (default: cases/)")
    p.add_argument("--allow-different", action="store_true",
                   help="also accept DIFFERENT items (a render that is another picture, not a drift)")


def run(args: argparse.Namespace) -> int:
    from parity.accept import failing_by_case, locate_case, plan_case
    from parity.report import load

    results = load(args.results)
    groups = failing_by_case(results.items, args.case)
    if not groups:
        print("nothing to accept: every item" + (f" of case {args.case}" if args.case else "") + " meets its gate")
        return 0
    search = args.search if args.search is not None else [Path("cases")]
    located = {name: locate_case(name, items, search) for name, items in groups.items()}
    stale = [why for _, why in located.values() if why]
    if stale:  # results that judged another version of a case must not be written into it: nothing is
        for line in stale:
            print(f"parity: error: {Path(args.results)}: {line}")
        return 2
    edits = [plan_case(name, located[name][0], items, results.items, args.allow_different)
             for name, items in groups.items()]
    for edit in edits:
        _show(edit)
    if not args.dry_run:
        for edit in edits:
            if edit.changed:
                _write_keeping_mode(edit.path, edit.new_text)
                print(f"wrote {edit.path}")
    elif any(e.changed for e in edits):
        print("dry run: nothing written")
    return 1 if any(e.refused for e in edits) else 0


def _show(edit) -> None:
    """The diff first, then every widening, then every refusal."""
    if edit.changed:
        print(edit.diff(), end="")
    for line in edit.widened:
        print(f"{edit.case}: widens {line}")
    for item_id, why in edit.refused:
        print(f"{edit.case}: refused {item_id}: {why}")


def _write_keeping_mode(path: Path, text: str) -> None:
    """Atomic replacement (a reader sees the old or the new case), the file's permission bits kept."""
    from parity.report.jsonfile import write_text_atomic

    mode = path.stat().st_mode & 0o777
    write_text_atomic(path, text)
    if path.stat().st_mode & 0o777 != mode:
        os.chmod(path, mode)
