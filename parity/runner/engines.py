"""One Engine per (base model, text encoder), created on first use and kept for the whole process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from parity.items import PlannedItem
from parity.spec import RenderSpec

if TYPE_CHECKING:  # torch: the engine is loaded on first use only
    from parity.engine.render import Engine, RenderResult

log = logging.getLogger("parity")


class EnginePool:
    """The engines of a run. On a GPU the text encoder, transformer and VAE take turns on the device (a 64 GB
    bf16 transformer fits one 80 GB card only alone); on the CPU everything stays loaded."""

    def __init__(self, device: str, cache_dir: Path | None, progress: Callable[[str], None]):
        self.device = device
        self.cache_dir = cache_dir
        self.progress = progress
        self.engines: dict[tuple, Engine] = {}  # PlannedItem.engine_key -> its engine

    def engine_for(self, item: PlannedItem) -> Engine:
        """The engine that renders `item` (a PlannedItem), loading its base model the first time."""
        key = item.engine_key
        if key not in self.engines:
            from parity.engine import Engine

            self.progress(f"loading base model {item.base_model}")
            offload = "sequential" if self.device.startswith("cuda") else "none"
            self.engines[key] = Engine(item.base_model, text_encoder=item.text_encoder, device=self.device,
                                       cache_dir=self.cache_dir, offload=offload)
        return self.engines[key]

    def render(self, item: PlannedItem, spec: RenderSpec | None = None,
               merge_history: list | None | str = "item") -> RenderResult:
        """Render `spec` (default: the item's settings under test, with the item's merge history) with the
        item's engine."""
        if spec is None:
            spec = item.inference.spec
        history = item.merge_history if merge_history == "item" else merge_history
        return self.engine_for(item).render(spec, merge_history=history)

    def prepare_embeddings(self, items: list[PlannedItem]) -> None:
        """With offloading, encode every prompt of the run first so the text encoder is loaded once, not once per
        new prompt (attribution re-renders reuse the same embeddings through the cache)."""
        groups: dict[tuple, list[PlannedItem]] = {}
        for it in items:
            if not it.problem:
                groups.setdefault(it.engine_key, []).append(it)
        for group in groups.values():
            try:
                engine = self.engine_for(group[0])
                if engine.offload != "none":
                    engine.prepare_embeddings([it.inference.spec for it in group])
            except Exception:  # noqa: BLE001 - each item reports its own error when it renders
                log.debug("embedding preparation failed", exc_info=True)
