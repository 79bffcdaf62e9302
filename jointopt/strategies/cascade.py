"""Cascade: answer with a small model, escalate to a larger one when it is unsure.

The bin's model (``Allocation.model``, or the policy's own) draws ``n`` samples and votes.
When the plurality answer's share of the ``n`` votes is at least ``threshold``, that answer
stands; otherwise the model ``escalate_to`` draws ``escalate_n`` samples of its own and
its plurality answer is the answer. Both stages' samples and tokens count in the cost,
each at its model's price; the first stage's request is the bin's ordinary one, so under a
``probe`` difficulty source with the same sampling settings it takes the probe's samples
(none is paid twice). With ``escalate_to`` unset the second stage is fresh samples of the
same model (an adaptive vote in two steps).
"""

from __future__ import annotations

from dataclasses import dataclass

from jointopt.errors import StrategyError
from jointopt.strategies.base import (Candidate, Run, Strategy, StrategyContext,
                                      StrategyOutcome, check_float, check_int, completions_of)
from jointopt.strategies.parallel import MAX_N
from jointopt.strategies.voting import plurality

__all__ = ["Cascade", "vote_share"]


def vote_share(answers: list[str | None]) -> tuple[str | None, float]:
    """The plurality answer and its share of all votes (None answers count as votes
    for nothing, so a stage that rarely finishes an answer looks unsure)."""
    answer = plurality(answers)
    if answer is None or not answers:
        return None, 0.0
    return answer, answers.count(answer) / len(answers)


class Cascade(Strategy):
    """``n`` samples of the bin's model; below ``threshold`` agreement, ``escalate_n``
    samples of ``escalate_to``."""

    name = "cascade"

    @dataclass(frozen=True)
    class Params:
        #: Samples of the first (bin's) model that vote.
        n: int = 3
        #: Least vote share of the first model's plurality answer that keeps it.
        threshold: float = 0.67
        #: Samples of the model escalated to.
        escalate_n: int = 3
        #: The model escalated to (a name from the study's ``models:``); None: the same
        #: model again, with fresh samples.
        escalate_to: str | None = None
        #: Completion-token cap of the escalated samples; None: the bin's ``max_tokens``.
        escalate_max_tokens: int | None = None

        def __post_init__(self) -> None:
            check_int("cascade.n", self.n, 1, MAX_N)
            check_float("cascade.threshold", self.threshold, 0.0, 1.0)
            check_int("cascade.escalate_n", self.escalate_n, 1, MAX_N)
            if self.escalate_to is not None and (not isinstance(self.escalate_to, str)
                                                 or not self.escalate_to):
                raise StrategyError("must be a model name", where="cascade.escalate_to",
                                    value=self.escalate_to,
                                    fix="name one of the study's models (models: in the "
                                        "config), or leave it out for the same model")
            if self.escalate_max_tokens is not None:
                check_int("cascade.escalate_max_tokens", self.escalate_max_tokens, 1)

    def max_completions(self) -> int:
        return self.params.n + self.params.escalate_n

    def models(self) -> tuple[str, ...]:
        return () if self.params.escalate_to is None else (self.params.escalate_to,)

    def run(self, ctx: StrategyContext) -> Run:
        p = self.params
        first = completions_of((yield [ctx.request(n=p.n)]))
        candidates = [Candidate(c.text, ctx.extract(c.text)) for c in first]
        answer, share = vote_share([c.answer for c in candidates])
        info = {"first_share": share, "escalated": share < p.threshold}
        if share >= p.threshold:
            return StrategyOutcome(answer, tuple(candidates), info)
        # Positions after the first stage's: when the model escalated to is the bin's own
        # (by name or unset) these are fresh samples, never the first stage's again.
        request = ctx.request(n=p.escalate_n, offset=p.n,
                              model=ctx.model if p.escalate_to is None else p.escalate_to,
                              max_tokens=p.escalate_max_tokens or ctx.max_tokens)
        second = [Candidate(c.text, ctx.extract(c.text))
                  for c in completions_of((yield [request]))]
        final = plurality([c.answer for c in second])
        return StrategyOutcome(final, tuple(candidates + second), info)
