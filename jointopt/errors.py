"""One error tree for everything jointopt reports to its users.

Every error names *what* is wrong (the field, file and line, or parameter), the *value*
that was given, and the *fix*. The CLI prints ``str(error)`` and exits without a
traceback; library callers can catch :class:`JointoptError` or one of its subclasses.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "JointoptError",
    "ConfigError",
    "DataError",
    "TemplateError",
    "BackendError",
    "StrategyError",
    "ModelError",
    "relocate",
]

_MISSING = object()


class JointoptError(Exception):
    """Base class of every error jointopt raises on purpose.

    Args:
        message: what rule was broken, in one sentence.
        where: the field path, ``file:line`` or parameter the problem is in.
        value: the offending value (shown with ``repr``); omit when there is none.
        fix: what the user should do about it.
    """

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        value: Any = _MISSING,
        fix: str | None = None,
    ) -> None:
        self.message = message
        self.where = where
        self.value = None if value is _MISSING else value
        self.has_value = value is not _MISSING
        self.fix = fix
        super().__init__(self._render())

    def _render(self) -> str:
        head = f"{self.where}: {self.message}" if self.where else self.message
        if self.has_value:
            shown = repr(self.value)
            if len(shown) > 200:
                shown = shown[:197] + "..."
            head += f" (got {shown})"
        if self.fix:
            head += f"\n  fix: {self.fix}"
        return head


class ConfigError(JointoptError):
    """A study, search-space or policy file is invalid."""


class DataError(JointoptError):
    """A dataset file or a record inside it is invalid."""


class TemplateError(JointoptError):
    """A prompt template is invalid or does not fit the dataset."""


class BackendError(JointoptError):
    """A generation backend could not be created or failed to generate."""


class StrategyError(JointoptError):
    """A strategy was given invalid parameters or failed while running."""


class ModelError(JointoptError):
    """A model could not be found or prepared."""


def relocate(exc: JointoptError, prefix: str) -> JointoptError:
    """The same error with ``prefix`` (a file or config section) put before its location."""
    where = f"{prefix}{exc.where}" if exc.where else prefix.rstrip(": .")
    kwargs = {"where": where, "fix": exc.fix}
    if exc.has_value:
        kwargs["value"] = exc.value
    return type(exc)(exc.message, **kwargs)
