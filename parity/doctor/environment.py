"""The runner itself: device and memory, versions, deterministic algorithms, host memory, disk space."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from parity.doctor.inputs import Check
from parity.engine.resources import CARDS, GIB, Card


@dataclass
class Device:
    """The device the plan is for: a real CUDA device, a named card, a --gpu-memory size, or the CPU."""

    kind: str                 # cuda | cpu
    name: str
    memory_bytes: int
    peak_tflops: float | None
    source: str               # "this machine", "--gpu-memory", "--card"
    card: Card | None = None


@dataclass
class Environment:
    versions: dict[str, str] = field(default_factory=dict)
    device: Device | None = None
    host_memory_bytes: int = 0
    checks: list[Check] = field(default_factory=list)


def versions() -> dict[str, str]:
    import platform

    out = {"python": platform.python_version()}
    for mod in ("torch", "diffusers", "transformers", "optimum.quanto", "safetensors"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            out[mod] = getattr(m, "__version__", "?")
        except ImportError:
            out[mod] = "missing"
    try:
        import torch

        out["cuda"] = torch.version.cuda or "none (CPU build)"
    except ImportError:
        pass
    return out


def host_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


_MODEL_WORD = {"rtx4090": "4090", "l4": "l4", "a100-40gb": "a100", "l40s": "l40s", "a100-80gb": "a100",
               "h100": "h100", "h200": "h200"}


def card_by_name(name: str, memory_bytes: int | None = None) -> Card | None:
    """A named card from a key (`h100`) or a device name as torch reports it ("NVIDIA H100 80GB HBM3",
    "NVIDIA A100-SXM4-80GB"): the model word must appear; among several, the closest memory size wins."""
    if name.lower() in CARDS:
        return CARDS[name.lower()]
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    found = [c for c in CARDS.values() if _MODEL_WORD[c.key] in words]
    if not found:
        return None
    if memory_bytes is None:
        return found[0]
    return min(found, key=lambda c: abs(c.memory_gb * 1e9 - memory_bytes))


def resolve_device(device: str, gpu_memory_gb: float | None, card: str | None) -> Device:
    """The plan's device: --card (a named card), --gpu-memory (a size; peak of the named card of that size, if
    any), a CUDA device of this machine, or the CPU (host memory)."""
    if card:
        c = card_by_name(card)
        if c is None:
            from parity.errors import ConfigError

            raise ConfigError(f"unknown card {card!r}; known: {', '.join(CARDS)}")
        return Device("cuda", c.name, int(c.memory_gb * 1e9), c.bf16_tflops, "--card", c)
    if gpu_memory_gb is not None:
        same = [c for c in CARDS.values() if c.memory_gb == gpu_memory_gb]
        c = same[0] if same else None
        return Device("cuda", f"a {gpu_memory_gb:g} GB GPU", int(gpu_memory_gb * 1e9), c.bf16_tflops if c else None,
                      "--gpu-memory", c)
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        c = card_by_name(props.name, props.total_memory)
        return Device("cuda", props.name, props.total_memory, c.bf16_tflops if c else None, "this machine", c)
    return Device("cpu", "cpu", host_memory(), None, "this machine")


def determinism_check(device: Device) -> Check:
    """Whether torch can run with deterministic algorithms here: on CUDA cuBLAS needs CUBLAS_WORKSPACE_CONFIG."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        if device.kind == "cuda" and device.source == "this machine":
            a = torch.ones(8, 8, device="cuda")
            (a @ a).sum().item()  # raises when cuBLAS is not deterministic-capable
        if device.kind == "cuda" and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
            return Check("deterministic algorithms", "warn", "set CUBLAS_WORKSPACE_CONFIG=:4096:8 before the run "
                         "(cuBLAS is otherwise nondeterministic; parity's determinism guard then reports "
                         "hardware noise)")
        return Check("deterministic algorithms", "ok", "torch.use_deterministic_algorithms(True) works")
    except RuntimeError as exc:
        return Check("deterministic algorithms", "warn", f"not available: {str(exc).splitlines()[0]}")
    finally:
        torch.use_deterministic_algorithms(before)


def disk_check(paths: list[Path], need_bytes: int) -> Check:
    """Free space where caches and reports go (the nearest existing folder of each)."""
    worst = None
    for p in paths:
        p = Path(p).resolve()
        while not p.exists() and p != p.parent:
            p = p.parent
        free = shutil.disk_usage(p).free
        if worst is None or free < worst[1]:
            worst = (p, free)
    if worst is None:
        return Check("disk space", "ok", "nothing to write")
    p, free = worst
    ok = free >= need_bytes
    return Check("disk space", "ok" if ok else "fail",
                 f"{free / GIB:.1f} GiB free, about {need_bytes / GIB:.2f} GiB needed for embeddings, renders and "
                 "reports", str(p))
