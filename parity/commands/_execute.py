"""Shared by `parity run` and `parity diff`: plan, render, store, report, summarise, exit code."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from parity.cases import Case, check_unique_names
from parity.errors import ParityError
from parity.options import EndpointOptions, PlanOptions, RunOptions, SessionOptions
from parity.tier import gate_names, tier_names


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--step", dest="steps", default=None, metavar="N|latest|all",
                   help="training step label(s) to check: latest (default), all, N or N,M")
    p.add_argument("--base-model", default=None, metavar="DIR",
                   help="FLUX.2-dev weights (diffusers layout or flux2-dev.safetensors + ae.safetensors)")
    p.add_argument("--text-encoder", default=None, metavar="DIR", help="Mistral text encoder + tokenizer folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--request", default=None, metavar="FILE",
                     help="inference request in the reference server's JSON format")
    src.add_argument("--profile", default=None, metavar="NAME",
                     help="inference profile: preview (default), reference-server, diffusers")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an inference setting, e.g. --set sample_steps=25 (repeatable)")
    p.add_argument("--min-tier", default=None, help=f"gate for every item ({', '.join(gate_names())})")
    p.add_argument("--no-attribution", action="store_true", help="skip one-knob-at-a-time re-renders")
    p.add_argument("--budget", type=int, default=None, help="extra renders diagnosis may spend per case (default: the case's budget:, else 90; 0: no search)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", default=None, metavar="DIR", help="report folder (default: reports/<time>)")
    p.add_argument("--json", dest="json_out", default=None, metavar="FILE", help="also write results.json here")
    p.add_argument("--shard", default=None, metavar="K/N", help="run only shard K of N (deterministic split)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--force-resume", action="store_true",
                   help="with --resume: continue even though the run settings differ from the interrupted run's "
                        "(the report then mixes both)")
    p.add_argument("--determinism-check", default="auto", choices=("auto", "always", "off"),
                   help="render an item twice and require identical bytes: auto (default) only for items below "
                        "their gate, always, or off")
    from parity.commands.report import add_report_arguments
    from parity.cpu_numerics import add_argument as add_cpu_numerics_argument

    add_cpu_numerics_argument(p)
    add_report_arguments(p)


def run_options(args: argparse.Namespace, *, lora: Path | None = None, renders: Path | None = None,
                endpoint: EndpointOptions | None = None) -> RunOptions:
    """The one place `parity run` and `parity diff` read the flags of add_run_arguments, each checked (a bad one
    is a usage error before anything loads); `lora`, `renders` and `endpoint` are `parity diff`'s own."""
    from parity.commands.report import report_options
    from parity.cpu_numerics import requested

    cpu_numerics = requested(args.cpu_numerics)   # first: the mode is entered before anything else is read
    if args.budget is not None and args.budget < 0:
        raise ParityError(f"--budget must be 0 or more, got {args.budget}")
    for flag, value in (("--out", args.out), ("--json", args.json_out)):
        if value and Path(value).exists() and Path(value).is_dir() != (flag == "--out"):
            raise ParityError(f"{flag} {'is not a folder' if flag == '--out' else 'is a folder'}", value)
    plan = PlanOptions(steps=args.steps, inference=_inference_value(args), overrides=tuple(args.overrides),
                       min_tier=_gate(args.min_tier), base_model=args.base_model, text_encoder=args.text_encoder,
                       lora=lora, renders=renders, shard=args.shard)
    plan.step_selection()  # a bad --step is a usage error now
    session = SessionOptions(device=args.device, attribution=not args.no_attribution, budget=args.budget,
                             determinism_check=args.determinism_check, resume=args.resume,
                             force_resume=args.force_resume)
    return RunOptions(plan=plan, session=session, report=report_options(args), endpoint=endpoint,
                      cpu_numerics=cpu_numerics, out=Path(args.out) if args.out else None,
                      json_out=Path(args.json_out) if args.json_out else None, quiet=args.quiet)


def _gate(text: str | None) -> str | None:
    from parity.session import gate_tier

    return gate_tier(text, "--min-tier") if text else None


def _inference_value(args: argparse.Namespace) -> Any:
    if args.request:
        return {"request": str(Path(args.request).resolve())}
    if args.profile:
        from parity.diagnose import InferenceSettings

        InferenceSettings.profile(args.profile, "--profile")  # a bad name blames the option, not a case file
        return args.profile
    return None


