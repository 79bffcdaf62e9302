"""The Scorer extension point: how best-of-N ranks candidate completions."""

from __future__ import annotations

import difflib
import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from jointopt.errors import StrategyError
from jointopt.core.generation import Completion

if TYPE_CHECKING:
    from jointopt.strategies.base import StrategyContext
    from jointopt.tasks import Task

__all__ = ["Scorer", "LogprobScorer", "VerifierScorer", "AutoScorer", "SCORERS", "get_scorer"]


class Scorer(ABC):
    """Scores one candidate; higher is better. Must not read the example's target.

    ``jointopt.testing.ScorerContract`` is the test suite every scorer passes.
    """

    name: ClassVar[str]

    def check_task(self, task: "Task") -> None:
        """Raise :class:`StrategyError` if this scorer cannot work on ``task`` (hook)."""

    @abstractmethod
    def score(self, ctx: "StrategyContext", completion: Completion, answer: str | None) -> float:
        """Score a completion whose extracted answer is ``answer``."""


class LogprobScorer(Scorer):
    """Mean token logprob of the completion (length-normalised sequence likelihood)."""

    name = "logprob"

    def score(self, ctx: "StrategyContext", completion: Completion, answer: str | None) -> float:
        if answer is None:
            return -math.inf
        mean = completion.mean_logprob
        return -math.inf if mean is None else mean


class VerifierScorer(Scorer):
    """The task's serve-time verifier (pass = 1), ties broken by token likelihood.

    The likelihood term lies in [0, 0.001), so a verified answer always outranks an
    unverified one.
    """

    name = "verifier"

    def check_task(self, task: "Task") -> None:
        from jointopt.strategies.base import require_verifier

        require_verifier(task, "best_of_n.scorer", self.name, "scorer 'logprob' or 'auto'")

    def score(self, ctx: "StrategyContext", completion: Completion, answer: str | None) -> float:
        if answer is None:
            return -math.inf
        verified = 1.0 if ctx.verify(answer) else 0.0
        mean = completion.mean_logprob
        return verified + (0.001 * math.exp(mean) if mean is not None else 0.0)


class AutoScorer(Scorer):
    """The verifier when the task has one, else the mean token logprob."""

    name = "auto"

    def score(self, ctx: "StrategyContext", completion: Completion, answer: str | None) -> float:
        inner = VerifierScorer() if ctx.task.verifier is not None else LogprobScorer()
        return inner.score(ctx, completion, answer)


SCORERS: dict[str, type[Scorer]] = {
    cls.name: cls for cls in (LogprobScorer, VerifierScorer, AutoScorer)
}


def get_scorer(name: str, where: str = "scorer") -> Scorer:
    """Instantiate a scorer by name, with a "did you mean" on typos."""
    if name not in SCORERS:
        close = difflib.get_close_matches(str(name), list(SCORERS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise StrategyError("unknown scorer", where=where, value=name,
                            fix=f"{hint}choose one of: {', '.join(SCORERS)}")
    return SCORERS[name]()
