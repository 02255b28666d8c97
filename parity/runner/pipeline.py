"""The runner: per item render -> compare -> record, then the follow-up policies.

`Runner.run` renders a list in an order that minimises LoRA/precision switches and compares on a worker thread
while the next item renders; `Runner.run_item` does the same steps for one item (the pytest plugin). Both go
through the same three stages (`_start`, `_finish`, `_follow_up`) and the same exception-to-record mapping.
"""

from __future__ import annotations

import logging
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from parity.errors import ParityError
from parity.items import PlannedItem
from parity.record import ItemRecord
from parity.tier import ERROR

from .engines import EnginePool
from .policies import Attribution, Deferred, DeterminismGuard, FollowUp, NoiseFloor, follow_up_order
from .records import error_record, failure_message, rendered_record
from .renders import read_render, save_render, submit_compare

if TYPE_CHECKING:
    import numpy as np

    from parity.compare.engine import Comparison
    from parity.engine.render import RenderResult
    from parity.external.endpoint import EndpointClient
    from parity.external.sources import ExternalRender, RenderSources

log = logging.getLogger("parity")


@dataclass
class _Rendered:
    """An item rendered, its comparison submitted to the worker thread."""

    item: PlannedItem
    result: RenderResult | ExternalRender
    render_path: Path
    comparison: Future[Comparison]
    started: float


class Runner:
    """Renders planned items (parity.items.PlannedItem) into item records (parity.record.ItemRecord)."""

    def __init__(self, out_dir: Path, *, device: str = "cpu", attribution: bool = True, determinism: str = "auto",
                 attribution_budget: int | None = None, cache_dir: Path | None = None,
                 progress: Callable[[str], None] | None = None, endpoint: EndpointClient | None = None):
        from parity.compare import Comparer
        from parity.external.sources import RenderSources
        from parity.device import hardware_name

        from .external import ExternalExplanation

        self.out_dir = Path(out_dir)
        self.progress = progress or (lambda msg: None)
        self.pool = EnginePool(device, cache_dir, self.progress)
        self.engines = self.pool.engines  # (base model, text encoder) -> Engine; benchmarks inject their own
        self.guard = DeterminismGuard(determinism, self.pool)
        # where each item's image comes from: parity's engine, a folder of external renders, an endpoint
        self.sources = RenderSources(self.pool, self.out_dir, endpoint)
        # applied in this order after the first pass (a lifted tier can make attribution unnecessary); policies
        # that re-render to explain a preview apply to engine renders, those marked `external` to external ones.
        self.follow_ups: tuple[FollowUp, ...] = (NoiseFloor(self.pool, self.out_dir / "noise-floor"),
                           Attribution(self.pool, enabled=attribution, budget=attribution_budget),
                           ExternalExplanation(self.pool, self.out_dir / "reproductions", enabled=attribution,
                                               budget=attribution_budget))
        self.comparer = Comparer(max_workers=1)
        self.hardware = hardware_name(device)  # irreducible knob `hardware`: what renders here
        for sub in ("renders", "heatmaps"):
            (self.out_dir / sub).mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.comparer.close()

    # -- the per-item stages -------------------------------------------------------------------------------
    def _start(self, item: PlannedItem) -> _Rendered | ItemRecord:
        """Render, save the PNG, submit the comparison; an ERROR record when the item cannot be rendered."""
        started = time.perf_counter()
        if item.problem:  # a missing preview or checkpoint: nothing to render or compare
            return with_source(self.sources, item, error_record(item, item.problem, started, self.hardware))
        try:
            result = self.sources.render(item)
            path = save_render(self.out_dir, item, result.image)
            comparison = submit_compare(self.comparer, self.out_dir, item, result.image)
            return _Rendered(item, result, path, comparison, started)
        except Exception as e:  # noqa: BLE001 - one broken item must not cost the others
            return self._failed(item, e, started)

    def _finish(self, r: _Rendered) -> ItemRecord:
        """The comparison's result as a record, checked by the determinism guard."""
        try:
            rec = with_source(self.sources, r.item, rendered_record(r.item, r.result, r.render_path, r.comparison.result(),
                                                        r.started, self.hardware))
            if rec.source is not None and not rec.external_render and self.guard.wants(r.item, rec):
                self.guard.apply(r.item, rec, r.result.image)
            return rec
        except Exception as e:  # noqa: BLE001
            return self._failed(r.item, e, r.started)

    def _follow_up(self, item: PlannedItem, rec: ItemRecord, image: np.ndarray, label: str = "") -> None:
        for policy in policies_for(self.follow_ups, item, rec):
            self.progress(f"{label}{_DOING.get(type(policy).__name__) or policy.doing} {item.id}")
            policy.apply(item, rec, image)

    def _failed(self, item: PlannedItem, e: Exception, started: float) -> ItemRecord:
        log.debug("item %s failed", item.id, exc_info=True)
        tb = None if isinstance(e, _EXPECTED) else traceback.format_exc()
        return with_source(self.sources, item, error_record(item, failure_message(e), started, self.hardware, tb=tb))

    # -- entry points ----------------------------------------------------------------------------------------
    def run_item(self, item: PlannedItem) -> ItemRecord:
        """Render, compare and follow up one item; never raises for item-level problems."""
        out = self._start(item)
        if isinstance(out, ItemRecord):
            return out
        rec = self._finish(out)
        if rec.tier != ERROR.name:
            self._follow_up(item, rec, out.result.image)
        return rec

    def run(self, items: list[PlannedItem], on_record: Callable[[ItemRecord], None],
            on_compared: Callable[[ItemRecord, list[str]], None] | None = None,
            compared: dict[str, ItemRecord] | None = None) -> list[ItemRecord]:
        """Render all items; compare on a worker thread while the next renders; follow-ups once all have
        rendered. `on_record` is called once per finished item (the results store appends it atomically).
        `on_compared(record, pending)` gets each record that awaits follow-ups (`pending` names them) as soon as it
        is compared: journaled as a first pass, a kill loses at most the item in flight. `compared` holds such
        first-pass records of an interrupted run by id: those items only get their follow-ups, on the saved render
        (an item whose render cannot be read is rendered again)."""
        ordered = sorted(items, key=lambda it: it.switch_key)
        done: list[ItemRecord] = []
        deferred: list[Deferred] = []  # (item, record, image) awaiting follow-ups

        def finish(rec: ItemRecord) -> None:
            done.append(rec)
            on_record(rec)

        def settle(r: _Rendered) -> None:
            rec = self._finish(r)
            pending = self._pending_follow_ups(r.item, rec) if rec.tier != ERROR.name else []
            if not pending:
                return finish(rec)
            if on_compared is not None:
                on_compared(rec, pending)
            deferred.append((r.item, rec, r.result.image))

        first_pass = []
        for item in ordered:
            resumed = self._resumed(item, (compared or {}).get(item.id))
            if resumed is not None:
                deferred.append(resumed)
            else:
                first_pass.append(item)
        self._first_pass(first_pass, settle, finish)
        deferred.sort(key=follow_up_order)
        for policy in self.follow_ups:
            getattr(policy, "prepare", lambda entries: None)(deferred)
        for n, (item, rec, image) in enumerate(deferred, 1):
            self._follow_up(item, rec, image, label=f"[{n}/{len(deferred)}] ")
            finish(rec)
        return done

    def _first_pass(self, ordered: list[PlannedItem], settle: Callable[[_Rendered], None],
                    finish: Callable[[ItemRecord], None]) -> None:
        """Render each item in order, settling comparisons as they complete (the worker overlaps the renders)."""
        self.sources.prepare(ordered)
        pending: list[_Rendered] = []
        for n, item in enumerate(ordered, 1):
            if pending and pending[-1].item.weights_key != item.weights_key:
                _settle_all(pending, settle)  # before the weights switch: settling can re-render (determinism)
            self.progress(f"[{n}/{len(ordered)}] rendering {item.id}")
            out = self._start(item)
            if isinstance(out, ItemRecord):
                finish(out)
            else:
                pending.append(out)
            while pending and pending[0].comparison.done():
                settle(pending.pop(0))
        _settle_all(pending, settle)

    def _pending_follow_ups(self, item: PlannedItem, rec: ItemRecord) -> list[str]:
        return [_NAMES.get(type(p).__name__) or p.name for p in policies_for(self.follow_ups, item, rec)]

    def _resumed(self, item: PlannedItem, rec: ItemRecord | None) -> Deferred | None:
        """(item, first-pass record, its saved render) when an interrupted run compared the item and its
        follow-ups are still wanted; None when the item must be rendered again."""
        if rec is None or not self._pending_follow_ups(item, rec):
            return None
        image = read_render(rec.paths.get("render"))
        return None if image is None else (item, rec, image)


