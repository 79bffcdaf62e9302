"""Weighted voting: ``n`` samples whose votes count by how much each is trusted."""

from __future__ import annotations

import math
from dataclasses import dataclass

from jointopt.core.generation import Completion
from jointopt.errors import StrategyError
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
    require_verifier,
)
from jointopt.strategies.parallel import MAX_N
from jointopt.strategies.voting import plurality

__all__ = ["WeightedVote", "WEIGHTS"]

#: Valid values of ``weighted_vote.weight``.
WEIGHTS: tuple[str, ...] = ("mean_logprob", "sum_logprob",
                            *(f"scorer:{name}" for name in SCORERS))


class WeightedVote(Strategy):
    """``n`` samples; each vote counts with a weight, the heaviest answer wins.

    Weights (all computed from what the samples already carry: no extra generation):

    * ``mean_logprob``: ``exp`` of the mean token logprob (length-normalised sequence
      likelihood, in (0, 1]).
    * ``sum_logprob``: ``exp`` of the sequence logprob. Computed relative to the most
      likely sample (``exp(s_i - max s)``), which leaves the vote unchanged and avoids
      underflow.
    * ``scorer:<name>``: a :mod:`jointopt.strategies.scorers` scorer. ``scorer:logprob`` weighs by
      ``exp`` of its score (same as ``mean_logprob``); ``scorer:verifier`` uses its score
      directly (about 1 for a verified answer, about 0.001 x likelihood otherwise, so
      verified answers dominate and likelihood decides when none verifies);
      ``scorer:auto`` is the verifier when the task has one, else the logprob scorer.

    A sample without logprobs gets weight 0 (if no sample has any, every vote counts 1).
    Samples without an answer never vote. Ties go to the answer seen first.
    """

    name = "weighted_vote"

    @dataclass(frozen=True)
    class Params:
        #: Number of samples that vote.
        n: int = 5
        #: How a vote is weighted: ``mean_logprob``, ``sum_logprob`` or
        #: ``scorer:<name>`` with a name from :data:`jointopt.strategies.scorers.SCORERS`.
        weight: str = "mean_logprob"

        def __post_init__(self) -> None:
            check_int("weighted_vote.n", self.n, 1, MAX_N)
            check_choice("weighted_vote.weight", self.weight, list(WEIGHTS))

    def check_task(self, task) -> None:
        if self.params.weight == "scorer:verifier":
            require_verifier(task, "weighted_vote.weight", self.params.weight,
                             "weight 'mean_logprob' or 'scorer:auto'")

    def max_completions(self) -> int:
        return self.params.n

    def pool_k(self) -> int:
        return self.params.n

    def score_pool(self, pool, completions, ctx):
        """Expected accuracy over random ``n``-subsets of a shared pool (see
        :func:`jointopt.strategies.pool_weighted.expected_weighted`); weights are per
        sample, as in :meth:`run`."""
        from dataclasses import replace

        from jointopt.strategies.pool_weighted import expected_weighted

        weight = self.params.weight
        if not weight.startswith("scorer:"):
            return expected_weighted(pool, self.params.n, weight=weight)
        weights = self.weights(ctx, list(completions), [s.answer for s in pool])
        scored = [replace(s, score=w) for s, w in zip(pool, weights)]
        return expected_weighted(scored, self.params.n, weight="score")

    def score_pool_batch(self, pools, contexts):
        """The weighted vote from arrays, pool by pool (exact or resampled as
        :func:`~jointopt.strategies.pool_weighted.expected_weighted`); a pool without any
        logprob under a logprob weight counts every vote 1, which is majority@n, exact."""
        import numpy as np

        from jointopt.strategies.pool import Expected
        from jointopt.strategies.pool_arrays import (batch_majority, expanded_groups,
                                                     sample_answers, sample_views)
        from jointopt.strategies.pool_weighted import Vote, score_weights, vote_expectation

        k, weight = self.params.n, self.params.weight
        out = []
        for pool, ctx in zip(pools, contexts):
            if pool.samples < k:
                raise StrategyError(f"`k` must be between 1 and the pool size N={pool.samples}",
                                    where="k", value=k, fix="the pool must grow to at least "
                                    f"k={k} samples (raise the pool size)")
            logs = not weight.startswith("scorer:")
            if logs:
                values = getattr(pool, weight)
                if values is None:  # no sample has it: every vote counts 1
                    accuracy, method = float(batch_majority([pool], k)[0]), "exact"
                    out.append(Expected(accuracy, k * pool.mean_completion_tokens, method))
                    continue
            else:
                values = score_weights(self.weights(ctx, sample_views(pool),
                                                    sample_answers(pool)))
            voting = [i for i, a in enumerate(pool.answers) if a is not None]
            ids = np.full(len(pool.answers), -1, dtype=np.intp)
            ids[voting] = np.arange(len(voting))
            none = [i for i, a in enumerate(pool.answers) if a is None]
            vote = Vote(answer_id=ids[expanded_groups(pool)],
                        answer_ok=pool.correct[voting].astype(np.float64),
                        none_ok=float(bool(pool.correct[none[0]])) if none else 0.0,
                        values=np.asarray(values, dtype=np.float64), logs=logs)
            accuracy, method = vote_expectation(vote, k)
            out.append(Expected(float(accuracy), k * pool.mean_completion_tokens, method))
        return out

    def run(self, ctx: StrategyContext) -> Run:
        results = yield [ctx.request(n=self.params.n)]
        completions = completions_of(results)
        answers = [ctx.extract(c.text) for c in completions]
        weights = self.weights(ctx, completions, answers)
        candidates = tuple(
            Candidate(c.text, a, w) for c, a, w in zip(completions, answers, weights)
        )
        return StrategyOutcome(plurality(answers, weights), candidates)

    def weights(
        self, ctx: StrategyContext, completions: list[Completion], answers: list[str | None]
    ) -> list[float]:
        """The vote weight of each completion (``answers`` are their extracted answers)."""
        weight = self.params.weight
        if weight.startswith("scorer:"):
            name = weight.split(":", 1)[1]
            if name == "auto":
                name = "verifier" if ctx.task.verifier is not None else "logprob"
            scorer = get_scorer(name, "weighted_vote.weight")
            scores = [scorer.score(ctx, c, a) for c, a in zip(completions, answers)]
            if name == "logprob":
                return [math.exp(s) if s > -math.inf else 0.0 for s in scores]
            return [max(s, 0.0) for s in scores]
        if weight == "mean_logprob":
            logs = [c.mean_logprob for c in completions]
        else:
            logs = [c.sum_logprob if c.logprobs else None for c in completions]
        finite = [x for x in logs if x is not None]
        if not finite:
            return [1.0] * len(completions)
        top = max(finite) if weight == "sum_logprob" else 0.0
        return [math.exp(x - top) if x is not None else 0.0 for x in logs]
