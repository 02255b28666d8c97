"""What one stack does with one adapter file, and the verdict: applied as trained / partly / not at all /
mis-scaled (torch-free)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

APPLIED, PARTLY, NOT_AT_ALL, MIS_SCALED = "applied as trained", "partly", "not at all", "mis-scaled"
SCALE_TOLERANCE = 1e-3   # relative: fp32 products of bf16 factors agree far closer than this


@dataclass
class StackResult:
    """One stack's treatment of a file. `scales`: module -> the scale the stack applies / AI Toolkit's (1.0 = as
    trained), for the modules it applies. `dropped`: file keys the stack ignores."""

    stack: str
    version: str
    total: int                                  # adapter modules in the file
    applied: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    scales: dict[str, float] = field(default_factory=dict)
    error: str | None = None                    # the loader refused the file (its own message)
    where: str = ""                             # where in the stack this is decided (file:line)

    @property
    def verdict(self) -> str:
        if self.error or not self.applied:
            return NOT_AT_ALL
        if len(self.applied) < self.total or self.dropped:
            return PARTLY
        if any(abs(f - 1.0) > SCALE_TOLERANCE for f in self.scales.values()):
            return MIS_SCALED
        return APPLIED

    def factor_groups(self) -> list[tuple[float, int]]:
        """[(factor, modules)] of the applied modules' scale factors, most common first."""
        counts = Counter(round(f, 4) for f in self.scales.values())
        return counts.most_common()

    def line(self) -> str:
        """`reference-server (runcomfy-com/ai-toolkit-inference@af4aec18): mis-scaled: 20/20 modules; scale x0.5 on
        10, x1 on 10; 0 keys dropped`."""
        head = f"{self.stack} ({self.version}): {self.verdict}: {len(self.applied)}/{self.total} modules"
        if self.error:
            error = self.error if len(self.error) <= 160 else self.error[:157] + "..."
            return f"{head}; the loader refused the file: {error}"
        parts = [head]
        groups = self.factor_groups()
        if groups and not (len(groups) == 1 and abs(groups[0][0] - 1.0) <= SCALE_TOLERANCE):
            parts.append("scale vs AI Toolkit " + ", ".join(f"x{f:g} on {n}" for f, n in groups))
        if self.dropped:
            parts.append(f"{len(self.dropped)} keys dropped: " + "; ".join(
                f"{p} ({n})" for p, n in key_patterns(self.dropped)[:3]))
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"stack": self.stack, "version": self.version, "verdict": self.verdict, "modules": self.total,
                "applied": len(self.applied), "applied_modules": sorted(self.applied),
                "dropped_keys": len(self.dropped), "dropped_patterns": dict(key_patterns(self.dropped)),
                "scale_vs_aitk": {k: round(v, 6) for k, v in sorted(self.scales.items())},
                "error": self.error, "decided_in": self.where}


def key_patterns(keys: list[str]) -> list[tuple[str, int]]:
    """Keys grouped by their pattern (block numbers as N), most common first."""
    return Counter(re.sub(r"(?<=[._])\d+(?=[._])", "N", k) for k in keys).most_common()
