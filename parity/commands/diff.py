"""`parity diff JOB_DIR`: a new LoRA against its own training previews, no case file needed."""

from __future__ import annotations

import argparse
from pathlib import Path

from parity.commands._execute import add_run_arguments, execute, run_options
from parity.errors import ParityError
from parity.external.endpoint import TOKEN_ENV as _TOKEN_ENV  # no HTTP library imported: --help stays light
from parity.options import EndpointOptions, RunOptions

HELP = "diff a LoRA against its AI Toolkit training previews (table, report, exit 0/1/2)"
EXAMPLES = """
  parity diff output/my_lora                               # latest step, the previews' own settings
  parity diff output/my_lora --step all --base-model /models/FLUX.2-dev
  parity diff output/my_lora --profile reference-server    # as the reference inference server renders it
  parity diff output/my_lora --request request.json        # a request in that server's JSON format
  parity diff output/my_lora --set sample_steps=25 --set guidance_scale=4
  parity diff output/my_lora --lora other_run.safetensors  # another LoRA file against these previews
  parity diff output/my_lora --renders my-comfy-renders/   # your stack's images (named by item id) vs the previews
  parity diff output/my_lora --endpoint http://gpu-box:8000  # a running reference inference server renders them
exit codes: 0 every item meets the gate, 1 some do not, 2 bad input or usage
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="AI Toolkit job output folder (config.yaml, samples/, checkpoints) or its config")
    p.add_argument("--lora", default=None, metavar="FILE", help="LoRA file to test instead of the job's checkpoint")
    ext = p.add_mutually_exclusive_group()
    ext.add_argument("--renders", default=None, metavar="DIR|MANIFEST",
                     help="compare these images with the previews instead of parity's renders: a folder of "
                          "<item id>.png|jpg|webp (parity plan --export-requests) or a JSON manifest {id: file}")
    ext.add_argument("--endpoint", default=None, metavar="URL",
                     help="have a running reference inference server render the previews' settings, then compare "
                          f"(bearer token from ${_TOKEN_ENV}; docs/your-own-stack.md)")
    p.add_argument("--endpoint-timeout", type=float, default=30.0, metavar="S",
                   help="seconds one HTTP exchange with --endpoint may take in all (default 30; retried 3 times)")
    p.add_argument("--endpoint-wait", type=float, default=1800.0, metavar="S",
                   help="seconds the whole exchange with --endpoint may take, retries included (default 1800)")
    p.add_argument("--endpoint-allow-insecure-token", action="store_true",
                   help=f"send ${_TOKEN_ENV} or the URL's user:password over plain http to a host other than "
                        "this machine (refused by default: anyone on the network could read it)")
    add_run_arguments(p)


def options(args: argparse.Namespace) -> RunOptions:
    """The run's options: the shared flags, this command's --lora, --renders and --endpoint*."""
    return run_options(args, lora=Path(args.lora).resolve() if args.lora else None,
                       renders=Path(args.renders).resolve() if args.renders else None,
                       endpoint=_endpoint_options(args))


def _endpoint_options(args: argparse.Namespace) -> EndpointOptions | None:
    """--endpoint and its limits (a limit of 0 or less is a usage error, exit 2)."""
    if not args.endpoint:
        return None
    for flag, v in (("--endpoint-timeout", args.endpoint_timeout), ("--endpoint-wait", args.endpoint_wait)):
        if not v > 0:
            raise ParityError(f"{flag} must be more than 0 seconds, got {v:g}")
    return EndpointOptions(args.endpoint, timeout_s=args.endpoint_timeout, wait_s=args.endpoint_wait,
                           allow_insecure_token=args.endpoint_allow_insecure_token)


def run(args: argparse.Namespace, options: RunOptions) -> int:
    from parity.cases import Case
    from parity.errors import ConfigError
    from parity.ids import job_case_name

    job = Path(args.job).resolve()
    if not job.exists():
        raise ConfigError("no such job folder or config file", args.job)
    if options.plan.lora is not None:
        check_lora_file(Path(args.lora))
    if options.plan.renders is not None and not options.plan.renders.exists():
        raise ConfigError("--renders: no such folder or manifest file", args.renders)
    name = job_case_name(job)
    case = Case(name=name, path=(job / "parity-diff.yaml") if job.is_dir() else job,
                job=job if job.is_dir() else None, config=None if job.is_dir() else job)
    return execute([case], options, entry="diff")


def check_lora_file(path: Path) -> None:
    """--lora is checked before any model loads, so a wrong file is a usage error (exit 2), not one ERROR per
    item: a regular, readable safetensors file (header only; never a pickle, whose loading can run code)."""
    from parity.doctor.headers import read_header
    from parity.engine.weights import refuse_pickle
    from parity.errors import ConfigError

    if not path.exists():
        raise ConfigError("no such LoRA file", path)
    if not path.is_file():
        raise ConfigError("the LoRA is not a regular file", path)
    refuse_pickle(path)
    read_header(path)  # unreadable, truncated or not safetensors: InputFileError naming the file
