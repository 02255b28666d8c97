"""`parity demo`: the whole value in one command on any machine (what `make demo` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from parity.options import RunOptions, SessionOptions

HELP = "build tiny FLUX.2 and [klein] models + AI Toolkit jobs, run passing cases and a drifting one, write the report"
EXAMPLES = """
  parity demo                   # build demo/ (once), run cases/demo-*.yaml, print the report path
  parity demo --prepare         # only build demo/ (used by `make test`)
  parity demo --rebuild         # rebuild demo/ from scratch
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="demo", help="where the demo model and job are built (default: demo/)")
    p.add_argument("--cases", default="cases", help="folder with demo-*.yaml case files (default: cases/)")
    p.add_argument("--out", default=None, help="report folder (default: reports/demo)")
    p.add_argument("--prepare", action="store_true", help="only build the demo data")
    p.add_argument("--rebuild", action="store_true", help="rebuild the demo data from scratch")
    from parity.cpu_numerics import add_argument as add_cpu_numerics_argument

    add_cpu_numerics_argument(p)


def options(args: argparse.Namespace) -> RunOptions:
    """The demo renders on the CPU into reports/demo (or --out), every other option at its default."""
    from parity.cpu_numerics import requested

    return RunOptions(session=SessionOptions(device="cpu"), cpu_numerics=requested(args.cpu_numerics),
                      out=Path(args.out or "reports/demo"), quiet=args.quiet)


def run(args: argparse.Namespace, options: RunOptions) -> int:
    from parity.cases import load_case
    from parity.commands._execute import execute
    from parity.demo import build_demo
    from parity.errors import ConfigError

    # the case files first: building the demo data takes minutes, and without cases there is nothing to run
    case_files = sorted(Path(args.cases).glob("demo-*.yaml"))
    if not case_files and not args.prepare:
        raise ConfigError("no demo-*.yaml case files here (run from the parity repository root)", args.cases)
    paths = build_demo(args.dir, force=args.rebuild)
    print(f"demo model: {paths.base_model}\ndemo job:   {paths.job}")
    if args.prepare:
        return 0
    cases = [load_case(f) for f in case_files]
    import shutil

    shutil.rmtree(options.out, ignore_errors=True)  # the demo report is rebuilt each time
    code = execute(cases, options, entry="demo")
    # demo-reference-server lists its differences under expect.mismatches: it passes as "expected" while the
    # report shows the drift, so any exit code 1 here is a real failure and is returned as such.
    print("demo: demo-parity and demo-klein pass; demo-reference-server drifts as expected and names its causes"
          if code == 0 else "demo: some demo items failed their gate (see the report)")
    return code
