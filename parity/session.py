"""Setting up a run, shared by the CLI (`parity run` / `parity diff`) and the pytest plugin: the device, the
embedding cache folder, the results store with the run's metadata (parity.options.SessionOptions says how), the
gate check, and the records of items that cannot run here (a missing base model). Neither entry point reaches
into the other's helpers."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from parity.device import default_device
from parity.errors import ParityError
from parity.options import SessionOptions
from parity.tier import parse_gate


def embedding_cache_dir() -> Path:
    """Prompt embeddings persist across runs here ($PARITY_CACHE_DIR, default .parity-cache/): a warm cache never
    loads the text encoder (24B parameters on the real model). Portable CPU numerics keep their own: embeddings
    computed by native kernels have other low bits."""
    from parity.cpu_numerics import active_mode

    name = "embeddings" if active_mode() == "native" else f"embeddings-{active_mode()}"
    return Path(os.environ.get("PARITY_CACHE_DIR", ".parity-cache")) / name


def run_metadata(device: str) -> dict[str, Any]:
    """Versions and machine facts recorded once per run."""
    versions: dict[str, str] = {"python": platform.python_version()}
    for mod in ("torch", "diffusers", "transformers", "PIL", "numpy", "optimum.quanto"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            versions["Pillow" if mod == "PIL" else mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001 - a missing optional package is just not listed
            pass
    info: dict[str, Any] = {"versions": versions, "device": device, "platform": platform.platform()}
    try:
        import torch

        from parity import cpu_numerics

        cpu_numerics.note_device(device)
        info["cpu_numerics"] = cpu_numerics.run_record(device)

        if device.startswith("cuda") and torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # noqa: BLE001
        pass
    return info


def gate_tier(text: str, option: str) -> str:
    """A gate given on the command line (`option` names where), checked: EXACT, NEAR, DRIFT or DIFFERENT."""
    try:
        return parse_gate(text)
    except ValueError as e:
        raise ParityError(f"{option} {e}") from None


def missing_base_model(item: Any) -> str | None:
    """Why a planned item cannot render on this machine (its base model folder is not here), or None."""
    if Path(item.base_model).exists():
        return None
    return (f"base model not found: {item.base_model} (set base_model in the case file, --base-model / "
            "--parity-base-model or $PARITY_BASE_MODEL; pytest: --parity-skip-missing-model to skip instead)")


@dataclass
class Session:
    """One run's runner and results store. `open` starts both; `close` releases the runner; `finish` writes the
    final results."""

    runner: Any     # parity.runner.Runner
    store: Any      # parity.report.store.ResultsStore
    device: str

    @classmethod
    def open(cls, out_dir: Path, meta: dict[str, Any], options: SessionOptions, *, store_dir: Path | None = None,
             progress: Callable[[str], None] | None = None, endpoint: Any = None) -> "Session":
        """Renders go under `out_dir`; results under `store_dir` (default `out_dir`; xdist workers write their
        own). `meta` adds to run_metadata (entry point, shard, ...). `endpoint`: a
        parity.external.endpoint.EndpointClient that renders every item instead of parity's engine."""
        from parity.report.store import ResultsStore
        from parity.runner import Runner

        device = options.device or default_device()
        store = ResultsStore(store_dir or out_dir)
        store.start(dict(run_metadata(device), **meta), resume=options.resume, overwrite=options.overwrite,
                    force=options.force_resume)
        runner = Runner(out_dir, device=device, attribution=options.attribution, attribution_budget=options.budget,
                        progress=progress, determinism=options.determinism_check, cache_dir=embedding_cache_dir(),
                        endpoint=endpoint)
        return cls(runner=runner, store=store, device=device)

    def record_unrunnable(self, items: Iterable[Any]) -> list[Any]:
        """Record an ERROR for each item whose base model is missing; return the others. An item rendered by
        another stack needs the base model only to explain a difference (that explanation then says so)."""
        from parity.runner import error_record

        runnable = []
        for it in items:
            why = missing_base_model(it) if self.runner.sources.kind(it) == "engine" else None
            if why:
                self.store.add(error_record(it, why, time.perf_counter(), self.runner.hardware))
            else:
                runnable.append(it)
        return runnable

    def close(self) -> None:
        self.runner.close()
