"""Resolve AI Toolkit's `sample` block into the exact settings of every preview.

Follows SampleConfig/SampleItem (toolkit/config_modules.py L44-119), BaseSDTrainProcess.sample
(jobs/process/BaseSDTrainProcess.py L282-364), GenerateImageConfig (config_modules.py L1152-1217) and the
FLUX.2 floor (extensions_built_in/diffusion_models/flux2/flux2_model.py L295-300). Pure data, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from parity import knobs
from parity.errors import ConfigError
from parity.job.flags import ParsedPrompt, inject_trigger, parse_prompt_flags
from parity.job.sizes import FLUX2_DIVISOR

# SampleConfig code defaults (config_modules.py L80-95) of the keys that are no render setting; the settings' own
# (width, height, seed, guidance_scale, sample_steps, network_multiplier, neg) are declared in the knob registry
# (parity.knobs, `Setting.config_key` / `default`). These differ from the UI defaults
# (ui/src/helpers/defaultSamples.ts: 1024 px, seed 42, walk_seed true, guidance 4, 30 steps).
_BLOCK_DEFAULTS: dict[str, Any] = {
    "sampler": "ddpm",          # ignored by FLUX.2 (reference §A.2)
    "sample_every": 100,
    "sample_start_step": 0,
    "walk_seed": False,
    "guidance_rescale": 0.0,
    "format": "jpg",
    "num_frames": 1,
    "fps": 16,
}


def sample_defaults() -> dict[str, Any]:
    """Every key of a sample block with its code default: the block's own and the registry's settings."""
    return {**_BLOCK_DEFAULTS, **knobs.block_defaults(knobs.SAMPLE)}


# Keys a `samples` entry may override (SampleItem, config_modules.py L44-77); others come from the block.
ITEM_KEYS = ("width", "height", "neg", "guidance_scale", "sample_steps", "network_multiplier", "num_frames", "fps")

# torch.manual_seed accepts [-2**63, 2**64-1]; anything else raises inside AI Toolkit.
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1


@dataclass
class SampleBlock:
    """One parsed SampleConfig (`sample:` or `first_sample:`), values with their source."""

    values: dict[str, Any]
    sources: dict[str, str]
    items: list[dict[str, Any]]          # raw `samples` entries (legacy `prompts` converted to {prompt: ...})
    items_from: str                      # "samples" | "prompts" | "default"
    ext: str

    def get(self, key: str) -> Any:
        return self.values[key]


@dataclass
class ResolvedSample:
    """The settings one preview was rendered with, AI Toolkit semantics. width/height are effective (after
    the floors); requested_* are what the config/flags asked for before any floor."""

    index: int
    group: str                   # "sample" or "first_sample"
    raw_prompt: str              # prompt as written in the config (after config-level [name] replacement)
    prompt: str                  # trigger-substituted, flags removed, stripped
    requested_width: int
    requested_height: int
    width: int
    height: int
    seed: int
    seed_reproducible: bool      # False: AI Toolkit drew a random seed (seed -1 before flags)
    sample_steps: int
    guidance_scale: float
    network_multiplier: float
    neg: Any
    sources: dict[str, str] = field(default_factory=dict)
    # reference images as written (paths not yet resolved), in the order AI Toolkit passes them:
    # ctrl_img (else ctrl_img_1), ctrl_img_2, ctrl_img_3 (flux2_model.py L302-319)
    control_images: tuple[str, ...] = ()
    # registry-only settings (parity.knobs) the block sets, as (key, value) pairs: RenderSpec.extra
    extra: tuple[tuple[str, Any], ...] = ()
    flags: tuple[tuple[str, str], ...] = ()
    ignored_flags: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


def _int(value: Any, key: str, where: str, path: str | None) -> int:
    # bool is an int subclass in Python; a YAML `true` as a size or step count is a config mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}{key} must be an integer, got {value!r}", path)
    return value


def _size(value: Any, key: str, where: str, path: str | None) -> int | float:
    """width/height: an int, or a float that AI Toolkit floors like any number (`max(64, v - v % 8)`,
    config_modules.py L1216-1217; 1000.5 -> 1000.0 -> 992 at render time). Anything else is a config mistake."""
    if isinstance(value, float) and math.isfinite(value):
        return int(value) if value.is_integer() else value
    return _int(value, key, where, path)


def _num(value: Any, key: str, where: str, path: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}{key} must be a number, got {value!r}", path)
    return float(value)


def parse_sample_block(raw: Any, *, block_name: str = "sample", path: str | None = None) -> SampleBlock:
    """Apply SampleConfig's code defaults to one raw block. `first_sample` is a full SampleConfig of its own:
    it does NOT inherit from `sample` (BaseSDTrainProcess.py L122-125)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"process[0].{block_name} must be a mapping, got {type(raw).__name__}", path)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, default in sample_defaults().items():
        if key in raw:
            values[key], sources[key] = raw[key], "block"
        else:
            values[key], sources[key] = default, "default"
    ext = values["format"]
    if not isinstance(ext, str) or not ext:
        raise ConfigError(f"process[0].{block_name}.format must be a string, got {ext!r}", path)
    # num_frames > 1 forces animated webp (config_modules.py L100-102)
    if isinstance(values["num_frames"], int) and values["num_frames"] > 1 and ext != "webp":
        ext = "webp"
    # `samples` wins over legacy `prompts` when both are given: kwargs.get('samples', built_from_prompts)
    # (config_modules.py L106-113).
    if "samples" in raw:
        items, items_from = raw["samples"], "samples"
    else:
        prompts = raw.get("prompts", [])
        if not isinstance(prompts, list):
            raise ConfigError(f"process[0].{block_name}.prompts must be a list, got {type(prompts).__name__}", path)
        items, items_from = [{"prompt": p} for p in prompts], ("prompts" if "prompts" in raw else "default")
    if not isinstance(items, list):
        raise ConfigError(f"process[0].{block_name}.samples must be a list, got {type(items).__name__}", path)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"process[0].{block_name}.samples[{i}] must be a mapping, got {item!r}", path)
    return SampleBlock(values=values, sources=sources, items=list(items), items_from=items_from, ext=ext)


