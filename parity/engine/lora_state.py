"""Which LoRA the transformer's weights hold: switching to a spec's LoRA (restoring the pristine base weights
first) and planning the replay of earlier merged sample rounds (the knob `merge_history`)."""

from __future__ import annotations

from pathlib import Path

from parity.engine.components import EngineStats
from parity.engine.lora import LoraApplier, LoraReport
from parity.spec import RenderSpec


def set_lora(applier: LoraApplier, spec: RenderSpec, switches: dict[str, str], history: tuple,
             stats: EngineStats) -> LoraReport | None:
    """Put the spec's LoRA (after replaying `history`) on the weights; nothing is done when they already hold
    exactly that state."""
    want = None if not spec.lora_path else (str(spec.lora_path), float(spec.network_multiplier),
                                            spec.lora_application, switches["lora_merge"], switches["lora_live"],
                                            switches["lokr_live"], history)
    if want == applier.key:
        return applier.report
    if applier.restore():
        stats.base_restores += 1
    if want is None:
        return None
    if history:
        applier.replay_rounds(history, switches)
    report = applier.apply(spec.lora_path, spec.network_multiplier, spec.lora_application, switches, state_key=want)
    stats.lora_applies += 1
    return report


def plan_merge_history(spec: RenderSpec, merge_history) -> tuple[tuple, dict | None]:
    """(rounds to replay, what to report). Replay only applies to a merged LoRA (AI Toolkit un-merges only
    then); when any needed checkpoint file is missing, nothing is replayed (pristine weights) and the report
    names the missing files: the knob `merge_history` (parity.spec.IRREDUCIBLE_KNOBS)."""
    if merge_history is None:
        return (), None
    rounds = tuple((None if p is None else str(p), float(m)) for p, m in merge_history)
    info = {"rounds": len(rounds), "replayed": 0, "missing": [], "applies": True, "note": ""}
    if not spec.lora_path or spec.lora_application != "merged":
        info.update(applies=False, note="live or no LoRA: AI Toolkit leaves the base weights untouched")
        return (), info
    info["missing"] = [p for p, _ in rounds if p is not None and not Path(p).is_file()]
    if info["missing"]:
        info["note"] = (f"{len(info['missing'])} earlier round checkpoint(s) missing: rendered on pristine base "
                        "weights, so the image may differ by the merge/un-merge drift (knob merge_history)")
        return (), info
    info["replayed"] = sum(1 for p, m in rounds if p is not None and m != 0.0)
    return rounds, info
