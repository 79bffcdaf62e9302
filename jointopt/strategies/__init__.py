"""Inference strategies and their lazy registry.

Strategies are registered as ``"module:Class"`` strings and imported on first use, so a
strategy with heavy dependencies costs nothing until a search space names it. Third-party
strategies can be used by their ``"package.module:Class"`` path directly.
"""

from __future__ import annotations

from jointopt import _registry
from jointopt.strategies.base import Candidate, Strategy, StrategyContext, StrategyOutcome

__all__ = [
    "Candidate",
    "Strategy",
    "StrategyContext",
    "StrategyOutcome",
    "STRATEGIES",
    "get_strategy_class",
    "make_strategy",
]

#: Built-in strategy names -> ``"module:Class"`` (the table of :data:`jointopt._registry.STRATEGIES`).
STRATEGIES = _registry.STRATEGIES.entries


def get_strategy_class(name: str, where: str = "strategy") -> type[Strategy]:
    """Resolve a strategy name (or ``"module:Class"`` path) to its class."""
    return _registry.STRATEGIES.load(name, where)


def make_strategy(name: str, params: dict | None = None, where: str = "strategy") -> Strategy:
    """Instantiate and validate a strategy."""
    return get_strategy_class(name, where)(**(params or {}))
