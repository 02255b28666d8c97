"""`parity doctor [CASES or JOB]`: is this runner ready? Device, versions, determinism, the base model, text
encoder and LoRA files (safetensors headers only: every tensor name and shape the configuration needs), disk
space, and per case a resource plan: bytes per component, the engine's offload plan, peak memory, time."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

HELP = "check the runner and the inputs without rendering; plan memory, offload and time per case (exit 0/1/2)"
EXAMPLES = """
  parity doctor                                   # every case under cases/, on this machine's device
  parity doctor output/my_lora                    # one AI Toolkit job (base model: case, $PARITY_BASE_MODEL, job)
  parity doctor cases/ --gpu-memory 24            # plan for a 24 GB card instead of this machine's
  parity doctor cases/ --card h100 --json         # a named card (rtx4090 l4 a100-40gb l40s a100-80gb h100 h200)
exit codes: 0 ready, 1 a case will not fit or an input is incomplete, 2 bad input or usage
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="*", default=["cases"], help="case files or folders, or an AI Toolkit job folder")
    p.add_argument("--base-model", default=None, help="base model folder (overrides the cases)")
    p.add_argument("--text-encoder", default=None, help="text encoder folder (overrides the cases)")
    p.add_argument("--device", default=None, help="torch device to plan for (default: cuda if available, else cpu)")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GB", help="plan for a GPU of this size")
    p.add_argument("--card", default=None, metavar="NAME", help="plan for a named card (see examples)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _is_job(path: Path) -> bool:
    """An AI Toolkit job folder (config.yaml / .job_config.json inside) or a UI job JSON; .yaml files are cases."""
    if path.is_dir():
        return any((path / n).is_file() for n in ("config.yaml", ".job_config.json"))
    return path.is_file() and path.suffix == ".json"


def load_targets(targets: list[str], text_encoder: str | None):
    from parity.cases import Case, check_unique_names, find_cases, load_case
    from parity.errors import ConfigError

    cases = []
    for t in targets:
        path = Path(t).resolve()
        if _is_job(path):
            job = path if path.is_dir() else None
            cases.append(Case(name=path.name if job else path.parent.name,
                              path=(job or path.parent) / "parity-diff.yaml", job=job, config=None if job else path))
        elif path.exists():
            cases += [load_case(c) for c in find_cases([t])]
        else:
            raise ConfigError("no such case file, folder or job", t)
    if not cases:
        raise ConfigError("no case files found", ", ".join(targets))
    check_unique_names(cases)
    if text_encoder:  # new cases: a loaded Case is never changed
        cases = [replace(c, text_encoder=text_encoder) for c in cases]
    return cases


def run(args: argparse.Namespace) -> int:
    from parity.session import default_device
    from parity.doctor import examine
    from parity.doctor.environment import resolve_device
    from parity.doctor.text import render_text

    cases = load_targets(args.targets, args.text_encoder)
    device = resolve_device(args.device or default_device(), args.gpu_memory, args.card)
    report = examine(cases, device, base_model=args.base_model)
    print(json.dumps(report.to_dict(), indent=1) if args.json else render_text(report))
    return 0 if report.ready else 1
