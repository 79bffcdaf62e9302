"""The thinking budget as a searched dimension of a search space.

A space file may give ``thinking_budget`` (a constant, ``{choices: [0, 64, 256]}`` or
``{low, high, step?, log?}``) and ``thinking`` (the rest of a
:class:`~jointopt.core.thinking.ThinkingSpec`: engine, markers, answer cue and cap,
minimum). Every bin then suggests its own ``<bin>.thinking_budget`` jointly with its
strategy, parameters, temperature and max_tokens; budget 0 answers directly, so
think-or-answer routing per bin is the choice between 0 and a budget above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jointopt.core.thinking import ThinkingSpec
from jointopt.errors import ConfigError, JointoptError, relocate

__all__ = ["ThinkingParam", "thinking_param"]


@dataclass(frozen=True)
class ThinkingParam:
    """A searched thinking budget and the fixed rest of the spec.

    Attributes:
        budget: the budget parameter (a ``jointopt.search.space`` Param).
        settings: the other :class:`ThinkingSpec` fields, fixed for every trial.
    """

    budget: Any
    settings: Mapping[str, Any] = field(default_factory=dict)

    def suggest(self, trial: Any, prefix: str = "") -> ThinkingSpec:
        """The spec of one bin: ``<prefix>thinking_budget`` suggested on ``trial``."""
        return ThinkingSpec(budget=int(self.budget.suggest(trial, f"{prefix}thinking_budget")),
                            **dict(self.settings))


def thinking_param(data: Mapping[str, Any], source: str) -> ThinkingParam | None:
    """The thinking dimension of a space file's mapping, or None when it has none.

    Raises:
        ConfigError: ``thinking`` without ``thinking_budget``, or a budget value or setting
            a :class:`ThinkingSpec` rejects (every extreme of the budget is checked).
    """
    from jointopt.search.space import SearchSpace

    budget, settings = data.get("thinking_budget"), dict(data.get("thinking") or {})
    if budget is None:
        if settings:
            raise ConfigError("`thinking` settings need a `thinking_budget`",
                              where=f"{source}: thinking", value=settings,
                              fix="add e.g. thinking_budget: {choices: [0, 64, 256]}")
        return None
    if "budget" in settings:
        raise ConfigError("the budget is `thinking_budget`, not `thinking.budget`",
                          where=f"{source}: thinking.budget", value=settings["budget"],
                          fix="move it to thinking_budget: {choices: [...]}")
    param = SearchSpace.param_from_spec(budget, f"{source}: thinking_budget")
    for value in param.extremes():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError("a thinking budget must be a whole number of tokens >= 0",
                              where=f"{source}: thinking_budget", value=value,
                              fix="use integers, e.g. thinking_budget: {choices: [0, 64, 256]}")
        try:
            ThinkingSpec(budget=value, **settings)
        except JointoptError as exc:
            raise relocate(exc, f"{source}: ") from None
    return ThinkingParam(param, settings)
