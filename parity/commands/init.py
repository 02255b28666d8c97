"""`parity init JOB_DIR`: write a starter case file for an AI Toolkit job folder."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

HELP = "write a starter case file (cases/<name>.yaml) for an AI Toolkit job folder"
EXAMPLES = """
  parity init output/my_lora                     # on a terminal: writes cases/my_lora.yaml
  parity init output/my_lora > cases/my_lora.yaml  # stdout redirected: the YAML goes there, nothing else
  parity init output/my_lora --out -             # print it instead
  parity init output/my_lora --base-model /models/FLUX.2-dev
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="AI Toolkit job output folder")
    p.add_argument("--out", default=None,
                   help="case file to write (default: stdout when it is redirected to a file or pipe, else cases/<name>.yaml; - for "
                        "stdout)")
    p.add_argument("--base-model", default=None, metavar="DIR", help="base model folder to record in the case")
    p.add_argument("--force", action="store_true", help="overwrite an existing case file")


def starter_case(job_dir: Path, case_path: Path, base_model: str | None) -> str:
    from parity.job import load_job

    job = load_job(job_dir)
    steps = job.steps()
    rel = os.path.relpath(job_dir.resolve(), case_path.parent.resolve())
    lines = [
        f"# parity case for the AI Toolkit job {_comment(job.name)} (written by `parity init`)",
        yaml_entry("name", job.name),
        yaml_entry("job", rel),
        f"# step labels with previews: {', '.join(map(str, steps)) or 'none'}",
        "steps: latest            # latest | all | a step | a list of steps",
    ]
    if base_model:
        lines.append(yaml_entry("base_model", base_model))
    else:
        lines.append("# base_model: /models/FLUX.2-dev   # else $PARITY_BASE_MODEL, else "
                     + _comment(job.facts.name_or_path))
    lines += [
        "inference: preview       # preview | reference-server | diffusers | {request: file.json, set: {...}}",
        "expect:",
        "  min_tier: NEAR         # EXACT | NEAR | DRIFT | DIFFERENT",
        "attribution: true        # re-render one knob at a time for items below the gate",
    ]
    return "\n".join(lines) + "\n"


def yaml_entry(key: str, value: str) -> str:
    """`key: value` as the YAML library writes it: a value with `#`, `: `, a quote or a newline is quoted, so it
    reads back as the same string (issue 35: `jobs/run #2` lost its tail to a comment)."""
    import yaml

    return yaml.safe_dump({key: value}, allow_unicode=True, width=2**31, default_flow_style=False).rstrip("\n")


def _comment(text: object) -> str:
    """Text for a YAML comment: one line (a newline would end the comment and start a key)."""
    return " ".join(str(text).split()) or "''"


def run(args: argparse.Namespace) -> int:
    from parity.errors import ConfigError

    job_dir = Path(args.job)
    if not job_dir.is_dir():
        raise ConfigError("not a job folder", args.job)
    if args.out == "-" or (args.out is None and _stdout_redirected()):
        # Paths in the case are relative to the file it lands in: the redirect target when stdout is a file.
        sys.stdout.write(starter_case(job_dir, _stdout_file() or Path.cwd() / "cases" / "x.yaml", args.base_model))
        return 0
    from parity.job import load_job

    name = load_job(job_dir).name
    out = Path(args.out) if args.out else Path("cases") / f"{name}.yaml"
    if out.exists() and not args.force:
        raise ConfigError("case file exists; pass --force to overwrite", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from parity import fileio

    fileio.write_text(out, starter_case(job_dir, out, args.base_model))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _stdout_redirected() -> bool:
    """stdout is a file or a pipe (`> cases/x.yaml`, `| tee`), not a terminal or an in-process capture."""
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError, AttributeError):  # no real file descriptor (io.UnsupportedOperation is both)
        return False
    return not sys.stdout.isatty() and (stat.S_ISREG(mode) or stat.S_ISFIFO(mode))


def _stdout_file() -> Path | None:
    """The regular file stdout is redirected to (`> cases/x.yaml`), when the platform can tell."""
    try:
        target = Path(os.readlink(f"/proc/self/fd/{sys.stdout.fileno()}"))
    except (OSError, ValueError, AttributeError):
        return None
    return target if target.is_file() else None
