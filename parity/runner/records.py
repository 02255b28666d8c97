"""Building item records (parity.record.ItemRecord) from a planned item and what happened to it.

The one place a result becomes a record: rendered and compared (`rendered_record`), failed (`error_record`),
or a case that could not be planned (`case_error_record`). `failure_message` is the one mapping from an exception
to the item's one-line error.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.errors import ParityError
from parity.items import CaseError, PlannedItem
from parity.record import ItemRecord, Schedule
from parity.tier import ERROR

if TYPE_CHECKING:
    from parity.compare.engine import Comparison
    from parity.engine.render import RenderResult
    from parity.external.sources import ExternalRender


def failure_message(e: BaseException) -> str:
    """A ParityError already names the file and the problem; anything else gets its type."""
    return str(e) if isinstance(e, ParityError) else f"{type(e).__name__}: {e}"


def _abs(path: str | Path | None) -> str | None:
    """An absolute path, as every path of a record in memory (the results store makes it relative only when it
    writes the record): a relative `--out` must not leave paths relative to whatever the working directory was."""
    return os.path.abspath(path) if path else None


def base_record(item: PlannedItem, hardware: str) -> ItemRecord:
    """What is known before rendering: identity, gate, paths, both sides' knobs, mismatches, irreducibles."""
    from parity.diagnose.paramdiff import hardware_row

    diff = item.diff
    irreducible = [r for r in diff.irreducible if r["knob"] != "hardware"]
    hw = hardware_row(item.case.preview_hardware, hardware)
    if hw is not None:
        irreducible.append(hw)
    # params.<side>.<knob> = {"value", "source"}; irreducible knobs by name, their details apart.
    params = {side: {r.knob: getattr(r, side) for r in diff.rows} for side in ("preview", "inference")}
    return ItemRecord(
        id=item.id, case=item.case.name, case_file=str(item.case.path),
        case_sha256=getattr(item.case, "sha256", None), step=item.step, index=item.index,
        prompt=item.preview.spec.prompt, prompt_inference=item.inference.spec.prompt, gate=item.case.expect.min_tier,
        paths={"preview": _abs(item.preview_path), "checkpoint": _abs(item.checkpoint)},
        params=params, mismatches=list(diff.mismatches), irreducible=[r["knob"] for r in irreducible],
        irreducible_details=irreducible, schedule=schedule_of(params),
    )


def schedule_of(params: dict[str, dict[str, Any]]) -> Schedule | None:
    """Both sides' sigma tables from the knob table's `schedule` values (None when a side has none)."""
    sides = [(params.get(side) or {}).get("schedule") or {} for side in ("preview", "inference")]
    values = [s.get("value") if isinstance(s, dict) else None for s in sides]
    if not all(isinstance(v, dict) and isinstance(v.get("sigmas"), list) for v in values):
        return None
    return Schedule(preview=list(values[0]["sigmas"]), inference=list(values[1]["sigmas"]),
                    mu_preview=values[0].get("mu"), mu_inference=values[1].get("mu"))


def rendered_record(item: PlannedItem, result: RenderResult | ExternalRender, render_path: Path,
                    comparison: Comparison, started: float, hardware: str) -> ItemRecord:
    """The record of a rendered and compared item, judged against its case's gate."""
    rec = base_record(item, hardware)
    c = comparison.to_dict()
    rec.paths.update(render=_abs(render_path),
                     **{f"heatmap_{k}": _abs(v) for k, v in (comparison.heatmaps or {}).items()})
    rec.tier, rec.reason, rec.error = comparison.tier, c.get("reason", ""), comparison.error
    rec.metrics, rec.metric_variants = c.get("metrics", {}), c.get("variants", {})
    rec.jpeg, rec.ceiling, rec.size_mismatch = c.get("jpeg"), c.get("ceiling"), c.get("size_mismatch")
    rec.render = render_facts(result)
    rec.source = getattr(result, "source", None)  # an external render's; the engine's is set by the runner
    if getattr(result, "kept", None) is not None:  # an external render: the file as the user's stack wrote it
        rec.paths["external"] = _abs(result.kept)
    rec.timings = dict(result.timings, total_s=time.perf_counter() - started)
    history = getattr(result, "merge_history", None)
    if history and history.get("replayed"):
        # The earlier rounds were replayed: the drift is reproduced, not an irreducible difference.
        rec.irreducible = [k for k in rec.irreducible if k != "merge_history"]
        rec.irreducible_details = [d for d in rec.irreducible_details if d.get("knob") != "merge_history"]
    if getattr(result, "nan_step", None) is not None:
        rec.tier, rec.error = ERROR.name, f"render produced NaN/inf at step {result.nan_step}"
    judge(rec, item)
    return rec


def render_facts(result: RenderResult | ExternalRender) -> dict[str, Any]:
    """What the engine did (parity.engine.RenderResult), as the record's `render` object; an external render
    (parity.external.sources.ExternalRender) says what is known of it."""
    if hasattr(result, "facts"):
        return result.facts()
    facts = {"width": result.width, "height": result.height, "sigmas": list(result.sigmas),
             "mu": getattr(result, "mu", None), "noise_sha256": result.noise_sha256,
             "embedding_sha256": result.embedding_sha256, "lora": getattr(result, "lora", None),
             "nan_step": getattr(result, "nan_step", None)}
    history = getattr(result, "merge_history", None)
    if history:
        facts["merge_history"] = history
    return facts


def judge(rec: ItemRecord, item: PlannedItem) -> None:
    """`passed`, `expected` and `fail_reasons` from the record's tier, metrics and mismatches against the case's
    expectations. An expected difference passes and keeps its fail reasons (what the gate alone would say)."""
    rec.passed, rec.expected, rec.fail_reasons = item.case.expect.judge(rec.tier, rec.metrics, rec.mismatches)


def error_record(item: PlannedItem, message: str, started: float, hardware: str, tb: str | None = None) -> ItemRecord:
    """An ERROR record: what is known of the item, and why it could not be rendered or compared."""
    try:
        rec = base_record(item, hardware)
    except Exception:  # noqa: BLE001 - a broken plan still gets its error recorded
        rec = ItemRecord(id=item.id, case=item.case.name, step=item.step, index=item.index,
                         prompt=item.preview.spec.prompt)
    rec.tier, rec.passed, rec.metrics, rec.error, rec.fail_reasons = ERROR.name, False, {}, message, [message]
    rec.timings = {"total_s": time.perf_counter() - started}
    rec.traceback = tb
    return rec


def case_error_record(err: CaseError) -> ItemRecord:
    """The one ERROR record of a case that could not be planned (a parity.items.CaseError)."""
    return ItemRecord(id=err.id, case=err.case_name, case_file=str(err.case_path), tier=ERROR.name, passed=False,
                      error=err.message, fail_reasons=[err.message])