def execute(cases: list[Case], options: RunOptions, *, entry: str, load_errors: list[Any] = ()) -> int:
    """`load_errors`: parity.items.CaseError of case files that could not be read (one ERROR record each)."""
    from parity.commands.report import write_github
    from parity.report import write_report
    from parity.runner import case_error_record
    from parity.runner.progress import Progress
    from parity.session import Session, default_device

    from parity.report.html import report_href

    report_href(options.report.report_url)  # a bad --report-url is a usage error before any rendering
    if options.session.device:
        _check_device(options.session.device)
    check_unique_names(cases)
    endpoint = _endpoint(options.endpoint)
    planned, case_errors = _plan(cases, options.plan)
    case_errors = [*load_errors, *case_errors]
    out = options.out or Path("reports") / time.strftime("%Y%m%d-%H%M%S")
    device = options.session.device or default_device()
    folders = _index_renders(planned)
    meta = dict(entry=entry, shard=options.plan.shard, cases=[str(c.path) for c in cases], argv=_public_argv(),
                inputs=run_inputs(cases, options, device))
    renders = _renders_meta(planned, folders, endpoint)
    if renders:
        meta["renders"] = renders
    session = Session.open(out, meta, options.session, progress=(progress := Progress.for_stderr(options.quiet)).note,
                           endpoint=endpoint)
    session.runner.sources.folders.update(folders)
    done = session.store.done_ids(include_errors=False)
    for err in case_errors:
        session.store.add(case_error_record(err))
    started = time.perf_counter()
    try:
        compared = session.store.compared_records()  # a resumed run's items awaiting only their follow-ups
        todo = session.record_unrunnable(p for p in planned if p.id not in done or p.id in compared)
        progress.start(len(todo))
        session.runner.run(todo, on_record=lambda rec: (session.store.add(rec), progress.finished(rec)),
                           compared=compared, on_compared=lambda rec, pending: session.store.add(rec, pending=pending))
    finally:
        progress.close()
        session.close()
    results = session.store.finish(timings={"total_s": time.perf_counter() - started})
    paths = write_report(results, out, copy_images=not options.report.link_images,
                         report_url=options.report.report_url)
    if options.json_out:
        _write_json_copy(results, options.json_out)
    print_summary(results.items, paths)
    write_github(options.report, results, paths.dir)
    return 0 if all(it.get("passed") for it in results.items) and results.items else 1


def _endpoint(options: EndpointOptions | None) -> Any:
    """`--endpoint URL`: the reference server's client (a bad URL is a usage error, exit 2)."""
    if options is None:
        return None
    from parity.external.endpoint import EndpointClient

    return EndpointClient(options.url, timeout=options.timeout_s, wait=options.wait_s,
                          allow_insecure_token=options.allow_insecure_token)


def _renders_of(item: Any) -> Path | None:
    r = item.case.renders
    return Path(r) if r is not None else None


def _index_renders(planned: list[Any]) -> dict[Path, Any]:
    """Each external renders folder (or manifest) matched against the planned ids of the cases using it."""
    from parity.external.sources import index_folder

    locations = dict.fromkeys(loc for p in planned if (loc := _renders_of(p)) is not None)
    return {loc: index_folder(loc, [p.id for p in planned if _renders_of(p) == loc]) for loc in locations}


def _renders_meta(planned: list[Any], folders: dict[Path, Any], endpoint: Any) -> list[dict[str, Any]]:
    """The run block's `renders`: each folder's extra files and missing ids (extras also said on stderr), the
    endpoint without credentials."""
    renders = [idx.summary([p.id for p in planned if _renders_of(p) == loc]) for loc, idx in folders.items()]
    for r in renders:
        if r["extra"]:
            print(f"note: {len(r['extra'])} file(s) in {r['location']} match no item: "
                  f"{', '.join(r['extra'][:5])}{' ...' if len(r['extra']) > 5 else ''}", file=sys.stderr)
    if endpoint is not None:
        renders.append({"kind": "endpoint", "location": endpoint.public_url})
    return renders