CTRL_KEYS = ("ctrl_img", "ctrl_img_1", "ctrl_img_2", "ctrl_img_3")
# base_model.py L556-590 treats these as control videos; FLUX.2's generate_single_image does not
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".webm", ".mkv", ".wmv", ".m4v", ".flv")


def control_images(item: dict, flag_ctrl: str | None, where: str, path: str | None) -> tuple[str, ...]:
    """The reference images of one sample, in AI Toolkit's order. SampleItem reads ctrl_img* from the item only
    (no block-level value) and `ctrl_img_1` defaults to `ctrl_img` (config_modules.py L60-65); a `--ctrl_img`
    flag replaces ctrl_img only (L1452-1453); Flux2Model.generate_single_image then takes ctrl_img if set, else
    ctrl_img_1, then ctrl_img_2 and ctrl_img_3 (flux2_model.py L302-319)."""
    vals = {}
    for key in CTRL_KEYS:
        v = item.get(key)
        if v is not None and not isinstance(v, str):
            raise ConfigError(f"{where}{key} must be an image path, got {v!r}", path)
        vals[key] = v or None  # "" is falsy in the UI's form; AI Toolkit would fail opening it
    ctrl = flag_ctrl if flag_ctrl is not None else vals["ctrl_img"]
    first = ctrl if ctrl is not None else (vals["ctrl_img_1"] or vals["ctrl_img"])
    out = tuple(p for p in (first, vals["ctrl_img_2"], vals["ctrl_img_3"]) if p)
    for p in out:
        if p.lower().endswith(VIDEO_EXTS):  # FLUX.2 opens every control path with PIL: no preview was rendered
            raise ConfigError(f"{where}control video {p!r}: AI Toolkit's FLUX.2 sample path opens reference images "
                              "with PIL (flux2_model.py L302-319) and fails on a video", path)
    return out


def floor_size(requested: int | float) -> tuple[int, list[str]]:
    """AI Toolkit's two size floors: `max(64, v - v % 8)` (config_modules.py L1216-1217, Python modulo, so a
    negative value also ends at 64), then FLUX.2's `v // 16 * 16` at render time (flux2_model.py L295-300).
    57 -> 56 -> 64 (minimum); 72 -> 72 -> 64; 1000 -> 1000 -> 992."""
    steps = []
    v8 = max(64, requested - requested % 8)
    if v8 != requested:
        steps.append(f"{requested:g}->{v8:g} (floor 8, min 64)")
    v16 = v8 // FLUX2_DIVISOR * FLUX2_DIVISOR
    if v16 != v8:
        steps.append(f"{v8:g}->{v16:g} (FLUX.2 floor 16)")
    return int(v16), steps


