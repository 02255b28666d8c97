"""Case files (`cases/*.yaml`): which AI Toolkit job to check, against which inference settings, how strictly.

    name: portrait-v1                 # defaults to the file name
    job: ../output/portrait-v1        # AI Toolkit output folder (config.yaml, samples/, checkpoints)
    # or, instead of job: config: ...  (the job's config file);  lora: FILE  (one LoRA under test for every item)
    steps: latest                     # latest (default) | all | 2000 | [1000, 2000]
    base_model: /models/FLUX.2-dev    # else $PARITY_BASE_MODEL, else the job's model.name_or_path
    text_encoder: /models/Mistral-Small-3.1-24B-Instruct-2503   # else $PARITY_TEXT_ENCODER, else the base model's
    inference: preview                # preview (default) | a profile name | {profile:, request:, set: {...}}
    expect:
      min_tier: NEAR                  # gate: EXACT | NEAR | DRIFT | DIFFERENT
      ssim: 0.95                      # optional extra floors/ceilings on metrics
      mismatches: [steps, guidance]   # known differences: below the gate only through these knobs = expected
      tier: DRIFT                     # optional: the worst tier an expected difference may reach
    attribution: true                 # re-render one knob at a time for items below the gate
    budget: 90                        # extra renders diagnosis may spend on this case (default 90; --budget wins)
    tiers: {near_ssim_y: 0.995}       # optional overrides of the tier thresholds (parity.compare.tiers.Thresholds)
    preview_hardware: NVIDIA H100 80GB HBM3   # what rendered the previews; default: the training device, unknown
    noise_floor: true                 # judge irreducible-only DRIFT items against a measured noise floor
    renders: ../my-stack-renders      # optional: compare these images (named by item id, or a manifest .json)
                                      # with the previews instead of parity's renders (docs/your-own-stack.md)

Paths are resolved relative to the case file. Validation errors name the file, the key and its line.
This module does not import torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from parity import yamlsafe
from parity.errors import ConfigError
from parity.tier import DEFAULT_GATE, ERROR, meets_gate, parse_gate

_TOP_KEYS = {
    "name", "job", "config", "lora", "steps", "base_model", "text_encoder", "inference", "expect",
    "attribution", "description", "tiers", "preview_hardware", "noise_floor", "budget", "renders",
}
# Extra renders diagnosis (attribution, parameter recovery) may spend per case: a single-knob recovery on a
# representative item plus one confirming render per other item fits in ~20 (docs/parameter-recovery.md).
DEFAULT_CASE_BUDGET = 90
_EXPECT_KEYS = {"min_tier", "ssim", "ssim_y", "psnr", "mae", "max_abs", "mismatches", "tier"}
# Metric thresholds: for these, higher is better (a floor); for the others lower is better (a ceiling).
_HIGHER_IS_BETTER = {"ssim", "ssim_y", "psnr"}


@dataclass(frozen=True)
class Expectation:
    """The gate (`min_tier`, metric floors/ceilings) and the differences known in advance.

    Like pytest's xfail: an item below its gate still passes, marked *expected*, when every knob it mismatches is
    listed in `mismatches` and (if given) its tier is no worse than `tier`; a mismatch not listed, a worse tier
    or an ERROR fails it."""

    min_tier: str = DEFAULT_GATE
    thresholds: dict[str, float] = field(default_factory=dict)
    mismatches: tuple[str, ...] | None = None   # knobs expected to differ (parity.knobs)
    tier: str | None = None                     # the worst tier an expected difference may reach

    @property
    def states_expected(self) -> bool:
        return self.mismatches is not None or self.tier is not None

    def check(self, tier: str, metrics: dict[str, float]) -> list[str]:
        """Reasons this result fails the expectation (empty list = passes)."""
        reasons = []
        if not meets_gate(tier, self.min_tier):
            reasons.append(f"tier {tier} is below the gate {self.min_tier}")
        for name, limit in self.thresholds.items():
            value = metrics.get(name)
            if value is None:
                continue
            if name in _HIGHER_IS_BETTER and value < limit:
                reasons.append(f"{name} {value:.4f} < {limit}")
            elif name not in _HIGHER_IS_BETTER and value > limit:
                reasons.append(f"{name} {value:.4f} > {limit}")
        return reasons

    def expected(self, tier: str, mismatches: list[str]) -> tuple[str | None, list[str]]:
        """For an item that fails `check`: (why its failure is expected, None) or (None, what is not expected).
        The second list names what makes it a real failure (an unlisted knob, a worse tier, an ERROR)."""
        if not self.states_expected:
            return None, []
        if tier == ERROR.name:
            return None, ["an ERROR is never an expected difference"]
        new: list[str] = []
        if self.mismatches is not None:
            unlisted = [k for k in mismatches if k not in self.mismatches]
            if unlisted:
                new.append(f"unexpected mismatch: {', '.join(unlisted)} (expect.mismatches lists "
                           f"{', '.join(self.mismatches) or 'none'})")
            elif not mismatches and self.tier is None:
                new.append("below the gate with no mismatching knob (expect.mismatches explains only a listed knob)")
        if self.tier is not None and not meets_gate(tier, self.tier):
            new.append(f"tier {tier} is worse than the expected {self.tier} (expect.tier)")
        if new:
            return None, new
        what = [f"mismatches {', '.join(mismatches)}"] if mismatches else []
        what += [f"tier {tier} within expect.tier {self.tier}"] if self.tier is not None else []
        return "expected: " + "; ".join(what), []

    def judge(self, tier: str, metrics: dict[str, float], mismatches: list[str]) -> tuple[bool, str | None, list[str]]:
        """(passed, expected, fail reasons) of one result: it passes when it meets the gate and limits, or when
        its failure is an expected difference (which keeps its reasons: what the gate alone would say)."""
        reasons = self.check(tier, metrics)
        expected = None
        if reasons:
            expected, new = self.expected(tier, mismatches)
            reasons = reasons + new
        return not reasons or expected is not None, expected, reasons


@dataclass(frozen=True)
class Case:
    """One case file as loaded. Frozen: a run's choices (parity.options) reach it as a new value
    (`dataclasses.replace`), so the loaded case stays what its file says."""

    name: str
    path: Path                       # the case file
    job: Path | None = None          # AI Toolkit output folder
    config: Path | None = None       # explicit config file (instead of job)
    lora: Path | None = None         # one LoRA file under test for every item (instead of the job's checkpoints)
    steps: str | int | list[int] = "latest"
    base_model: str | None = None
    text_encoder: str | None = None
    inference: Any = "preview"       # raw value; parity.diagnose.settings interprets it
    expect: Expectation = field(default_factory=Expectation)
    attribution: bool = True
    tiers: dict[str, float] = field(default_factory=dict)  # tier threshold overrides (validated on load)
    preview_hardware: str | None = None  # device that rendered the previews (None: the training device, unknown)
    noise_floor: bool = True
    budget: int = DEFAULT_CASE_BUDGET  # extra renders diagnosis may spend on this case
    renders: Path | None = None      # external renders (folder or manifest) compared instead of parity's own
    sha256: str | None = None        # of the case file's bytes when loaded: `parity accept` refuses stale results

    @property
    def job_source(self) -> Path:
        """The path given to the job reader: the job folder, or the explicit config file."""
        return self.job if self.job is not None else self.config  # type: ignore[return-value]

    def resolve_base_model(self, job_default: str | None) -> tuple[str | None, str]:
        """(path, source): the case's base_model, else $PARITY_BASE_MODEL, else the job's model.name_or_path."""
        if self.base_model:
            return self.base_model, "case"
        if os.environ.get("PARITY_BASE_MODEL"):
            return os.environ["PARITY_BASE_MODEL"], "env PARITY_BASE_MODEL"
        return job_default, "job"

    def resolve_text_encoder(self) -> tuple[str | None, str]:
        if self.text_encoder:
            return self.text_encoder, "case"
        if os.environ.get("PARITY_TEXT_ENCODER"):
            return os.environ["PARITY_TEXT_ENCODER"], "env PARITY_TEXT_ENCODER"
        return None, "base model"


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """Map 'a.b' key paths of a composed YAML mapping to 1-based line numbers (for error messages)."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key + "."))
    return lines