def _settle_all(pending: list[_Rendered], settle: Callable[[_Rendered], None]) -> None:
    """Settle every pending comparison in order. Before a weights switch too: settling can re-render an item (the
    determinism guard) with the weights the earlier items used, so a slow comparison would otherwise cost a LoRA
    switch there and back."""
    while pending:
        settle(pending.pop(0))


_EXPECTED = (ParityError,)  # errors that name their file and problem: no traceback needed
_NAMES = {"NoiseFloor": "noise_floor", "Attribution": "attribution"}
_DOING = {"NoiseFloor": "measuring the noise floor of", "Attribution": "attributing"}


def policies_for(follow_ups: tuple[FollowUp, ...], item: PlannedItem, rec: ItemRecord) -> list[FollowUp]:
    """The follow-ups `rec` calls for: engine-side ones for engine renders, `external` ones for the others."""
    return [p for p in follow_ups if getattr(p, "external", False) == rec.external_render and p.wants(item, rec)]


def with_source(sources: RenderSources, item: PlannedItem, rec: ItemRecord) -> ItemRecord:
    """The record with where its render came from (the source's own facts when it rendered)."""
    try:
        rec.source = rec.source or sources.describe(item)  # a render's own source says more
    except Exception:  # noqa: BLE001 - describing a source never costs the item
        log.debug("no source for %s", item.id, exc_info=True)
    if rec.external_render:
        # lora_precision, merge_history, hardware compare the preview with parity's engine, not another stack
        rec.irreducible, rec.irreducible_details = [], []
    return rec