def resolve_samples(
    block: SampleBlock,
    *,
    trigger_word: str | None,
    group: str = "sample",
    path: str | None = None,
) -> list[ResolvedSample]:
    """Every preview of one sample() call, in prompt-index order, exactly as AI Toolkit builds them."""
    where_block = "process[0].first_sample" if group == "first_sample" else "process[0].sample"
    items = block.items
    # SampleConfig.prompts drops entries whose prompt is None, but sample() then reads samples[i] by the
    # FILTERED position (config_modules.py L116-119 vs BaseSDTrainProcess.py L300, L335): a prompt-less
    # entry shifts every later prompt onto the previous entry's settings. Reproduced as is.
    prompts = [it.get("prompt") for it in items if it.get("prompt") is not None]
    misaligned = len(prompts) != len(items)
    seeds = _SeedWalk(block, f"{where_block}.", path)
    extra, extra_sources = _registry_settings(block, path)
    out: list[ResolvedSample] = []
    for i, raw_prompt in enumerate(prompts):
        where = f"{where_block}.samples[{i}]: "
        item = items[i]
        notes: list[str] = []
        if misaligned and item.get("prompt") != raw_prompt:
            notes.append(f"settings taken from samples[{i}] (a prompt-less entry shifts prompts; AI Toolkit quirk)")
        seed, seed_src = seeds.next(i, item, where)
        prompt = inject_trigger(raw_prompt, trigger_word, where=where, path=path) if isinstance(raw_prompt, str) \
            else raw_prompt
        values, sources = _item_values(block, item)
        nm = _multiplier(values["network_multiplier"], notes)
        parsed = parse_prompt_flags(prompt, where=where, path=path)
        for name, value in parsed.values.items():
            values[name], sources[name] = value, "flag"
        if "seed" in parsed.values:  # a flag seed is per prompt; it does not change the walk
            seed, seed_src = parsed.values["seed"], "flag"
        if "network_multiplier" in parsed.values:
            nm = parsed.values["network_multiplier"]
        draft = _Draft(i, raw_prompt, item, parsed, values, sources, seed, seed_src, nm, notes, where)
        resolved = _resolved(draft, group, block.items_from, path)
        resolved.extra = extra
        resolved.sources.update(extra_sources)
        out.append(resolved)
    return out


def _registry_settings(block: SampleBlock, path: str | None) -> tuple[tuple[tuple[str, Any], ...], dict[str, str]]:
    """The registry-only settings (parity.knobs) the block sets, typed and within range, and their sources."""
    spec_extra = {s.key for s in knobs.extra_settings()}
    values, sources = [], {}
    for s in knobs.config_settings(knobs.SAMPLE):
        if s.key in spec_extra and s.config_block is not None:
            name = s.config_block[1]
            sources[s.key] = block.sources[name]
            values.append((s.key, s.parse(block.values[name], path) if sources[s.key] == "block" else s.default))
    return tuple(sorted(values)), sources


@dataclass
class _Draft:
    """One preview's values merged from its entry, the block and its prompt flags, not yet checked or floored."""

    index: int
    raw_prompt: Any
    item: dict[str, Any]         # the `samples` entry its settings come from
    parsed: ParsedPrompt         # the prompt without its flags, the flag values
    values: dict[str, Any]
    sources: dict[str, str]
    seed: int
    seed_src: str
    multiplier: Any
    notes: list[str]
    where: str                   # "process[0].sample.samples[i]: " for messages


class _SeedWalk:
    """The seed of each prompt, in order: the block's `seed`, plus the index with walk_seed
    (BaseSDTrainProcess.py L300-302); an item's own seed replaces it and, walk_seed off, stays for every later
    prompt (L335-337). Prompt flags are applied after, per prompt (they do not change the walk)."""

    def __init__(self, block: SampleBlock, where: str, path: str | None):
        self.start = _int(block.get("seed"), "seed", where, path)
        self.walk = bool(block.get("walk_seed"))
        self.current, self.source = self.start, block.sources["seed"]
        self.path = path

    def next(self, i: int, item: dict[str, Any], where: str) -> tuple[int, str]:
        """(seed, source) of prompt i, whose settings entry is `item`."""
        if self.walk:
            self.current, self.source = self.start + i, "walk"
        elif self.source == "item":
            # walk_seed off: an earlier item's seed stays in `current` for every later prompt
            self.source = "carry"
        if item.get("seed") is not None:
            self.current, self.source = _int(item["seed"], "seed", where, self.path), "item"
        return self.current, self.source


