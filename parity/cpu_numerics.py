"""CPU numerics mode: `native` (torch's own choice of kernels for this CPU) or `portable` (the kernels pinned to
AVX2, so an AVX2-only machine and an AVX-512 one compute the same bits; docs/numerics.md "CPU numerics mode").

Every entry point that renders asks this module, before torch loads:

    mode = cpu_numerics.requested(args.cpu_numerics)       # the option, else $PARITY_CPU_NUMERICS, else native
    cpu_numerics.enter(mode, device=args.device, may_restart=True)

Two of the pins are environment variables that torch and MKL read once, when they load (`ATEN_CPU_CAPABILITY`,
`MKL_CBWR`); so `enter` restarts the process with them set (os.execve, same command line) when they are missing
and torch is not loaded yet, and refuses with one line when torch is already loaded without them: a run is never
half pinned. In the process it then turns oneDNN off, uses one thread and checks that ATen really runs its AVX2
kernels. This module imports no torch at import time: `parity --help` and the CPU probe stay light.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Mapping

from parity.errors import ParityError

log = logging.getLogger(__name__)

MODES = ("native", "portable")
ENV_VAR = "PARITY_CPU_NUMERICS"
OPTION = "--cpu-numerics"
# What torch and MKL read when they load; the values AI Toolkit's oracle renders were made with
# (shared/oracle/numerics.json "env_before_python").
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1"}
PORTABLE_CAPABILITY = "AVX2"        # torch.backends.cpu.get_cpu_capability() under the pins
RESTARTED = "PARITY_CPU_NUMERICS_RESTARTED"   # set on the restarted process: a second restart would loop
# The libraries whose versions decide a render's bits (recorded with the mode; docs/numerics.md lists the checked ones)
BIT_LIBRARIES = ("torch", "diffusers", "transformers", "optimum-quanto")
# x86 flags ATen needs for its AVX2 kernels (cpuinfo_has_x86_avx2 and _fma3)
AVX2_FLAGS = ("avx2", "fma")

# MKL's CNR branch codes (mkl_cbwr_get(MKL_CBWR_BRANCH)); MKL honours a branch other than AUTO/COMPATIBLE only on
# Intel CPUs and silently runs AUTO elsewhere (Intel's oneMKL guide, "Specifying Code Branches")
MKL_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX",
                10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}

_active: dict[str, Any] = {"mode": "native", "device": None}


class CpuNumericsError(ParityError):
    """A mode that cannot be entered here (exit 2, one line)."""


def add_argument(parser: Any) -> None:
    """`--cpu-numerics native|portable` for a command that renders. Checked by `requested`, not by argparse
    choices, so a wrong value is one line (argparse would print its usage first)."""
    parser.add_argument(OPTION, dest="cpu_numerics", default=None, metavar="{native,portable}",
                        help=f"CPU kernels: native (default; torch's choice for this CPU) or portable (pinned to AVX2: "
                             f"the same bits on every x86-64 CPU with AVX2; also ${ENV_VAR}). No effect on CUDA")


def requested(option: str | None, environ: Mapping[str, str] | None = None, *, where: str = OPTION) -> str:
    """The mode asked for: the option (named `where` in an error), else $PARITY_CPU_NUMERICS, else native. An
    unknown value is one line."""
    environ = os.environ if environ is None else environ
    if option is not None:
        return _checked(option, where)
    return _checked(environ.get(ENV_VAR) or "native", f"${ENV_VAR}")


def _checked(value: str, where: str) -> str:
    if value not in MODES:
        raise CpuNumericsError(f"{where} {value!r} is not a CPU numerics mode: use native or portable")
    return value


# -- the CPU probe (monkeypatched in tests to simulate other CPUs) -------------------------------------------
def machine() -> str:
    return platform.machine().lower()


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where they cannot be read (not Linux): then the check
    after torch loads (`get_cpu_capability`) is the only one."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def cpu_problem() -> str | None:
    """Why this CPU cannot run portable numerics, or None."""
    arch = machine()
    if arch not in ("x86_64", "amd64"):
        return f"portable CPU numerics need an x86-64 CPU with AVX2; this CPU is {arch or 'unknown'}"
    flags = cpu_flags()
    if flags is not None and not all(f in flags for f in AVX2_FLAGS):
        lacking = " and ".join(f.upper() for f in AVX2_FLAGS if f not in flags)
        return f"portable CPU numerics need a CPU with AVX2 and FMA; this {arch} CPU has no {lacking}"
    return None


# -- entering the mode ----------------------------------------------------------------------------------------
def missing_pins(environ: Mapping[str, str] | None = None) -> list[str]:
    environ = os.environ if environ is None else environ
    return [k for k, v in PORTABLE_ENV.items() if environ.get(k) != v]


def _pins_text(names: list[str]) -> str:
    return " ".join(f"{k}={PORTABLE_ENV[k]}" for k in names)


def on_gpu(device: str | None) -> bool:
    return bool(device) and str(device).split(":")[0] in ("cuda", "mps")


def enter(mode: str, *, device: str | None = None, may_restart: bool = False,
          restart: Callable[[dict[str, str]], None] | None = None) -> None:
    """Put this process under `mode` before anything renders. `may_restart`: this process may be replaced by itself
    with the pins added (only a program's own entry point, never a library call or a pytest-xdist worker)."""
    _active.update(mode=mode, device=device)
    if mode == "native":
        return
    if on_gpu(device):
        _say_gpu(device)
        return
    problem = cpu_problem()
    if problem:
        raise CpuNumericsError(problem)
    missing = missing_pins()
    if missing:
        _refuse_or_restart(missing, may_restart, restart or restart_process)
    os.environ.pop(RESTARTED, None)   # pinned now; processes this one starts decide for themselves
    apply_in_process()


def _refuse_or_restart(missing: list[str], may_restart: bool, restart: Callable[[dict[str, str]], None]) -> None:
    if "torch" in sys.modules:
        raise CpuNumericsError(f"portable CPU numerics: torch is already loaded without {_pins_text(missing)} in "
                               "its environment (they act only before it loads); set them before Python starts")
    if os.environ.get(RESTARTED):
        raise CpuNumericsError(f"portable CPU numerics: restarted with {_pins_text(missing)} but they are not in "
                               "the environment (something removes them); set them before Python starts")
    if not may_restart:
        raise CpuNumericsError(f"portable CPU numerics: {_pins_text(missing)} must be in the environment before "
                               "Python starts (this process cannot restart itself)")
    log.debug("cpu numerics portable: restarting with %s", _pins_text(missing))
    restart({**os.environ, **PORTABLE_ENV, RESTARTED: "1"})


def restart_process(environ: dict[str, str]) -> None:
    """Replace this process by the same command line under `environ` (does not return)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    os.execve(sys.executable, [sys.executable, *argv[1:]], environ)


def apply_in_process() -> None:
    """The in-process half: oneDNN off, one thread, and ATen really on its AVX2 kernels (else one line)."""
    import torch

    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(1)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != PORTABLE_CAPABILITY:
        raise CpuNumericsError(f"portable CPU numerics: torch runs {capability} kernels, not {PORTABLE_CAPABILITY}, "
                               f"with ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY')} (does this CPU "
                               "have AVX2?)")
    branch = mkl_branch()
    if branch not in (None, "AVX2"):
        log.warning("cpu numerics portable: MKL runs its %s branch, not AVX2 (MKL honours MKL_CBWR=AVX2 only on Intel "
                    "CPUs): its matrix products keep this CPU's bits", branch)


def mkl_branch() -> str | None:
    """The code branch MKL really runs (after MKL_CBWR), read from the MKL inside torch; None where torch has no
    MKL or does not export the query."""
    import ctypes

    import torch

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        query = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    query.restype, query.argtypes = ctypes.c_int, [ctypes.c_int]
    torch.ones(2, 2) @ torch.ones(2, 2)    # MKL settles its branch at its first call
    code = query(1)                         # 1: MKL_CBWR_BRANCH
    return MKL_BRANCHES.get(code, str(code))


# -- what a run records ---------------------------------------------------------------------------------------
def bit_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that decide a render's bits (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in BIT_LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run_record(device: str | None = None) -> dict[str, Any]:
    """The run block's `cpu_numerics` (docs/results-schema.md): the mode, whether it acts on this device, the
    ATen capability torch runs, oneDNN, threads, the pinned variables and the versions that decide bits."""
    import torch

    mode = _active["mode"]
    device = device or _active["device"] or "cpu"
    return {"mode": mode, "applies": mode == "portable" and not on_gpu(device),
            "aten_capability": torch.backends.cpu.get_cpu_capability(), "mkldnn": bool(torch.backends.mkldnn.enabled),
            "threads": torch.get_num_threads(), "mkl_branch": mkl_branch(),
            "env": {k: os.environ.get(k) for k in PORTABLE_ENV},
            "versions": bit_versions()}


def active_mode() -> str:
    return _active["mode"]


def note_device(device: str) -> None:
    """The device a run resolved (when no --device was given): on a GPU the mode changes nothing, said once."""
    if _active["mode"] == "portable" and on_gpu(device) and not on_gpu(_active["device"]):
        _say_gpu(device)
    _active["device"] = device


def _say_gpu(device: str) -> None:
    log.info("cpu numerics portable: rendering on %s, where the mode changes nothing (it pins CPU kernels only)",
             device)
