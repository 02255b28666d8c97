"""Orchestration: cases -> items -> render -> compare -> diagnose -> results.

`plan_cases` turns case files into `PlannedItem`s without loading any model (a case that cannot be read becomes
one ERROR entry; the other cases go on). `Runner` renders them with one `Engine` per base model (loaded once per
process and kept across cases), compares on a worker thread while the next item renders, attributes the items
below their gate one knob at a time, and appends each finished item to the results store atomically.

Both entry points use this module: the CLI (`parity run` / `parity diff`) runs whole lists with `Runner.run`,
the pytest plugin runs one item per test with `Runner.run_item`.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import sys
import time
import traceback
import zlib
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from parity.cases import Case
from parity.errors import ParityError
from parity.spec import ResolvedSpec, meets_gate

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
    from parity.diagnose import InferenceSettings, item_diff, parse_overrides
    from parity.job import load_job

    job = load_job(case.job_source)
    wanted = steps if steps is not None else case.steps
    # strict=False: a preview or checkpoint missing for one item makes that item an ERROR, not the whole case.
    # detect=False then per item: a corrupt preview file fails its own item, not the case.
    items = job.items(wanted, strict=False, detect=False)
    if lora is None and case.lora is not None:
        if not case.lora.is_file():
            # A folder of checkpoints is not supported yet; a file is the LoRA under test for every item.
            raise ParityError("lora: no such LoRA file (the path is resolved relative to the case file)"
                              if not case.lora.exists() else "lora: must be a LoRA file, not a folder", case.lora)
        lora = case.lora
    settings = InferenceSettings.from_case_value(
        inference if inference is not None else case.inference, case.path.parent, where=str(case.path)
    )
    if overrides:
        settings = settings.with_overrides(parse_overrides(overrides))
    base, _ = (base_model, "cli") if base_model else case.resolve_base_model(job.facts.name_or_path)
    if not base:
        raise ParityError("no base model: set base_model in the case, $PARITY_BASE_MODEL, or model.name_or_path",
                          case.path)
    text_encoder, _ = case.resolve_text_encoder()
    planned = []
    from parity.job import detect_format

    for it in items:
        unreadable = None
        if it.preview is not None:
            try:
                it.preview_format = detect_format(it.preview)
            except ParityError as e:
                unreadable = str(e)
            except Exception as e:  # noqa: BLE001 - Pillow raises many types for a mangled header
                unreadable = f"{it.preview}: not a readable image ({type(e).__name__}: {e})"
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
        planned.append(
            PlannedItem(
                id=item_id(case.name, it.step, it.index), case=case, step=it.step, index=it.index,
                preview_path=it.preview, checkpoint=it.checkpoint, preview=it.resolved, inference=infer,
                base_model=str(base), text_encoder=text_encoder, diff=diff, problem=problem,
                merge_history=history,
            )
        )
    return planned


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

        if device.startswith("cuda") and torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # noqa: BLE001
        pass
    return info


class Runner:
    """Renders planned items. Holds one Engine per (base model, text encoder), created on first use."""

    def __init__(
        self,
        out_dir: Path,
        *,
        device: str = "cpu",
        attribution: bool = True,
        attribution_budget: int | None = None,
        cache_dir: Path | None = None,
        progress: Callable[[str], None] | None = None,
        determinism: str = "auto",
    ):
        from parity.compare import Comparer

        if determinism not in DETERMINISM_MODES:
            raise ParityError(f"determinism check must be one of {', '.join(DETERMINISM_MODES)}, got {determinism!r}")
        self.out_dir = Path(out_dir)
        self.determinism = determinism
        self.device = device
        self.attribution = attribution
        self.attribution_budget = attribution_budget
        self.cache_dir = cache_dir
        self.engines: dict[tuple, Any] = {}
        from parity.diagnose import RenderCache

        self.render_cache = RenderCache()  # attribution renders shared by items with the same knob set
        self.comparer = Comparer(max_workers=1)
        self.hardware = hardware_name(device)  # irreducible knob `hardware`: what renders here
        self.progress = progress or (lambda msg: None)
        (self.out_dir / "renders").mkdir(parents=True, exist_ok=True)
        (self.out_dir / "heatmaps").mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.comparer.close()

    # -- engines -------------------------------------------------------------------------------------------
    def engine_for(self, item: PlannedItem):
        key = item.engine_key
        if key not in self.engines:
            from parity.engine import Engine

            self.progress(f"loading base model {item.base_model}")
            # On a GPU the text encoder, transformer and VAE take turns on the device (a 64 GB bf16 transformer
            # fits one 80 GB card only alone); on the CPU everything stays loaded.
            offload = "sequential" if self.device.startswith("cuda") else "none"
            self.engines[key] = Engine(item.base_model, text_encoder=item.text_encoder, device=self.device,
                                       cache_dir=self.cache_dir, offload=offload)
        return self.engines[key]

    def _prepare_embeddings(self, items: list[PlannedItem]) -> None:
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

    # -- one item ------------------------------------------------------------------------------------------
    def _render(self, item: PlannedItem):
        return self.engine_for(item).render(item.inference.spec, merge_history=item.merge_history)

    def _save_render(self, item: PlannedItem, image) -> Path:
        from PIL import Image

        path = self.out_dir / "renders" / f"{safe_name(item.id)}.png"
        Image.fromarray(image).save(path)
        return path

    @staticmethod
    def _thresholds(item: PlannedItem):
        """Tier thresholds of the item's case (its `tiers:` overrides on the defaults)."""
        from parity.compare import Thresholds

        return Thresholds.from_mapping(item.case.tiers, source=str(item.case.path))

    def _submit_compare(self, item: PlannedItem, image) -> Future:
        # resample=True: a size mismatch still gets a (labelled, at best DRIFT) score, so it can be attributed.
        return self.comparer.submit(
            image, item.preview_path, heatmap_dir=self.out_dir / "heatmaps", name=safe_name(item.id), resample=True,
            thresholds=self._thresholds(item),
        )

    def run_item(self, item: PlannedItem) -> dict[str, Any]:
        """Render, compare and (when below the gate) attribute one item; never raises for item-level problems."""
        started = time.perf_counter()
        if item.problem:
            return self._error_record(item, item.problem, started)
        try:
            result = self._render(item)
            render_path = self._save_render(item, result.image)
            comparison = self._submit_compare(item, result.image).result()
            record = self._record(item, result, render_path, comparison, started)
            self._check_determinism(item, result, record)
            if self._wants_noise_floor(item, record):
                self._judge_noise_floor(item, result.image, record)
            if self._needs_attribution(item, record):
                self._attribute(item, record)
            return record
        except ParityError as e:
            return self._error_record(item, str(e), started)
        except Exception as e:  # noqa: BLE001 - one broken item must not cost the others
            log.debug("item %s failed", item.id, exc_info=True)
            return self._error_record(item, f"{type(e).__name__}: {e}", started, tb=traceback.format_exc())

    def run(self, items: list[PlannedItem], on_record: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
        """Render all items in an order that minimises LoRA/precision switches; compare on a worker thread
        while the next item renders; attribute the ones below their gate afterwards. `on_record` is called
        once per finished item (the results store appends it atomically)."""
        ordered = sorted(items, key=lambda it: it.switch_key)
        self._prepare_embeddings(ordered)
        records: list[dict[str, Any]] = []
        pending: list[tuple[PlannedItem, Any, Path, Future, float]] = []
        # items needing more renders (noise floor, attribution) once everything is rendered: (item, record, image)
        deferred: list[tuple[PlannedItem, dict[str, Any], Any]] = []

        def drain(block: bool) -> None:
            while pending and (block or pending[0][3].done()):
                item, result, render_path, fut, started = pending.pop(0)
                try:
                    record = self._record(item, result, render_path, fut.result(), started)
                    self._check_determinism(item, result, record)
                except ParityError as e:
                    record = self._error_record(item, str(e), started)
                except Exception as e:  # noqa: BLE001
                    record = self._error_record(item, f"{type(e).__name__}: {e}", started)
                if self._wants_noise_floor(item, record) or self._needs_attribution(item, record):
                    deferred.append((item, record, result.image))
                else:
                    records.append(record)
                    on_record(record)

        for n, item in enumerate(ordered, 1):
            self.progress(f"[{n}/{len(ordered)}] rendering {item.id}")
            started = time.perf_counter()
            if item.problem:  # a missing preview or checkpoint: nothing to render or compare
                record = self._error_record(item, item.problem, started)
                records.append(record)
                on_record(record)
                continue
            try:
                result = self._render(item)
                render_path = self._save_render(item, result.image)
                pending.append((item, result, render_path, self._submit_compare(item, result.image), started))
            except Exception as e:  # noqa: BLE001
                msg = str(e) if isinstance(e, ParityError) else f"{type(e).__name__}: {e}"
                log.debug("item %s failed", item.id, exc_info=True)
                record = self._error_record(item, msg, started)
                records.append(record)
                on_record(record)
            drain(block=False)
        drain(block=True)
        for n, (item, record, image) in enumerate(deferred, 1):
            if self._wants_noise_floor(item, record):
                self.progress(f"[{n}/{len(deferred)}] measuring the noise floor of {item.id}")
                self._judge_noise_floor(item, image, record)
            if self._needs_attribution(item, record):
                self.progress(f"[{n}/{len(deferred)}] attributing {item.id}")
                self._attribute(item, record)
            records.append(record)
            on_record(record)
        return records

    # -- determinism guard ---------------------------------------------------------------------------------
    def _wants_determinism(self, record: dict[str, Any]) -> bool:
        if self.determinism == "off" or record.get("tier") == "ERROR":
            return False
        # auto: only items below their gate, where a nondeterministic machine would fake a mismatch (saves renders)
        return self.determinism == "always" or not record.get("passed")

    def _check_determinism(self, item: PlannedItem, result, record: dict[str, Any]) -> None:
        """Render the same spec again and require identical bytes. If they differ the machine (kernels, threads,
        device) is nondeterministic: the record says so, with the largest pixel difference, instead of the
        mismatch passing for a real drift; attribution is skipped (its re-renders would be as noisy)."""
        if not self._wants_determinism(record):
            return
        import numpy as np

        again = self._render(item)
        a, b = np.asarray(result.image), np.asarray(again.image)
        same = a.shape == b.shape and bool(np.array_equal(a, b))
        max_abs = 0 if same else (int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
                                  if a.shape == b.shape else None)
        record["determinism"] = {"checked": True, "identical": same, "max_abs": max_abs}
        record["nondeterministic"] = not same
        if not same:
            what = f"by up to {max_abs}/255" if max_abs is not None else f"in shape {a.shape} vs {b.shape}"
            reason = (f"nondeterministic machine: a repeated render of the same settings differed {what}, so "
                      f"this mismatch may not be a real drift")
            record["fail_reasons"] = list(record.get("fail_reasons") or []) + [reason]
            record.setdefault("notes", []).append(reason)

    # -- noise floor ---------------------------------------------------------------------------------------
    def _wants_noise_floor(self, item: PlannedItem, record: dict[str, Any]) -> bool:
        """DRIFT with every knob matching and some irreducible difference: the only items a measured floor can
        judge fairly (parity.compare.tiers.decide_floor_tier)."""
        return (
            item.case.noise_floor and record.get("tier") == "DRIFT" and not record.get("mismatches")
            and bool(record.get("irreducible")) and not record.get("nondeterministic")
            and item.preview_path is not None and "noise_floor" not in record
        )

    def _judge_noise_floor(self, item: PlannedItem, image, record: dict[str, Any]) -> None:
        """Render the item's noise twin (parity.diagnose.floor), score render vs twin encoded like the preview, and
        re-judge the tier against it. A failure is recorded and leaves the tier as it was."""
        from parity.compare import decide_floor_tier, twin_metrics
        from parity.diagnose.floor import TWINS, floor_record, noise_twin, worst_twin

        t = self._thresholds(item)
        before = record["tier"]
        try:
            # several dithered draws when the LoRA's rounding is sampled; the other twins are deterministic
            draws = TWINS if "lora_precision" in record["irreducible"] else 1
            twins = [noise_twin(item.inference.spec, record["irreducible"], merge_history=item.merge_history,
                                work_dir=self.out_dir / "noise-floor", seed=seed) for seed in range(draws)]
            twin = twins[0]
            if not twin.measured:
                record["noise_floor"] = floor_record(twin, None, tier_before=before, tier=before,
                                                     reason="no irreducible difference could be sampled",
                                                     ratio=t.noise_floor_ratio)
                return
            per_twin = [twin_metrics(image, self.engine_for(item).render(tw.spec, merge_history=tw.merge_history)
                                     .image, item.preview_path, thresholds=t) for tw in twins]
            m = worst_twin(per_twin)
            tier, reason = decide_floor_tier(before, record["metrics"], m, t, knobs=twin.knobs,
                                             resampled=bool(record.get("size_mismatch")))
        except Exception as e:  # noqa: BLE001 - the measurement is extra evidence; never lose the item for it
            log.debug("noise floor of %s failed", item.id, exc_info=True)
            record["noise_floor"] = {"knobs": [], "tier_before": before, "tier": before, "applied": False,
                                     "error": f"{type(e).__name__}: {e}"}
            return
        record["noise_floor"] = floor_record(twin, m, tier_before=before, tier=tier, reason=reason,
                                             ratio=t.noise_floor_ratio, draws=[x["ssim_y"] for x in per_twin])
        if tier != before:
            record["tier"], record["reason"] = tier, reason
            reasons = item.case.expect.check(tier, record["metrics"])
            record["passed"], record["fail_reasons"] = not reasons, reasons

    # -- diagnosis -----------------------------------------------------------------------------------------
    def _needs_attribution(self, item: PlannedItem, record: dict[str, Any]) -> bool:
        return (
            self.attribution and item.case.attribution and record["tier"] != "ERROR"
            and not record["passed"] and item.preview_path is not None and not record.get("nondeterministic")
        )

    def _attribute(self, item: PlannedItem, record: dict[str, Any]) -> None:
        """Re-render one knob at a time (or, when the settings agree, try likely alternatives) and rank causes."""
        from parity.compare import compare
        from parity.diagnose import attribute, causes_list, suspect_search

        engine = self.engine_for(item)
        thresholds = self._thresholds(item)

        def render(spec):
            return engine.render(spec).image

        def score(image, preview_path):
            # A Comparison: attribution uses its tier; an aligned resolution must compare at the preview size.
            return compare(image, preview_path, resample=True, thresholds=thresholds)

        try:
            if record["mismatches"]:
                attribution = attribute(item.preview_path, item.preview.spec, item.inference.spec, render=render,
                                        score=score, budget=self.attribution_budget, cache=self.render_cache)
                record["causes"] = causes_list(attribution)
                record["attribution"] = attribution.to_dict()
            else:
                suspects = suspect_search(item.preview_path, item.inference.spec, render, score, index=item.index,
                                          budget=self.attribution_budget, cache=self.render_cache)
                record["suspects"] = suspects.to_dict()
        except Exception as e:  # noqa: BLE001 - attribution failing must not lose the item's result
            log.debug("attribution of %s failed", item.id, exc_info=True)
            record["attribution"] = {"error": f"{type(e).__name__}: {e}"}

    # -- records -------------------------------------------------------------------------------------------
    def _base_record(self, item: PlannedItem) -> dict[str, Any]:
        from parity.diagnose.paramdiff import hardware_row

        diff = item.diff
        irreducible = [r for r in diff.irreducible if r["knob"] != "hardware"]
        hw = hardware_row(item.case.preview_hardware, self.hardware)
        if hw is not None:
            irreducible.append(hw)
        return {
            "id": item.id,
            "case": item.case.name,
            "case_file": str(item.case.path),
            "step": item.step,
            "index": item.index,
            "prompt": item.preview.spec.prompt,
            "prompt_inference": item.inference.spec.prompt,
            "gate": item.case.expect.min_tier,
            "paths": {"preview": str(item.preview_path) if item.preview_path else None,
                      "checkpoint": str(item.checkpoint) if item.checkpoint else None},
            # params.<side>.<knob> = {"value", "source"}; irreducible knobs by name, their details apart.
            "params": {side: {r.knob: getattr(r, side) for r in diff.rows} for side in ("preview", "inference")},
            "mismatches": list(diff.mismatches),
            "irreducible": [r["knob"] for r in irreducible],
            "irreducible_details": irreducible,
            "causes": [],
            "error": None,
        }

    def _record(self, item: PlannedItem, result, render_path: Path, comparison, started: float) -> dict[str, Any]:
        record = self._base_record(item)
        c = comparison.to_dict()
        record["paths"].update(render=str(render_path), **{f"heatmap_{k}": str(v) for k, v in
                                                           (comparison.heatmaps or {}).items()})
        record.update(
            tier=comparison.tier,
            reason=c.get("reason", ""),
            metrics=c.get("metrics", {}),
            variants=c.get("variants", {}),
            jpeg=c.get("jpeg"),
            ceiling=c.get("ceiling"),
            size_mismatch=c.get("size_mismatch"),
            error=comparison.error,
            render={"width": result.width, "height": result.height, "sigmas": list(result.sigmas),
                    "mu": getattr(result, "mu", None), "noise_sha256": result.noise_sha256,
                    "embedding_sha256": result.embedding_sha256, "lora": getattr(result, "lora", None),
                    "nan_step": getattr(result, "nan_step", None)},
            timings=dict(result.timings, total_s=time.perf_counter() - started),
        )
        history = getattr(result, "merge_history", None)
        if history:
            record["render"]["merge_history"] = history
            if history.get("replayed"):
                # The earlier rounds were replayed: the drift is reproduced, not an irreducible difference.
                record["irreducible"] = [k for k in record["irreducible"] if k != "merge_history"]
                record["irreducible_details"] = [d for d in record["irreducible_details"]
                                                 if d.get("knob") != "merge_history"]
        if getattr(result, "nan_step", None) is not None:
            record["tier"] = "ERROR"
            record["error"] = f"render produced NaN/inf at step {result.nan_step}"
        reasons = item.case.expect.check(record["tier"], record["metrics"])
        record["passed"] = not reasons
        record["fail_reasons"] = reasons
        return record

    def _error_record(self, item: PlannedItem, message: str, started: float, tb: str | None = None):
        try:
            record = self._base_record(item)
        except Exception:  # noqa: BLE001
            record = {"id": item.id, "case": item.case.name, "step": item.step, "index": item.index,
                      "prompt": item.preview.spec.prompt, "params": {}, "mismatches": [], "causes": []}
        record.update(tier="ERROR", passed=False, metrics={}, error=message,
                      fail_reasons=[message], timings={"total_s": time.perf_counter() - started})
        if tb:
            record["traceback"] = tb
        return record


def case_error_record(err: CaseError) -> dict[str, Any]:
    return {"id": err.id, "case": err.case_name, "case_file": str(err.case_path), "step": None, "index": None,
            "prompt": "", "tier": "ERROR", "passed": False, "metrics": {}, "params": {}, "mismatches": [],
            "causes": [], "error": err.message, "fail_reasons": [err.message]}


DETERMINISM_MODES = ("auto", "always", "off")


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


def stderr_progress(quiet: bool) -> Callable[[str], None]:
    """Progress lines on stderr when it is a terminal (and not --quiet); silent otherwise."""
    if quiet or not sys.stderr.isatty():
        return lambda msg: log.debug(msg)

    def show(msg: str) -> None:
        print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)

    return show
