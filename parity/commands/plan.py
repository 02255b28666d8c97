"""`parity plan JOB_DIR`: the previews AI Toolkit rendered and the exact settings that reproduce each one,
with where every value came from. Loads no model (no torch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from parity import knobs
from parity.family import family

HELP = "list the previews of an AI Toolkit job and the exact settings that reproduce each one"
EXAMPLES = """
  parity plan output/my_lora                 # latest step label
  parity plan output/my_lora --step all
  parity plan output/my_lora --step 500 --json
  parity plan output/my_lora --export-requests to-render/   # one JSON per item + reference-server requests
"""

_ABBREV = {"default": "D", "block": "B", "item": "I", "flag": "F", "walk": "W", "carry": "C", "floor": "L",
           "job": "J"}


def add_arguments(parser) -> None:
    parser.add_argument("job", metavar="JOB_DIR", help="job output folder ({training_folder}/{name}) or config file")
    parser.add_argument("--step", default="latest", help="step label N, 'latest' (default) or 'all'")
    parser.add_argument("--json", action="store_true", help="print a JSON list of items")
    parser.add_argument("--export-requests", default=None, metavar="DIR",
                        help="write one render request per item (<id>.json) and one reference-server request file "
                             "per step (request-step<N>.json) into DIR (docs/your-own-stack.md)")


def item_record(item, case_name: str) -> dict:
    from parity.ids import item_id

    spec = item.resolved.spec
    s = item.sample
    record = {
        "id": item_id(case_name, item.step, item.index),   # == results.json's item id under `parity diff JOB`
        "step": item.step,
        "index": item.index,
        "group": item.group,
        "prompt": spec.prompt,
        "raw_prompt": item.raw_prompt,
        "width": spec.width,
        "height": spec.height,
        "requested_width": item.requested_width,
        "requested_height": item.requested_height,
        "seed": spec.seed,
        "seed_reproducible": s.seed_reproducible,
        "sample_steps": spec.sample_steps,
        "guidance_scale": spec.guidance_scale,
        "network_multiplier": spec.network_multiplier,
        "lora_application": spec.lora_application,
        "dtype": spec.dtype,
        "quantize": spec.quantize,
        "quantize_te": spec.quantize_te,
        "arch": spec.arch,
        "control_images": list(spec.control_images),
        "negative_prompt": spec.negative_prompt if family(spec.arch).true_cfg else None,
        "checkpoint": None if item.checkpoint is None else str(item.checkpoint),
        "baseline": item.baseline,
        "preview": None if item.preview is None else str(item.preview),
        "preview_format": None if item.preview_format is None else item.preview_format.to_dict(),
        "superseded": [str(p) for p in item.superseded],
        "missing": list(item.missing),
        "notes": list(item.notes),
        "sources": {k.key: item.resolved.source(k.key) for k in knobs.SETTINGS.values() if k.plan_source},
    }
    # registry-only settings (parity.knobs) have no field of their own above: their value under their key
    record.update({k.key: spec.value(k.key, k.default) for k in knobs.extra_settings()})
    return record


def _export(out: Path, items: list, records: list[dict]) -> None:
    """--export-requests: the files, then one line on stderr saying where (stdout stays the plan)."""
    from parity.external.export import export_requests, render_request

    notes = export_requests(out, [render_request(r["id"], it) for it, r in zip(items, records)])
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    print(f"wrote {len(records)} render request(s) to {out}", file=sys.stderr)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "-" if v is None else str(v)


def _cell(r: dict, key: str, col: knobs.PlanColumn) -> str:
    """One setting's cell: its value (shortened, or "random" for a seed AI Toolkit drew) and its source letter."""
    text = "random" if col.random_unless and not r[col.random_unless] else _fmt(r[key])
    if col.max_chars is not None and len(text) > col.max_chars:
        text = text[:col.max_chars - 3] + "..."
    if not col.sourced:
        return text
    source = r["sources"].get(key, "default")
    return f"{text} [{_ABBREV.get(source, source[:1].upper())}]"


def _table(job, records: list[dict]) -> str:
    f = job.facts
    lines = [
        f"job {job.name}  config {job.config_path}",
        f"model {f.name_or_path} ({f.arch})  dtype {f.dtype}  quantize {f.qtype if f.quantize else 'no'}  "
        f"quantize_te {f.qtype_te or 'no'}  network {f.network_type}  train.steps {f.steps}  "
        f"trigger {f.trigger_word!r}",
    ]
    columns = [(k.key, k.plan) for k in knobs.SETTINGS.values() if k.plan is not None]
    head = ["step", "idx", *(c.header for _, c in columns), "checkpoint", "preview"]
    rows = []
    for r in records:
        todo = "(to come)" if r.get("expected") else "MISSING"
        ck = "(baseline)" if r["baseline"] else (r["checkpoint"].rsplit("/", 1)[-1] if r["checkpoint"] else todo)
        pv = r["preview"].rsplit("/", 1)[-1] if r["preview"] else todo
        if r["preview_format"] and r["preview_format"]["format"] == "JPEG":
            pv += f" (q{r['preview_format']['quality']} {r['preview_format']['subsampling']})"
        rows.append([str(r["step"]) + ("*" if r["group"] == "first_sample" else ""), str(r["index"]),
                     *(_cell(r, key, col) for key, col in columns), ck, pv])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.append("sources: D default, B block, I item, F flag, W walk, C carry, L floor; * = first_sample")
    for r in records:
        if r["control_images"]:
            lines.append(f"  step {r['step']} #{r['index']}: reference images " + ", ".join(r["control_images"]))
        if r["negative_prompt"] is not None:
            lines.append(f"  step {r['step']} #{r['index']}: negative prompt {r['negative_prompt']!r} (true CFG)")
    for r in records:
        for n in r["notes"] + r["missing"]:
            lines.append(f"  step {r['step']} #{r['index']}: {n}")
    return "\n".join(lines)


def run(args) -> int:
    from parity.job import load_job

    job = load_job(args.job)
    step = args.step
    if isinstance(step, str) and step not in ("latest", "all"):
        step = int(step) if step.lstrip("-").isdigit() else step
    # before any preview exists, plan what training will write (Job.expected_steps) instead of failing
    expected = not job.steps()
    if expected and job.never_rendered():
        from parity.errors import ConfigError

        raise ConfigError(job.never_rendered(), job.config_path)
    items = job.items(step if not expected or step != "latest" else "all", strict=False, expected=expected)
    from parity.ids import job_case_name

    name = job_case_name(args.job)
    records = [item_record(i, name) for i in items]
    if args.export_requests:
        _export(Path(args.export_requests), items, records)
    if expected:  # nothing is missing yet: say what will be written
        for r in records:
            r["missing"], r["expected"] = [], True
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        if expected:
            print(f"no previews yet in {job.samples_dir}: the previews training will write "
                  f"(labels {', '.join(map(str, job.expected_steps())) or 'none'})")
        table = _table(job, [_printable(r) for r in records])
        print("\n".join(printable(line) for line in table.split("\n")))
    return 0


def printable(text: str) -> str:
    """`text` with terminal control characters (escape sequences, carriage returns, newlines) shown escaped, as
    Python writes them (\\x1b): a prompt in a job config must not drive the user's terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _printable(value: Any) -> Any:
    """Every string in a plan record made printable (JSON output needs none: json.dumps escapes controls)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value
