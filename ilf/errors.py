"""Exceptions with messages that say what is wrong and what is allowed.

Every user error is a `ValueError` (or a subclass) so callers can catch one type; missing
weights or data raise `MissingAssetError`, a `FileNotFoundError` whose message is one paragraph
naming the item, where it was looked for and the command that fetches it.
"""
from __future__ import annotations

from typing import Any, Iterable


class ILFConfigError(ValueError):
    """A configuration field has a value outside what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str | Iterable[Any]):
        if not isinstance(allowed, str):
            allowed = "one of " + ", ".join(repr(a) for a in allowed)
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is not allowed: expected {allowed}")


class UnsupportedModelError(ValueError):
    """The target is not a model class (or pipeline) that ILF knows how to attach to."""


class AlreadyAttachedError(ValueError):
    """A second method was applied to a model that already carries one."""


class CheckpointError(ValueError):
    """A checkpoint is corrupted or does not match the model it is loaded into."""


class MissingAssetError(FileNotFoundError):
    """Weights, prompts or reference data are not in the local cache (offline compute nodes)."""

    def __init__(self, item: str, location: str, fetch_command: str, detail: str = ""):
        self.item, self.location, self.fetch_command = item, location, fetch_command
        msg = (
            f"{item} is not available locally (looked in {location}). "
            f"This machine does not download anything at run time: on a machine with internet access run "
            f"`{fetch_command}`, which stores it in the ILF cache (set ILF_CACHE, default ~/.cache/ilf; "
            f"Hugging Face weights go to ILF_CACHE/hf), then copy or mount that directory on this machine "
            f"and point ILF_CACHE at it."
        )
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class ConfigFileError(ILFConfigError):
    """A config file (a workflow config or a training YAML) is not a valid one.

    The message is one line: the file, what is wrong, and where (line, column) when the place is known,
    e.g. `configs/x.yaml: rows={'a': 1} is not allowed: expected a list (line 3, column 1)`.
    """

    def __init__(self, path: Any, what: str, line: int | None = None, column: int | None = None,
                 field: str = "config", value: Any = None, allowed: str = ""):
        where = f" (line {line}, column {column})" if line is not None else ""
        ValueError.__init__(self, f"{path}: {what}{where}")
        self.path, self.what, self.line, self.column = str(path), what, line, column
        self.field, self.value, self.allowed = field, value, allowed