def _item_values(block: SampleBlock, item: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, sources) of the keys a `samples` entry may override: the entry's own, else the block's (which
    is the code default when the block does not set it)."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in ITEM_KEYS:
        if key in item:
            values[key], sources[key] = item[key], "item"
        else:
            values[key], sources[key] = block.get(key), block.sources[key]
    return values, sources


def _multiplier(nm: Any, notes: list[str]) -> Any:
    """network_multiplier strings are float()-ed; an unparsable one becomes 1.0 with a printed warning
    (SampleItem, config_modules.py L67-73)."""
    if isinstance(nm, str):
        try:
            return float(nm)
        except ValueError:
            notes.append(f"network_multiplier {nm!r} is not a number; AI Toolkit uses 1.0")
            return 1.0
    return nm


def _resolved(d: _Draft, group: str, items_from: str, path: str | None) -> ResolvedSample:
    """One preview's settings from its draft: type-checked, floored, within limits, with notes and sources."""
    where, values, sources, notes = d.where, d.values, d.sources, d.notes
    # seed -1 -> random.randint(0, 2**32-1) in GenerateImageConfig.__init__ (config_modules.py L1165-1167),
    # which runs BEFORE the prompt flags are parsed (L1192): a flag can still replace the random seed,
    # and "--seed -1" itself is kept as -1 (torch.manual_seed(-1) is valid and deterministic).
    seed_reproducible = d.seed_src == "flag" or d.seed != -1
    req_w = _size(values["width"], "width", where, path)
    req_h = _size(values["height"], "height", where, path)
    steps = _int(values["sample_steps"], "sample_steps", where, path)
    guidance = _num(values["guidance_scale"], "guidance_scale", where, path)
    nm = _num(d.multiplier, "network_multiplier", where, path)
    if not (_SEED_MIN <= d.seed <= _SEED_MAX):
        raise ConfigError(f"{where}seed {d.seed} is outside torch.manual_seed's range", path)
    width, w_notes = floor_size(req_w)
    height, h_notes = floor_size(req_h)
    bad = knobs.range_problem({"width": width, "height": height, "sample_steps": steps, "guidance_scale": guidance,
                               "network_multiplier": nm})
    if bad:
        raise ConfigError(f"{where}{bad}", path)
    sources["width"] = "floor" if w_notes else sources["width"]
    sources["height"] = "floor" if h_notes else sources["height"]
    notes += [f"width {n}" for n in w_notes] + [f"height {n}" for n in h_notes]
    if not seed_reproducible:
        notes.append("seed -1: AI Toolkit drew a random seed that was not recorded; not reproducible")
    if d.parsed.ignored:
        notes.append("unknown flags ignored: " + ", ".join(f"--{f}" for f in d.parsed.ignored))
    return ResolvedSample(
        index=d.index, group=group, raw_prompt=d.raw_prompt, prompt=d.parsed.prompt,
        requested_width=req_w, requested_height=req_h, width=width, height=height,
        seed=d.seed, seed_reproducible=seed_reproducible, sample_steps=steps, guidance_scale=guidance,
        network_multiplier=nm, neg=values.get("negative_prompt", values["neg"]),
        control_images=control_images(d.item, d.parsed.values.get("ctrl_img"), where, path),
        sources=_sample_sources(sources, d.seed_src, d.item, d.parsed, items_from),
        flags=d.parsed.flags, ignored_flags=d.parsed.ignored, notes=notes,
    )


def _sample_sources(sources: dict[str, str], seed_src: str, item: dict[str, Any], parsed: ParsedPrompt,
                    items_from: str) -> dict[str, str]:
    """Where each of the preview's values came from (code default, block, item, flag, floor, walk/carry)."""
    ctrl_given = any(item.get(k) for k in CTRL_KEYS) or "ctrl_img" in parsed.values
    return {
        "prompt": "item" if items_from == "samples" else "block",
        "width": sources["width"],
        "height": sources["height"],
        "seed": seed_src,
        "sample_steps": sources["sample_steps"],
        "guidance_scale": sources["guidance_scale"],
        "network_multiplier": sources["network_multiplier"],
        "negative_prompt": sources.get("negative_prompt", sources["neg"]),
        "control_images": ("flag" if "ctrl_img" in parsed.values else "item") if ctrl_given else "default",
    }
