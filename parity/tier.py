"""Verdict tiers, declared once, best to worst: the ordered registry every stage asks (comparison, gates, case
files, the runner's follow-ups, diagnosis, every report output and the HTML page's colours). Torch-free.

Adding a tier is one `Tier(...)` in `TIERS` below, at its rank. A tier ranked between NEAR and DRIFT that declares
a `band` is chosen by `parity.compare.tiers.decide_tier` for a comparison that misses NEAR's calibrated floor but
lies within the band (the first such tier, best first); DRIFT takes the rest.

Where the thresholds live: the built-in tiers' thresholds stay in `parity.compare.tiers.Thresholds`, because they
are one calibrated decision, not a number per tier (NEAR's floor follows the JPEG ceiling, DIFFERENT is checked
before NEAR, a resampled comparison is at best DRIFT), a case file overrides them (`tiers:`) and results.json
records them per item. A graded tier's band is only its own entry rule, so it is declared with the tier.

results.json, case files and the command line keep the plain names (`"NEAR"`). Stages compare names through
the tiers here (`tier == ERROR.name`, `meets_gate`, `explains`), never through a string literal of their own;
they read `TIERS` through the functions below at call time, so a test can register a tier for one test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping


_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}\Z")  # goes into the report's <style>: nothing but a hex colour


@dataclass(frozen=True)
class Band:
    """A graded tier's entry rule: the comparison's `metric` (a key of its metrics, higher is better) is at least
    `at_least`."""

    metric: str
    at_least: float

    def admits(self, metrics: Mapping[str, float]) -> bool:
        value = metrics.get(self.metric)
        return isinstance(value, (int, float)) and value >= self.at_least

    def reason(self, metrics: Mapping[str, float]) -> str:
        return f"{self.metric} {float(metrics[self.metric]):.4f} >= {self.at_least}"


@dataclass(frozen=True)
class Tier:
    """One verdict tier. `explains`: an item in it reproduces its preview (a re-render that reaches it explains the
    difference; an external render in it needs no explanation). `gate`: it may be a gate (ERROR may not: it never
    meets one). `colour`: the report's colour for it."""

    name: str
    colour: str
    meaning: str
    explains: bool = False
    gate: bool = True
    band: Band | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"tier name {self.name!r}: upper-case letters, digits and _ only")
        if not _COLOUR.match(self.colour):
            raise ValueError(f"tier {self.name}: colour {self.colour!r} is not a #rrggbb colour")

    def view(self) -> dict[str, object]:
        """What the HTML page needs of a tier (its page data and generated style)."""
        return {"name": self.name, "colour": self.colour, "meaning": self.meaning, "explains": self.explains}


EXACT = Tier("EXACT", "#116329", "encode-matched pixels identical or within one level", explains=True)
NEAR = Tier("NEAR", "#2da44e", "below the JPEG-relative noise floor", explains=True)
DRIFT = Tier("DRIFT", "#bf8700", "same composition, visibly different")
DIFFERENT = Tier("DIFFERENT", "#cf222e", "another picture")
ERROR = Tier("ERROR", "#8250df", "could not compare; the reason is given", gate=False)

# Best to worst. A case's gate is a minimum tier.
TIERS: tuple[Tier, ...] = (EXACT, NEAR, DRIFT, DIFFERENT, ERROR)

# The gate of a case that names none, of `--gate` in `parity compare` and of the synthetic runs.
DEFAULT_GATE: str = NEAR.name


def all_tiers() -> tuple[Tier, ...]:
    return TIERS


def tier_names() -> tuple[str, ...]:
    return tuple(t.name for t in TIERS)


def gate_names() -> tuple[str, ...]:
    """The tiers a gate may name (all but ERROR)."""
    return tuple(t.name for t in TIERS if t.gate)


def explaining_tiers() -> tuple[str, ...]:
    """The tiers in which a render explains its preview (EXACT, NEAR)."""
    return tuple(t.name for t in TIERS if t.explains)


def get_tier(name: str) -> Tier:
    """The tier called `name` (any case); ValueError naming the known tiers otherwise."""
    key = str(name).upper()
    for t in TIERS:
        if t.name == key:
            return t
    raise ValueError(f"unknown tier {name!r}; expected one of {', '.join(tier_names())}")


def tier_rank(name: str) -> int:
    """0 for the best tier (EXACT) ... len(TIERS) - 1 for ERROR; ValueError on an unknown name."""
    return TIERS.index(get_tier(name))


def meets_gate(name: str, minimum: str) -> bool:
    """True when tier `name` is at least as good as the gate `minimum` (ERROR never meets a gate)."""
    return get_tier(name).gate and tier_rank(name) <= tier_rank(minimum)


def explains(name: str | None) -> bool:
    """Does a render in tier `name` explain its preview? (False for None or an unknown name.)"""
    return name is not None and any(t.name == name and t.explains for t in TIERS)


def worst_tier(names: Iterable[str]) -> str:
    """The worst of the given tier names."""
    return max(names, key=tier_rank)


def graded_between(better: Tier, worse: Tier) -> tuple[Tier, ...]:
    """The tiers strictly between `better` and `worse` that declare a band, best first."""
    return tuple(t for t in TIERS[TIERS.index(better) + 1:TIERS.index(worse)] if t.band is not None)


def parse_gate(value: object) -> str:
    """A gate as written in a case file or on the command line (any case): the tier's name. ValueError saying
    "must be one of ..., got ..." for anything that is not a gate tier; the caller names the file or option."""
    tier = next((t for t in TIERS if t.name == str(value).upper() and t.gate), None)
    if tier is None:
        raise ValueError(f"must be one of {', '.join(gate_names())}, got {value!r}")
    return tier.name
