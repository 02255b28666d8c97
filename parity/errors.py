"""The project's own errors: one line that names the file and the problem.

Every error a user can cause (bad config, missing file, wrong model) is a `ParityError`. Entry points print
`str(err)` without a traceback unless `--verbose`, and exit with code 2 (bad input).
"""

from __future__ import annotations

from pathlib import Path


class ParityError(Exception):
    """A user-facing error. `path` is the file at fault (if any); the message says what is wrong with it."""

    def __init__(self, message: str, path: str | Path | None = None, *, hint: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(ParityError):
    """A training config, case file or request that cannot be read or is not a FLUX.2 job."""


class InputFileError(ParityError):
    """An image, checkpoint or weights file that is missing, truncated, unsafe or of the wrong kind."""


class ModelError(ParityError):
    """Base-model or LoRA weights that do not fit the model (missing component, unmatched keys, shapes)."""
