"""Planning: cases -> `PlannedItem`s, without loading any model.

`plan_cases` turns case files into items (a case that cannot be read becomes one `CaseError`; the other cases go
on). Rendering them is parity.runner's job (`Runner`, re-exported here); setting up a run (device, store, cache,
metadata) is parity.session's, shared by the CLI and the pytest plugin.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from parity.cases import Case
from parity.errors import ParityError
from parity.spec import ResolvedSpec

log = logging.getLogger("parity")


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
    def switch_key(self) -> tuple:
        """Sort key that groups items sharing weights state (LoRA file, multiplier, precision) to minimise switches."""
        s = self.inference.spec
        return (self.engine_key, s.dtype, s.quantize or "", s.quantize_te or "", s.lora_path or "",
                s.network_multiplier, s.lora_application, self.id)


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


def item_id(case_name: str, step: int, index: int) -> str:
    return f"{case_name}[step{step}-p{index}]"


def job_case_name(job: str | Path) -> str:
    """The case name `parity diff JOB` gives a job (its folder's name, or the config file's folder's): the prefix
    of its item ids, which `parity plan JOB --json` prints too."""
    path = Path(job).resolve()
    return path.name if path.is_dir() else path.parent.name


def shard_of(item_id_: str, count: int) -> int:
    """Deterministic 1-based shard of an item (stable across machines and Python versions)."""
    return zlib.crc32(item_id_.encode("utf-8")) % count + 1


def parse_shard(value: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise ParityError(f"shard must be K/N, e.g. 1/4, got {value!r}") from None
    if not (n >= 1 and 1 <= k <= n):
        raise ParityError(f"shard {value!r}: need 1 <= K <= N")
    return k, n


def plan_case(
    case: Case,
    *,
    steps: Any = None,
    inference: Any = None,
    overrides: list[str] | None = None,
    lora: Path | None = None,
    base_model: str | None = None,
) -> list[PlannedItem]:
    """Items of one case. `steps`, `inference`, `overrides`, `lora` and `base_model` override the case file
    (command-line flags). Raises ParityError for a case that cannot be planned."""
    from parity.job import load_job

    job = load_job(case.job_source)
    wanted = steps if steps is not None else case.steps
    # strict=False: a preview or checkpoint missing for one item makes that item an ERROR, not the whole case.
    # detect=False then per item: a corrupt preview file fails its own item, not the case.
    items = job.items(wanted, strict=False, detect=False)
    lora = lora if lora is not None else _case_lora(case)
    settings = _settings(case, inference, overrides)
    base, _ = (base_model, "cli") if base_model else case.resolve_base_model(job.facts.name_or_path)
    if not base:
        raise ParityError("no base model: set base_model in the case, $PARITY_BASE_MODEL, or model.name_or_path",
                          case.path)
    text_encoder, _ = case.resolve_text_encoder()
    return [_plan_item(case, job, it, settings, lora, str(base), text_encoder) for it in items]


def _case_lora(case: Case) -> Path | None:
    """The case's `lora:` file (the LoRA under test for every item), checked."""
    if case.lora is None:
        return None
    if not case.lora.is_file():
        # A folder of checkpoints is not supported yet; a file is the LoRA under test for every item.
        raise ParityError("lora: no such LoRA file (the path is resolved relative to the case file)"
                          if not case.lora.exists() else "lora: must be a LoRA file, not a folder", case.lora)
    return case.lora


def _settings(case: Case, inference: Any, overrides: list[str] | None):
    """The inference settings under test: the case's (or the command line's), then `--set` overrides."""
    from parity.diagnose import InferenceSettings, parse_overrides

    settings = InferenceSettings.from_case_value(
        inference if inference is not None else case.inference, case.path.parent, where=str(case.path)
    )
    return settings.with_overrides(parse_overrides(overrides)) if overrides else settings


def _plan_item(case: Case, job: Any, it: Any, settings: Any, lora: Path | None, base: str,
               text_encoder: str | None) -> PlannedItem:
    """One preview item (parity.job.PreviewItem) planned against the settings under test."""
    from parity.diagnose import item_diff

    unreadable = _detect_preview(it)
    if lora is not None and not it.baseline:
        # `parity diff --lora FILE`: another LoRA file judged against these previews.
        it.resolved = ResolvedSpec(it.resolved.spec.with_(lora_path=str(lora)),
                                   dict(it.resolved.sources, lora_path="cli"))
    infer, diff = item_diff(it, job, settings)
    history = None
    if (infer.spec == it.resolved.spec and it.resolved.spec.lora_path
            and it.resolved.spec.lora_application == "merged"):
        # A parity check of a merged preview: replay AI Toolkit's earlier merge/un-merge rounds, whose rounding
        # residue the preview was rendered on (bit-exact-numerics.md detail 8). Inference under other settings
        # runs on pristine weights, as any other stack does.
        from parity.job.history import history_from_job

        history = history_from_job(job, it.step, it.resolved.spec.network_multiplier)
    missing = [m for m in it.missing if not (lora is not None and m.startswith("no checkpoint"))]
    problem = "; ".join(f"{job.samples_dir if m.startswith('no preview') else job.folder}: {m}"
                        for m in missing) or unreadable
    return PlannedItem(
        id=item_id(case.name, it.step, it.index), case=case, step=it.step, index=it.index,
        preview_path=it.preview, checkpoint=it.checkpoint, preview=it.resolved, inference=infer,
        base_model=base, text_encoder=text_encoder, diff=diff, problem=problem, merge_history=history,
    )


def _detect_preview(it: Any) -> str | None:
    """Read the preview's format into the item; the reason when the file is unreadable (an ERROR item)."""
    from parity.job import detect_format

    if it.preview is None:
        return None
    try:
        it.preview_format = detect_format(it.preview)
    except ParityError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for a mangled header
        return f"{it.preview}: not a readable image ({type(e).__name__}: {e})"
    return None


def plan_cases(cases: Iterable[Case], **kwargs: Any) -> tuple[list[PlannedItem], list[CaseError]]:
    """Plan every case; a case that fails is reported as a CaseError and the others go on."""
    planned: list[PlannedItem] = []
    errors: list[CaseError] = []
    for case in cases:
        try:
            planned.extend(plan_case(case, **kwargs))
        except ParityError as e:
            errors.append(CaseError(case.name, case.path, str(e), e))
    return planned, errors


def hardware_name(device: str) -> str:
    """The device renders run on, as the `hardware` knob names it: "cpu", or the CUDA device's name (what
    torch.cuda.get_device_name reports, e.g. "NVIDIA H100 80GB HBM3"), which a case's `preview_hardware` can match."""
    if device.startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(torch.device(device))
        except Exception:  # noqa: BLE001 - fall back to the device string
            pass
    return device.split(":")[0]


def safe_name(text: str) -> str:
    """A file-name-safe version of an item id (no path separators, no traversal)."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip(".") or "item"
    if len(out) > 120:  # file systems cap names at 255 bytes; keep distinct ids distinct with a checksum
        out = f"{out[:110]}-{zlib.crc32(text.encode('utf-8')):08x}"
    return out


def item_file_name(item_id: str) -> str:
    """The file stem of an item's render and heatmaps: its safe name plus a short hash of the exact id, so ids
    that differ only in characters safe_name folds (`demo x` / `demo_x`) never share a file."""
    digest = hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:10]
    return f"{safe_name(item_id)[:100]}-{digest}"



# The runner and the session set-up live in their own modules; these names stay importable from here.
from parity.runner import DETERMINISM_MODES, Runner, case_error_record  # noqa: E402,F401
