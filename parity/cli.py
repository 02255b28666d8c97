"""`parity` command line. Each subcommand lives in `parity/commands/<name>.py` and is imported only when
used, so `parity plan` and `parity report` never import torch.

A command module provides:
    HELP: str                      one line for `parity --help`
    EXAMPLES: str                  shown at the end of `parity <cmd> --help`
    add_arguments(parser) -> None
    run(args) -> int               exit code: 0 ok, 1 some items below their gate, 2 bad input or usage
A command that runs cases (run, diff, demo) instead provides
    options(args) -> RunOptions    its flags read and checked, once (parity.options)
    run(args, options) -> int      `args` then only for what is not a run option (case paths, the job folder)
and enters the CPU numerics mode its options name before anything else runs.

Exit codes (docs/errors.md): 0 every item meets its gate, 1 some item does not, 2 bad input, usage or
environment (disk full, permissions), 3 an internal error (a bug: the message says so), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from parity.errors import ParityError

EXIT_USAGE = 2
EXIT_INTERNAL = 3

# name -> module; order is the order shown in --help (the data flow: set-up, plan, render, compare, report).
COMMANDS: dict[str, str] = {
    "demo": "parity.commands.demo",
    "init": "parity.commands.init",
    "doctor": "parity.commands.doctor",
    "plan": "parity.commands.plan",
    "diff": "parity.commands.diff",
    "run": "parity.commands.run",
    "compare": "parity.commands.compare",
    "lora-check": "parity.commands.lora_check",
    "report": "parity.commands.report",
    "accept": "parity.commands.accept",
    "make-tiny": "parity.commands.make_tiny",
}


def _load(name: str):
    return importlib.import_module(COMMANDS[name])


def _available() -> dict[str, object]:
    return {name: _load(name) for name in COMMANDS}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parity",
        description="Preview-parity regression harness for FLUX.2-dev LoRAs trained with AI Toolkit.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors and the final summary")
    parser.add_argument("-v", "--verbose", action="store_true", help="parity's debug logs and full tracebacks")
    parser.add_argument("--debug", action="store_true",
                        help="like -v, plus third-party debug logs and loading bars (PIL, diffusers, transformers)")
    parser.add_argument("--version", action="version", version=f"parity {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    mods = {only: _load(only)} if only else _available()
    for name, mod in mods.items():
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=mod.HELP,
            epilog="examples:\n" + mod.EXAMPLES.strip("\n") if getattr(mod, "EXAMPLES", "") else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("parity")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


# Third-party loggers quiet at every level but --debug (PIL logs every PNG chunk at DEBUG).
NOISY_LOGGERS = ("PIL", "diffusers", "transformers", "huggingface_hub", "optimum", "urllib3", "filelock",
                 "safetensors", "accelerate", "matplotlib", "asyncio")


def quiet_third_party(debug: bool) -> None:
    """Third-party loggers at ERROR and their loading bars off, unless `debug`. The bars of transformers and
    diffusers follow huggingface_hub's switch, read when they are imported: set it before any of them loads."""
    if debug:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _setup_logging(verbose: bool, quiet: bool, debug: bool = False) -> None:
    level = logging.DEBUG if verbose or debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="parity: %(message)s", stream=sys.stderr)
    quiet_third_party(debug)


def _run_command(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the command; one that runs cases gets its options, built once, and enters their CPU numerics mode before
    torch loads. Only the program's own command line may restart itself with the pins (never a library call of
    `main`)."""
    module = args._module
    if not hasattr(module, "options"):
        return int(module.run(args) or 0)
    from parity import cpu_numerics

    options = module.options(args)
    cpu_numerics.enter(options.cpu_numerics, device=options.session.device, may_restart=argv == sys.argv[1:])
    return int(module.run(args, options) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Build only the named subcommand's parser when one is given (fast start, no unrelated imports).
    only = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only if only in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    args.verbose = args.verbose or args.debug
    _setup_logging(args.verbose, args.quiet, args.debug)
    try:
        return _run_command(args, argv)
    except ParityError as err:
        if args.verbose:
            raise
        print(f"parity: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("parity: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `parity plan ... | head`: the reader left; nothing more to say
        try:  # point stdout at /dev/null so the interpreter's final flush does not raise again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (captured)
            pass
        return 0
    except OSError as err:  # disk full, permissions, a vanished folder: the environment, not the input's content
        if args.verbose:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"parity: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - anything else is a bug in parity or a dependency
        if args.verbose:
            raise
        print(f"parity: internal error: {type(err).__name__}: {err} (a bug: rerun with --verbose for the traceback "
              "and report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
