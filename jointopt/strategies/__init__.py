"""Inference strategies and their lazy registry.

Strategies are registered as ``"module:Class"`` strings and imported on first use, so a
strategy with heavy dependencies costs nothing until a search space names it. Third-party
strategies can be used by their ``"package.module:Class"`` path directly.
"""

from __future__ import annotations

import difflib
import importlib

from ..errors import StrategyError
from .base import Candidate, Strategy, StrategyContext, StrategyOutcome

__all__ = [
    "Candidate",
    "Strategy",
    "StrategyContext",
    "StrategyOutcome",
    "STRATEGIES",
    "get_strategy_class",
    "make_strategy",
]

STRATEGIES: dict[str, str] = {
    "single": "jointopt.strategies.parallel:SingleSample",
    "majority": "jointopt.strategies.parallel:MajorityVote",
    "best_of_n": "jointopt.strategies.parallel:BestOfN",
    "weighted_vote": "jointopt.strategies.weighted:WeightedVote",
    "adaptive_majority": "jointopt.strategies.adaptive:AdaptiveVote",
    "revision": "jointopt.strategies.sequential:RevisionChain",
    "parallel_revision": "jointopt.strategies.hybrid:ParallelRevision",
    "mcts": "jointopt.strategies.mcts:MCTS",
}


def get_strategy_class(name: str, where: str = "strategy") -> type[Strategy]:
    """Resolve a strategy name (or ``"module:Class"`` path) to its class."""
    target = STRATEGIES.get(name, name if ":" in name else None)
    if target is None:
        close = difflib.get_close_matches(str(name), list(STRATEGIES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise StrategyError("unknown strategy", where=where, value=name,
                            fix=f"{hint}choose one of: {', '.join(STRATEGIES)}")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise StrategyError(f"cannot import strategy: {exc}", where=where, value=name,
                            fix="check the 'module:Class' path") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise StrategyError("not a Strategy subclass", where=where, value=name,
                            fix="point at a subclass of jointopt.Strategy")
    return cls


def make_strategy(name: str, params: dict | None = None, where: str = "strategy") -> Strategy:
    """Instantiate and validate a strategy."""
    return get_strategy_class(name, where)(**(params or {}))
