"""Noise floor of an item whose only differences are irreducible (parity.knobs: the irreducible knobs).

No re-render can remove a LoRA file's rounding, the drift of merge rounds whose checkpoints are gone, or another
device's kernels. What it can do is measure how much such a difference moves this very image: render a *twin*
that differs from the item's render by one sample of each irreducible difference, and score render vs twin.
The tier logic (parity.compare.tiers.decide_floor_tier) then judges the item's own loss against that floor.

The twin, knob by knob:
- lora_precision: the LoRA file with every bf16/fp16 value moved to a random point of its rounding cell
  (parity.engine.dither), i.e. one plausible fp32 original of the saved weights, which is what AI Toolkit sampled
  with (toolkit/network_mixins.py L274-348).
- merge_history (only when earlier checkpoints are missing, so nothing was replayed): the earlier merge/un-merge
  rounds replayed with this item's own LoRA standing in for each missing checkpoint; same number of bf16 round
  trips, so drift of the same size (toolkit/network_mixins.py L371-462).
- hardware: a proxy, the same render with the kernel-level rounding details switched to their other variant
  (QK RMSNorm rounding, RoPE precision, VAE SiLU and attention kernels: parity.engine.numerics). Another device
  rounds at such places; the true GPU-vs-CPU floor is in docs/numerics.md once measured.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from parity.record import NoiseFloorRecord
from parity.spec import RenderSpec

# Rounding-only numerics switches (same math, other kernel or precision): the hardware proxy flips these.
KERNEL_SWITCHES: tuple[str, ...] = ("qk_norm", "rope", "vae_silu", "vae_attention")
# Dithered twins drawn when lora_precision is sampled; the floor is the larger loss. One draw is a noisy estimate
# (benchmarks/noise_floor.py: real/one-twin loss reached 1.9 in bf16, the max of two stays lower).
TWINS = 2


@dataclass
class NoiseTwin:
    """What to render as the twin, and what it stands for."""

    spec: RenderSpec
    merge_history: list | None
    measured: list[dict[str, str]] = field(default_factory=list)    # [{knob, how}]
    unmeasured: list[dict[str, str]] = field(default_factory=list)  # [{knob, why}]

    @property
    def knobs(self) -> list[str]:
        return [m["knob"] for m in self.measured]


def _flip_kernel_switches(spec: RenderSpec) -> tuple[tuple[str, str], ...]:
    from parity.engine.numerics import SWITCHES, resolve_switches

    current = resolve_switches(spec.numerics, spec.semantics)
    flipped = dict(spec.numerics)
    for name in KERNEL_SWITCHES:
        values = SWITCHES[name]
        flipped[name] = values[1] if current[name] == values[0] else values[0]
    return tuple(sorted(flipped.items()))


def _file_dtypes(twin_file: Path) -> list[str]:
    from safetensors import safe_open

    from parity.jsonio import parse_json

    with safe_open(str(twin_file), "pt") as f:
        meta = parse_json((f.metadata() or {}).get("parity_dither", "{}"), twin_file)
    return list(meta.get("source_dtypes") or ["low-precision"])


def noise_twin(spec: RenderSpec, irreducible: Sequence[str], *, merge_history: list | None, work_dir: Path,
               seed: int = 0) -> NoiseTwin:
    """The twin of a render of `spec` for the given irreducible knobs (all combined in one render). Writes the
    dithered LoRA file (lora_precision) under `work_dir`. Knobs that cannot be sampled go to `unmeasured`."""
    twin = NoiseTwin(spec=spec, merge_history=merge_history)
    for knob in dict.fromkeys(irreducible):
        if knob == "lora_precision":
            if not spec.lora_path:
                twin.unmeasured.append({"knob": knob, "why": "no LoRA in the render"})
                continue
            from parity.engine.dither import dither_lora_file

            # One twin file per LoRA file and seed, shared by the items that use it (real LoRAs weigh 100s of MB).
            tag = hashlib.sha1(f"{Path(spec.lora_path).resolve()}|{seed}".encode()).hexdigest()[:12]
            target = Path(work_dir) / f"{Path(spec.lora_path).stem}.dither-{tag}.safetensors"
            done = ({"file": str(target), "source_dtypes": _file_dtypes(target)} if target.is_file()
                    else dither_lora_file(spec.lora_path, target, seed=seed))
            twin.spec = twin.spec.with_(lora_path=done["file"])
            twin.measured.append({"knob": knob, "how": (
                f"LoRA values moved within their {'/'.join(done['source_dtypes'])} rounding cells (one plausible "
                f"fp32 original of the saved file)")})
        elif knob == "merge_history":
            missing = [p for p, _ in (merge_history or []) if p is not None and not Path(p).is_file()]
            if not missing or not spec.lora_path or spec.lora_application != "merged":
                twin.unmeasured.append({"knob": knob, "why": "no missing merge round to stand in for"})
                continue
            stand_in = str(spec.lora_path)
            twin.merge_history = [(stand_in if (p is not None and not Path(p).is_file()) else p, m)
                                  for p, m in merge_history]
            twin.measured.append({"knob": knob, "how": (
                f"{len(missing)} missing earlier merge round(s) replayed with this item's LoRA standing in")})
        elif knob == "hardware":
            twin.spec = twin.spec.with_(numerics=_flip_kernel_switches(twin.spec))
            twin.measured.append({"knob": knob, "how": (
                "proxy: kernel-level rounding details switched (" + ", ".join(KERNEL_SWITCHES) + ")")})
        else:
            twin.unmeasured.append({"knob": knob, "why": "no way to sample this difference"})
    return twin


def worst_twin(per_twin: Sequence[dict[str, float]]) -> dict[str, float]:
    """The floor from several twins' metrics: the largest noise each metric saw (lowest SSIM-Y, highest window
    density, max |diff| and MAE)."""
    return {"ssim_y": min(m["ssim_y"] for m in per_twin),
            "window_density": max(m["window_density"] for m in per_twin),
            "max_abs": max(m["max_abs"] for m in per_twin), "mae": max(m["mae"] for m in per_twin)}


def floor_record(twin: NoiseTwin, metrics: dict[str, float] | None, *, tier_before: str, tier: str, reason: str,
                 ratio: float, draws: Sequence[float] = ()) -> NoiseFloorRecord:
    """The `noise_floor` part of an item's record (docs/results-schema.md). `draws`: SSIM-Y of each twin."""
    return NoiseFloorRecord(
        draws=[float(d) for d in draws], knobs=twin.knobs, twin=list(twin.measured),
        unmeasured=list(twin.unmeasured),
        metrics=None if metrics is None else {k: metrics[k] for k in ("ssim_y", "window_density", "max_abs", "mae")
                                              if k in metrics},
        ratio=ratio, tier_before=tier_before, tier=tier, applied=tier != tier_before, reason=reason)
