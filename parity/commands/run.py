"""`parity run [CASE ...]`: run case files (default: every case under cases/)."""

from __future__ import annotations

import argparse

from parity.commands._execute import add_run_arguments, execute, run_options
from parity.errors import ParityError
from parity.options import RunOptions

HELP = "run case files: render every item, compare with its preview, diagnose, write the report"
EXAMPLES = """
  parity run                                # every case under cases/
  parity run cases/portrait-v1.yaml --step all
  parity run --shard 1/4 --out reports/shard1 # one of four CI matrix jobs; join with `parity report merge`
  parity run --resume --out reports/night     # finish an interrupted run without redoing finished items
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cases", nargs="*", default=["cases"], help="case files or folders (default: cases/)")
    add_run_arguments(p)


def options(args: argparse.Namespace) -> RunOptions:
    return run_options(args)


def run(args: argparse.Namespace, options: RunOptions) -> int:
    import sys

    from parity.cases import find_cases, load_case
    from parity.items import CaseError

    cases = []
    errors = []
    for path in find_cases(args.cases):
        try:
            cases.append(load_case(path))
        except Exception as e:  # noqa: BLE001 - a bad case file is reported, the others still run
            errors.append(CaseError(path.stem, path.resolve(), str(e), e if isinstance(e, ParityError) else None))
    for e in errors:
        print(f"parity: error: {e.message}", file=sys.stderr)
    if not cases:
        if errors:
            return 2
        from parity.errors import ConfigError

        raise ConfigError("no case files found", ", ".join(args.cases))
    code = execute(cases, options, entry="run", load_errors=errors)  # each also an ERROR in results and JUnit
    return max(code, 1) if errors else code
