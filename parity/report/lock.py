"""An exclusive lock on a run folder: two runs writing one --out would interleave their journals.

`fcntl.flock` on `<run dir>/.parity.lock`: the kernel releases it when the holder's process dies (SIGKILL
included), so a stale lock never blocks a `--resume`. The file holds the holder's pid, host and start time, for
the refusal message only (the lock itself is the flock, not the file's existence).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from parity.errors import ParityError

LOCK_NAME = ".parity.lock"


class RunLock:
    """Held from `acquire()` until `release()` (or the process ends)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, started: str) -> "RunLock":
        """Take the lock or raise ParityError naming the holder."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ParityError(f"another parity run ({holder}) is writing to this folder; wait for it to finish "
                              f"or choose another --out", self.path.parent) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return "".join(c for c in text if c.isprintable()) or "holder unknown"
