"""The ``none`` difficulty source: one bin, one allocation for every input."""

from __future__ import annotations

from typing import ClassVar

from jointopt.difficulty.base import DifficultySource

__all__ = ["NoDifficulty"]


class NoDifficulty(DifficultySource):
    """Every input gets the default bin; trials search one allocation (parameter names
    without a bin prefix)."""

    name: ClassVar[str] = "none"
    splits: ClassVar[bool] = False
