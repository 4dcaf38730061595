"""Errors that reach the user as one clear line.

Every error mmtune raises on purpose derives from :class:`MmtuneError`; the CLI
prints it without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MmtuneError(Exception):
    """Base class: an expected failure with a message meant for the user."""


class ConfigError(MmtuneError):
    """A recipe is wrong: unknown key, wrong type, impossible combination."""


class DataError(MmtuneError):
    """Input data is wrong: missing file, malformed row, bad field.

    The message names the file, the row (1-based line for JSONL) and the field.
    """

    def __init__(self, message: str, *, reason: str = "bad sample") -> None:
        super().__init__(message)
        self.reason = reason


class ModelError(MmtuneError):
    """A model or tokenizer cannot be loaded or used as asked."""


class TrainingError(MmtuneError):
    """The training loop had to stop (non-finite loss, failed resume...)."""
