"""Parallel strategies: one round of samples, then an aggregation."""

from __future__ import annotations

from dataclasses import dataclass

from jointopt.strategies.scorers import SCORERS, get_scorer
from jointopt.strategies.base import (
    Candidate,
    Run,
    Strategy,
    StrategyContext,
    StrategyOutcome,
    check_choice,
    check_int,
    completions_of,
)
from jointopt.strategies.voting import plurality

__all__ = ["SingleSample", "MajorityVote", "BestOfN"]

#: Largest n a parallel strategy accepts (a guard against budget typos).
MAX_N = 1024


class SingleSample(Strategy):
    """One sample; its answer is the answer."""

    name = "single"

    @dataclass(frozen=True)
    class Params:
        pass

    def max_completions(self) -> int:
        return 1

    def pool_k(self) -> int:
        return 1

    def score_pool(self, pool, completions, ctx):
        from jointopt.strategies.pool import expected_single

        return expected_single(pool)

    def score_pool_batch(self, pools, contexts):
        from jointopt.strategies.pool_arrays import batch_single, expected_list

        return expected_list(pools, 1, batch_single(pools))

    def run(self, ctx: StrategyContext) -> Run:
        results = yield [ctx.request(n=1)]
        completion = completions_of(results)[0]
        answer = ctx.extract(completion.text)
        return StrategyOutcome(answer, (Candidate(completion.text, answer),))


class MajorityVote(Strategy):
    """``n`` samples; the most frequent answer wins (self-consistency)."""

    name = "majority"

    @dataclass(frozen=True)
    class Params:
        #: Number of samples that vote.
        n: int = 5

        def __post_init__(self) -> None:
            check_int("majority.n", self.n, 1, MAX_N)

    def max_completions(self) -> int:
        return self.params.n

    def pool_k(self) -> int:
        return self.params.n

    def score_pool(self, pool, completions, ctx):
        from jointopt.strategies.pool import expected_majority

        return expected_majority(pool, self.params.n)

    def score_pool_batch(self, pools, contexts):
        from jointopt.strategies.pool_arrays import batch_majority, expected_list

        return expected_list(pools, self.params.n, batch_majority(pools, self.params.n))

    def run(self, ctx: StrategyContext) -> Run:
        results = yield [ctx.request(n=self.params.n)]
        candidates = tuple(
            Candidate(c.text, ctx.extract(c.text)) for c in completions_of(results)
        )
        answer = plurality([c.answer for c in candidates])
        return StrategyOutcome(answer, candidates)


class BestOfN(Strategy):
    """``n`` samples; the one the scorer ranks highest wins."""

    name = "best_of_n"

    @dataclass(frozen=True)
    class Params:
        #: Number of candidates.
        n: int = 4
        #: ``logprob`` (mean token logprob), ``verifier`` (the task's serve-time
        #: verifier) or ``auto`` (verifier when the task has one).
        scorer: str = "auto"

        def __post_init__(self) -> None:
            check_int("best_of_n.n", self.n, 1, MAX_N)
            check_choice("best_of_n.scorer", self.scorer, list(SCORERS))

    def check_task(self, task) -> None:
        get_scorer(self.params.scorer, "best_of_n.scorer").check_task(task)

    def max_completions(self) -> int:
        return self.params.n

    def pool_k(self) -> int:
        return self.params.n

    def score_pool(self, pool, completions, ctx):
        from dataclasses import replace

        from jointopt.strategies.pool import expected_best_of

        scorer = get_scorer(self.params.scorer, "best_of_n.scorer")
        scored = [replace(s, score=scorer.score(ctx, c, s.answer))
                  for s, c in zip(pool, completions)]
        return expected_best_of(scored, self.params.n, key="score")

    def score_pool_batch(self, pools, contexts):
        """Best-of-n from arrays: the scorer ranks every sample by its answer and logprobs
        (from the pool's completions when it has them)."""
        import numpy as np

        from jointopt.strategies.pool_arrays import (batch_best_of, expected_list,
                                                     sample_answers, sample_views)

        from jointopt.strategies.pool_arrays import expanded_groups, group_views

        scorer = get_scorer(self.params.scorer, "best_of_n.scorer")
        keys = []
        for pool, ctx in zip(pools, contexts):
            if pool.per_sample or pool.completions is not None:
                keys.append(np.array([scorer.score(ctx, c, a) for c, a in
                                      zip(sample_views(pool), sample_answers(pool))]))
            else:  # a histogram: the samples of one answer score alike
                scores = [scorer.score(ctx, c, a) for c, a in group_views(pool)]
                keys.append(np.asarray(scores, dtype=np.float64)[expanded_groups(pool)])
        return expected_list(pools, self.params.n, batch_best_of(pools, self.params.n, keys))

    def run(self, ctx: StrategyContext) -> Run:
        scorer = get_scorer(self.params.scorer, "best_of_n.scorer")
        results = yield [ctx.request(n=self.params.n)]
        candidates = []
        for completion in completions_of(results):
            answer = ctx.extract(completion.text)
            candidates.append(
                Candidate(completion.text, answer, scorer.score(ctx, completion, answer))
            )
        # max() keeps the first of equal scores: deterministic.
        best = max(candidates, key=lambda c: c.score)
        return StrategyOutcome(best.answer, tuple(candidates))