# Keys older case files may carry that never did anything: refused with where the setting lives now.
_REMOVED_KEYS = {
    "device": "the render device is chosen per run (--device, --parity-device)",
    "dtype": "set the precision under test with inference: {set: {dtype: bf16}}",
    "samples": "previews are read from the job folder's samples/ (job:)",
}


def load_case(path: str | Path) -> Case:
    """Read and validate one case file. Raises ConfigError naming the file, key and line."""
    path = Path(path)
    data, lines = _read_yaml(path)
    v = _Validator(path, data, lines)
    for key in sorted(set(data) & set(_REMOVED_KEYS)):
        raise v.bad(key, f"not a case key: {_REMOVED_KEYS[key]}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise v.bad(unknown[0], f"unknown key; valid keys are {', '.join(sorted(_TOP_KEYS))}")
    job, config = v.rel_path("job"), v.rel_path("config")
    if job is None and config is None:
        raise ConfigError("needs `job:` (an AI Toolkit output folder) or `config:` (its config file)", path)
    if job is not None and config is not None:
        raise v.bad("config", "give either `job:` or `config:`, not both")
    if "preview_hardware" in data and not isinstance(data["preview_hardware"], str):
        raise v.bad("preview_hardware", "must be a string")
    return Case(
        name=v.name(), path=path.resolve(), job=job, config=config, lora=v.rel_path("lora"), steps=v.steps(),
        base_model=v.path_or_name("base_model"), text_encoder=v.path_or_name("text_encoder"),
        inference=v.inference(), expect=v.expect(), attribution=v.flag("attribution"), tiers=v.tiers(),
        preview_hardware=data.get("preview_hardware"), noise_floor=v.flag("noise_floor"), budget=v.budget(),
        renders=v.rel_path("renders"), sha256=case_file_sha256(path),
    )


def case_file_sha256(path: Path) -> str:
    """The case file's fingerprint recorded with every item (`case_sha256`): a results file says which version
    of its case it judged, so `parity accept` never writes a stale result into a case edited since."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The case file's mapping and the line of every key path ('a.b')."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("case file not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read case file: {e}", path) from None
    try:
        node = yamlsafe.compose(text, path, loader=yaml.SafeLoader, duplicates="error")
        data = yamlsafe.construct(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"malformed YAML{where}: {problem}", path) from None
    if data is None:
        raise ConfigError("case file is empty", path)
    if not isinstance(data, dict):
        raise ConfigError(f"a case file must be a mapping of keys, got {type(data).__name__}", path)
    return data, _key_lines(node) if node is not None else {}


class _Validator:
    """Reads one value of a case file each; errors name the file, the key and its line."""

    def __init__(self, path: Path, data: dict[str, Any], lines: dict[str, int]):
        self.path, self.data, self.lines, self.base = path, data, lines, path.parent

    def bad(self, key: str, message: str) -> ConfigError:
        line = self.lines.get(key)
        return ConfigError(f"{key}{f' (line {line})' if line else ''}: {message}", self.path)

    def rel_path(self, key: str) -> Path | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.bad(key, "must be a path")
        return (self.base / os.path.expanduser(value)).resolve()

    def path_or_name(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.bad(key, "must be a path")
        candidate = self.base / os.path.expanduser(value)
        # A relative path that exists is taken relative to the case file; otherwise keep it (e.g. a hub id
        # already in the local cache).
        return str(candidate.resolve()) if candidate.exists() or value.startswith(".") else value

    def name(self) -> str:
        name = self.data.get("name", self.path.stem)
        if not isinstance(name, str) or not name.strip() or any(c in name for c in "[]/\\\n"):
            raise self.bad("name", "must be a non-empty string without [ ] / \\ or newlines")
        return name.strip()

    def steps(self) -> str | int | list[int]:
        steps = self.data.get("steps", "latest")
        if isinstance(steps, bool) or not (
            steps in ("latest", "all")
            or isinstance(steps, int)
            or (isinstance(steps, list) and steps and all(isinstance(s, int) and not isinstance(s, bool)
                                                          for s in steps))
        ):
            raise self.bad("steps", f"must be latest, all, a step number or a list of step numbers, got {steps!r}")
        return steps

    def budget(self) -> int:
        value = self.data.get("budget", DEFAULT_CASE_BUDGET)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
            raise self.bad("budget", f"must be a whole number of renders from 0 to 10000, got {value!r}")
        return value

    def flag(self, key: str) -> bool:
        value = self.data.get(key, True)
        if not isinstance(value, bool):
            raise self.bad(key, "must be true or false")
        return value

    def expect(self) -> Expectation:
        raw = self.data.get("expect", {}) or {}
        if not isinstance(raw, dict):
            raise self.bad("expect", "must be a mapping (min_tier, metric thresholds, mismatches, tier)")
        for key in raw:
            if key not in _EXPECT_KEYS:
                raise self.bad(f"expect.{key}", f"unknown key; valid keys are {', '.join(sorted(_EXPECT_KEYS))}")
        min_tier = self._tier("min_tier", raw.get("min_tier", DEFAULT_GATE))
        tier = self._tier("tier", raw["tier"]) if raw.get("tier") is not None else None
        thresholds = {}
        for key, value in raw.items():
            if key in ("min_tier", "tier", "mismatches"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.bad(f"expect.{key}", f"must be a number, got {value!r}")
            thresholds[key] = float(value)
        return Expectation(min_tier, thresholds, mismatches=self._knobs(raw), tier=tier)

    def _tier(self, key: str, value: Any) -> str:
        try:
            return parse_gate(value)
        except ValueError as e:
            raise self.bad(f"expect.{key}", str(e)) from None

    def _knobs(self, raw: dict[str, Any]) -> tuple[str, ...] | None:
        """expect.mismatches: a list of knob names (parity.knobs), or None when absent."""
        from parity.knobs import knob_names

        names = knob_names()
        if "mismatches" not in raw:
            return None
        value = raw["mismatches"]
        if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
            raise self.bad("expect.mismatches", f"must be a list of knob names, got {value!r}")
        unknown = [k for k in value if k not in names]
        if unknown:
            raise self.bad("expect.mismatches", f"unknown knob {unknown[0]!r}; knobs are {', '.join(names)}")
        return tuple(value)

    def inference(self) -> Any:
        inference = self.data.get("inference", "preview")
        if not isinstance(inference, (str, dict)):
            raise self.bad("inference", "must be preview, a profile name, or a mapping {profile, request, set}")
        if isinstance(inference, dict) and isinstance(inference.get("request"), str):
            inference = dict(inference, request=str((self.base / inference["request"]).resolve()))
        return inference

    def tiers(self) -> dict[str, float]:
        tiers = self.data.get("tiers") or {}
        if not isinstance(tiers, dict):
            raise self.bad("tiers", "must be a mapping of tier thresholds, e.g. {near_ssim_y: 0.995}")
        for key in tiers:
            from parity.compare.tiers import Thresholds  # lazy: the comparison package loads numpy and Pillow

            try:
                Thresholds.from_mapping({key: tiers[key]})
            except ConfigError as e:
                raise self.bad(f"tiers.{key}", e.message) from None
        return dict(tiers)


def check_unique_names(cases: list[Case]) -> None:
    """Two case files with one name would plan the same item ids: one case's results (or its errors) would hide
    the other's (issue 35). A usage error naming both files, before anything is rendered."""
    first: dict[str, Path] = {}
    for c in cases:
        other = first.setdefault(c.name, Path(c.path))
        if other != Path(c.path):
            raise ConfigError(duplicate_name(c.name, other, c.path))


def duplicate_name(name: str, first: Path, second: Path) -> str:
    return (f"two case files are named {name!r}: {first} and {second} (item ids start with the case name; give "
            "each case its own name:)")


def find_cases(paths: list[str | Path]) -> list[Path]:
    """Case files under the given files/folders (sorted, *.yaml / *.yml; a file named twice counts once). An empty
    or missing folder is an error."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
            if not files:
                raise ConfigError("no case files (*.yaml) in this folder", p)
            found.extend(files)
        elif p.is_file():
            found.append(p)
        else:
            raise ConfigError("no such case file or folder", p)
    seen: set[Path] = set()
    return [f for f in found if not (f.resolve() in seen or seen.add(f.resolve()))]
