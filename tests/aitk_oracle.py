"""AI Toolkit's own renders (`../shared/oracle`, see its README) as test data: where they are, what AI Toolkit
recorded per preview (`facts.json`), and whether this machine can be held to bit-exactness against them.

Why a machine gate: every bf16 CPU kernel (matmul, SDPA, norms, activations) and even fp32 ones give other low
bits under another ATen vector ISA: `ATEN_CPU_CAPABILITY=default` vs `avx2` already changes the hash of every one
of those ops on one box (docs/numerics.md "Golden renders"). A 16-step bf16 render amplifies one flipped bf16 bit
to tens of levels, so bit-exactness against renders made on another CPU is not a property of the engine. The
oracle machine's fingerprint (`oracle/machine.json`, `{"aten_capability": "AVX512", ...}`) or
`PARITY_ORACLE_EXACT=1` turns the exact assertions on; elsewhere the hardware-independent checks still run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ORACLE = Path(os.environ.get("PARITY_ORACLE", REPO.parent / "shared" / "oracle"))
DEV_BASE = ORACLE / "tiny-flux2"

# job folder name under <case>/output/, the job's dtype as AI Toolkit rendered it
CASES = {"fp32": "public_fp32", "bf16": "public_bf16", "fp8": "public_fp8"}

needs_oracle = pytest.mark.skipif(not (ORACLE / "README.md").is_file(),
                                  reason=f"AI Toolkit oracle renders not found at {ORACLE} (a checkout without "
                                         "../shared; set PARITY_ORACLE to its folder)")


@dataclass(frozen=True)
class OraclePreview:
    """One preview AI Toolkit rendered: its facts.json entry and its files."""

    case: str
    facts: dict
    jpeg: Path        # the saved preview (Pillow JPEG q75)
    lossless: Path    # the image AI Toolkit had right before saving

    @property
    def step(self) -> int:
        return int(self.facts["step"])

    @property
    def index(self) -> int:
        return int(Path(self.facts["file"]).stem.rsplit("_", 1)[1])

    @property
    def id(self) -> str:
        return f"{self.case}-step{self.step}-p{self.index}"

    def lossless_pixels(self) -> np.ndarray:
        from PIL import Image

        with Image.open(self.lossless) as im:
            return np.asarray(im.convert("RGB"))


def job_dir(case: str) -> Path:
    return ORACLE / case / "output" / CASES[case]


@lru_cache(maxsize=None)
def previews(case: str) -> tuple[OraclePreview, ...]:
    folder = ORACLE / case
    facts = json.loads((folder / "facts.json").read_text())
    out = []
    for f in facts["images"]:
        stem = Path(f["file"]).stem
        out.append(OraclePreview(case, f, job_dir(case) / "samples" / f["file"], folder / "lossless_png" /
                                 f"{stem}.png"))
    return tuple(out)


def run_facts(case: str) -> dict:
    return json.loads((ORACLE / case / "facts.json").read_text())["run"]


def machine_fingerprint() -> dict:
    import platform

    import torch

    return {"aten_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
            "torch": torch.__version__.split("+")[0]}


def exact_gate() -> tuple[bool, str]:
    """(hold bf16/fp8/fp32 renders to max |delta| 0?, why). PARITY_ORACLE_EXACT=1/0 decides outright; otherwise
    this machine must match every field of the oracle's recorded fingerprint."""
    forced = os.environ.get("PARITY_ORACLE_EXACT")
    here = machine_fingerprint()
    if forced is not None:
        return forced == "1", f"PARITY_ORACLE_EXACT={forced} (this machine: {here})"
    recorded = ORACLE / "machine.json"
    if not recorded.is_file():
        return False, (f"the oracle's CPU is not recorded ({recorded} absent) and this machine ({here}) is not known "
                       "to reproduce it bit for bit; set PARITY_ORACLE_EXACT=1 on the machine that rendered it")
    want = json.loads(recorded.read_text())
    same = all(here.get(k) == v for k, v in want.items() if k in here)
    return same, f"oracle machine {want}, this machine {here}"
