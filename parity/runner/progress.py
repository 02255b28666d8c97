"""Progress of a run that works both on a terminal and in CI.

Not a terminal (a CI log, `2> log`): one line per finished item, `[3/12] id  DRIFT (expected)  elapsed 41s,
ETA 2m03s`, and a `parity: ...` line when a model loads or an item starts rendering or attributing, each flushed at
once, so a long run is never silent. A terminal: one live line, rewritten in place, with
what is running now and the same counts and ETA. `--quiet`: nothing. The ETA is the mean time per finished item
so far times the items left (items render one after another, so it is honest after the first few).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

from parity.record import ItemRecord


def duration_text(seconds: float) -> str:
    """41 -> "41s", 123 -> "2m03s", 3725 -> "1h02m"."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta_seconds(done: int, total: int, elapsed: float) -> float | None:
    """Time left at the mean pace so far; None before the first item finishes."""
    if done <= 0:
        return None
    return elapsed / done * max(total - done, 0)


def verdict_text(rec: ItemRecord) -> str:
    """The tier with the verdict: "NEAR", "DRIFT (expected)", "DRIFT FAIL", "ERROR FAIL" (parity.report.summary)."""
    from parity.report.summary import verdict

    return verdict({"tier": rec.tier, "passed": rec.passed, "expected": rec.expected}).status


def counts_text(done: int, total: int, elapsed: float) -> str:
    eta = eta_seconds(done, total, elapsed)
    return f"elapsed {duration_text(elapsed)}, ETA {'?' if eta is None else duration_text(eta)}"


@dataclass
class Progress:
    """`note(msg)` for what is running now (live line only), `finished(record)` once per finished item."""

    total: int = 0
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    live: bool = False                   # a terminal: rewrite one line in place
    quiet: bool = False
    clock: Callable[[], float] = time.monotonic
    done: int = 0
    started: float = field(default=0.0)

    @classmethod
    def for_stderr(cls, quiet: bool) -> "Progress":
        return cls(stream=sys.stderr, live=sys.stderr.isatty(), quiet=quiet)

    def start(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, self.clock()

    def note(self, msg: str) -> None:
        """What starts now (loading a model, rendering, attributing). In a log it gets its own `parity:` line:
        items below their gate finish only after their follow-up re-renders, so without these a drifting run
        would print nothing until the end of its first pass."""
        if self.quiet:
            return
        text = f"{msg}  ({self.done}/{self.total} done, {counts_text(self.done, self.total, self.clock() - self.started)})"
        if self.live:
            self._write(f"\r\033[K{text}", end="")
        else:
            self._write(f"parity: {text}")

    def finished(self, rec: ItemRecord) -> None:
        self.done += 1
        if self.quiet:
            return
        line = (f"[{self.done}/{self.total}] {rec.id}  {verdict_text(rec)}  "
                f"{counts_text(self.done, self.total, self.clock() - self.started)}")
        self._write(f"\r\033[K{line}" if self.live else line)

    def close(self) -> None:
        if self.live and not self.quiet:
            self._write("", end="\r\033[K")

    def _write(self, text: str, end: str = "\n") -> None:
        print(text, end=end, file=self.stream, flush=True)