def _public_argv() -> list[str]:
    """The command line as recorded in results: an --endpoint URL without its credentials."""
    from parity.external.endpoint import public_url

    argv, out = sys.argv[1:], []
    for n, a in enumerate(argv):
        if a.startswith("--endpoint="):
            a = "--endpoint=" + public_url(a.split("=", 1)[1])
        elif n and argv[n - 1] == "--endpoint":
            a = public_url(a)
        out.append(a)
    return out


def _write_json_copy(results: Any, path: Path) -> None:
    """`--json FILE`: the results, item paths rebased to FILE's folder (relative inside it, else absolute)."""
    from parity.jsonio import dumps
    from parity.report.store import item_on_disk

    doc = results.to_dict()
    doc["items"] = [item_on_disk(it, path.resolve().parent) for it in results.items]
    from parity import fileio

    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_text(path, dumps(doc, indent=1) + "\n")


def _check_device(name: str) -> None:
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ParityError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParityError(f"--device {name}: no CUDA device is available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ParityError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ParityError(f"--device {name}: MPS is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ParityError(f"--device {name}: parity renders on cpu, cuda or mps")


def run_inputs(cases: list[Case], options: RunOptions, device: str) -> dict[str, Any]:
    """What decides a run's results, recorded in the run block: `--resume` refuses to continue a run whose
    inputs differ (parity.report.journal.input_differences), so one report never mixes two settings."""
    plan, session = options.plan, options.session
    return {"cases": sorted(str(c.path) for c in cases), "steps": plan.steps, "base_model": plan.base_model,
            "text_encoder": plan.text_encoder, "request": plan.inference, "overrides": sorted(plan.overrides),
            "min_tier": plan.min_tier, "lora": _text(plan.lora), "shard": plan.shard, "device": device,
            "attribution": session.attribution, "budget": session.budget,
            "determinism_check": session.determinism_check, "renders": _text(plan.renders),
            "endpoint": _public(options.endpoint.url) if options.endpoint else None, **_numerics_input()}


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _numerics_input() -> dict[str, str]:
    """Portable CPU numerics as a run input (a resume must not mix modes); native is left out, as runs recorded
    before the mode existed were native."""
    from parity.cpu_numerics import active_mode

    return {} if active_mode() == "native" else {"cpu_numerics": active_mode()}


def _public(url: str) -> str:
    from parity.external.endpoint import public_url

    return public_url(url)


def _plan(cases: list[Case], options: PlanOptions) -> tuple[list[Any], list[Any]]:
    """The cases under the run's options (new values: the loaded cases stay as read), planned and sharded."""
    from parity.ids import parse_shard, shard_of
    from parity.run import plan_cases

    cases = [options.applied_to(c) for c in cases]
    planned, case_errors = plan_cases(
        cases, steps=options.step_selection(), inference=options.inference, overrides=list(options.overrides),
        lora=options.lora, base_model=options.base_model,
    )
    if len(cases) == 1 and case_errors and not planned:
        raise case_errors[0].error or ParityError(case_errors[0].message)  # a single bad input: exit 2
    if options.shard:
        k, n = parse_shard(options.shard)
        planned = [p for p in planned if shard_of(p.id, n) == k]
    return planned, case_errors


def print_summary(items: list[dict[str, Any]], paths: Any) -> None:
    """The table of items with tier and causes, then the counts and the report path (control codes escaped)."""
    from parity.commands.plan import printable
    from parity.report.summary import verdict

    rows = sorted(items, key=lambda it: (it.get("case") or "", it.get("step") or 0, it.get("index") or 0))
    width = max([len(printable(it["id"])) for it in rows] + [4])
    print(f"{'item':<{width}}  {'tier':<9} {'ssim':>7}  {'gate':<8} cause / mismatches")
    for it in rows:
        ssim = (it.get("metrics") or {}).get("ssim")
        ssim_s = f"{ssim:7.4f}" if isinstance(ssim, (int, float)) else "      -"
        v = verdict(it)
        print(f"{printable(it['id']):<{width}}  {v.tier:<9} {ssim_s}  {v.mark:<8} {printable(v.why or '')}")
    counts = {t: sum(1 for it in items if it.get("tier") == t) for t in tier_names()}
    print(" ".join(f"{t}={n}" for t, n in counts.items() if n) or "no items")
    print(f"report: {paths.index}")
