"""The planned item: one preview to reproduce, the type every stage after planning takes (parity.run makes them,
parity.runner renders them, parity.external sends them to another stack); and the case that could not be planned."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.cases import Case
from parity.errors import ParityError
from parity.spec import ResolvedSpec


@dataclass
class PlannedItem:
    """One preview to reproduce: the case it belongs to, the preview's own settings and the settings under test."""

    id: str                         # e.g. "portrait-v1[step2000-p3]"
    case: Case
    step: int
    index: int
    preview_path: Path | None
    checkpoint: Path | None
    preview: ResolvedSpec           # how AI Toolkit rendered the preview
    inference: ResolvedSpec         # what is under test
    base_model: str
    text_encoder: str | None
    diff: Any = None                # parity.diagnose.ParamDiff: the knob table preview vs inference
    merge_history: list | None = None  # earlier merged sample rounds to replay (parity check of merged previews)
    problem: str | None = None      # why this item cannot run (missing preview/checkpoint): an ERROR entry

    @property
    def engine_key(self) -> tuple:
        return (self.base_model, self.text_encoder)

    @property
    def weights_key(self) -> tuple:
        """The weights state an item renders with (base model, precision, LoRA file, multiplier, application)."""
        s = self.inference.spec
        return (self.engine_key, s.dtype, s.quantize or "", s.quantize_te or "", s.lora_path or "",
                s.network_multiplier, s.lora_application)

    @property
    def switch_key(self) -> tuple:
        """Sort key that groups items sharing weights state to minimise switches."""
        return (*self.weights_key, self.id)


@dataclass
class CaseError:
    """A case that could not be planned (bad file, missing job...). Reported as one ERROR entry."""

    case_name: str
    case_path: Path
    message: str
    error: ParityError | None = None    # the original error (re-raised as is for a single case: --verbose)

    @property
    def id(self) -> str:
        return f"{self.case_name}[load]"
