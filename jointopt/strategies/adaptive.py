"""Adaptive majority vote: sample in batches, stop as soon as the vote is settled."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from jointopt.errors import StrategyError
from jointopt.strategies.base import (
    Candidate,
    Run,
    Strategy,
    StrategyContext,
    StrategyOutcome,
    check_float,
    check_int,
    completions_of,
)
from jointopt.strategies.parallel import MAX_N
from jointopt.strategies.voting import plurality

__all__ = ["AdaptiveVote"]


class AdaptiveVote(Strategy):
    """Majority vote that spends up to ``max_n`` samples, in batches, and stops early.

    Each round is one request for ``batch`` samples (the last one smaller so the total
    never exceeds ``max_n``). After each round the strategy stops when either

    * the vote is decided: the leader's count exceeds the runner-up's count plus every
      sample still allowed (``max_n`` minus samples drawn), so drawing the rest could not
      change the answer; or
    * the leader holds at least ``threshold`` of *all* samples drawn so far (samples
      without an answer count against it) and at least ``min_n`` samples were drawn.

    The answer is the plurality over all samples drawn (ties: first seen). With
    ``threshold=1.0`` and ``min_n=max_n`` only the first rule applies, and the answer is
    always the one ``majority`` with ``n=max_n`` would give on the same samples.

    Round ``k`` asks for ``offset = samples drawn before it``, so rounds draw different
    samples from the same prompt (the numbering the sample cache uses for pool offsets).
    """

    name = "adaptive_majority"

    @dataclass(frozen=True)
    class Params:
        #: Samples requested per round (one request with ``n=batch``).
        batch: int = 4
        #: Cap on the samples per example (a cap, not a fixed spend).
        max_n: int = 16
        #: Leader's share of the samples drawn at which sampling stops (0.5 to 1.0).
        threshold: float = 0.8
        #: Samples drawn before the ``threshold`` rule may stop sampling (<= ``max_n``).
        min_n: int = 4

        def __post_init__(self) -> None:
            check_int("adaptive_majority.batch", self.batch, 1, MAX_N)
            check_int("adaptive_majority.max_n", self.max_n, 1, MAX_N)
            check_float("adaptive_majority.threshold", self.threshold, 0.5, 1.0)
            check_int("adaptive_majority.min_n", self.min_n, 1, MAX_N)
            if self.min_n > self.max_n:
                raise StrategyError(
                    "`min_n` must be <= max_n", where="adaptive_majority.min_n",
                    value=self.min_n, fix=f"use a value between 1 and max_n={self.max_n}",
                )

    def max_completions(self) -> int:
        return self.params.max_n

    def settled(self, answers: list[str | None]) -> bool:
        """Whether sampling may stop after ``answers`` (see the class docstring)."""
        p = self.params
        drawn = len(answers)
        if drawn >= p.max_n:
            return True
        counts = Counter(a for a in answers if a is not None).most_common(2)
        if not counts:
            return False
        leader = counts[0][1]
        runner_up = counts[1][1] if len(counts) > 1 else 0
        if leader > runner_up + (p.max_n - drawn):
            return True
        return drawn >= p.min_n and leader / drawn >= p.threshold

    def run(self, ctx: StrategyContext) -> Run:
        p = self.params
        candidates: list[Candidate] = []
        answers: list[str | None] = []
        rounds = 0
        while True:
            size = min(p.batch, p.max_n - len(answers))
            results = yield [ctx.request(n=size, offset=len(answers))]
            rounds += 1
            for completion in completions_of(results):
                answer = ctx.extract(completion.text)
                answers.append(answer)
                candidates.append(Candidate(completion.text, answer))
            if self.settled(answers):
                break
        info = {"samples": len(answers), "rounds": rounds}
        return StrategyOutcome(plurality(answers), tuple(candidates), info)
