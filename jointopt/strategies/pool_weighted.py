"""Expected accuracy of a weighted vote over random ``k``-subsets of a sample pool.

Weighted votes weigh a subset as :class:`jointopt.strategies.weighted.WeightedVote` weighs
a run. The expectation is exact by enumerating subsets when there are few enough, else a
seeded Monte Carlo estimate (see :mod:`jointopt.strategies.pool` for the model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, combinations, islice

import numpy as np

from jointopt.errors import StrategyError
from jointopt.strategies.pool import (Expected, PoolSample, _check_k, _check_pool, _expected,
                                      _groups)

__all__ = ["VOTE_WEIGHTS", "Vote", "expected_weighted", "score_weights", "vote_expectation"]

#: Vote weights :func:`expected_weighted` accepts: ``exp(mean_logprob)``,
#: ``exp(sum_logprob)`` or ``score``.
VOTE_WEIGHTS = ("mean_logprob", "sum_logprob", "score")

# Totals within this relative distance of the best total are a tie (float rounding of
# sums of non-negative weights is far below it).
_TIE_RTOL = 1e-10
# Largest number of (subset x slot) cells scored in one numpy batch.
_CHUNK_CELLS = 1 << 21


def _vote_values(pool: tuple[PoolSample, ...], weight: str) -> np.ndarray:
    """Per sample: the score (missing = 0) or the log weight (missing = NaN)."""
    values = [getattr(s, weight) for s in pool]
    if weight != "score":
        return np.array([math.nan if v is None else float(v) for v in values])
    return score_weights(values)


def score_weights(scores) -> np.ndarray:
    """Scores as vote weights (missing or NaN = 0); refuses negative or infinite ones."""
    out = np.zeros(len(scores))
    for i, score in enumerate(scores):
        if score is None or math.isnan(float(score)):
            continue
        value = float(score)
        if not 0.0 <= value < math.inf:
            raise StrategyError(
                "a score used as a vote weight must be finite and >= 0",
                where=f"pool[{i}].score", value=value,
                fix="use weight='mean_logprob' for log-probability scores, or clip the "
                    "scores at 0")
        out[i] = value
    return out


def expected_weighted(pool: Sequence[PoolSample], k: int, weight: str = "mean_logprob", *,
                      seed: int = 0, max_exact: int = 20000,
                      resamples: int = 4000) -> Expected:
    """Weighted vote of ``k`` samples: the answer with the largest total weight wins.

    As :class:`jointopt.strategies.weighted.WeightedVote` weighs a run: ``score`` votes
    with the score (missing = 0); ``mean_logprob`` / ``sum_logprob`` vote with ``exp`` of
    the value relative to the subset's largest (same winner, no underflow); a sample
    without the value weighs 0, and a subset in which no sample has it counts every vote
    1. ``None`` answers do not vote (an answer with weight 0 still takes part). Totals
    equal up to float rounding are a tie, won by the tied answer seen first in a random
    order (probability proportional to its votes).

    Exact by enumerating the ``C(N, k)`` subsets when there are at most ``max_exact``,
    else the mean over ``resamples`` subsets drawn with ``numpy.random.default_rng(seed)``
    (ties still resolved in expectation); ``method`` tells which.
    """
    if weight not in VOTE_WEIGHTS:
        raise StrategyError("unknown vote weight", where="weight", value=weight,
                            fix=f"use one of: {', '.join(VOTE_WEIGHTS)}")
    for name, value, low in (("max_exact", max_exact, 0), ("resamples", resamples, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise StrategyError(f"`{name}` must be an integer >= {low}", where=name,
                                value=value, fix=f"use an integer >= {low}")
    pool = _check_pool(pool)
    n = len(pool)
    k = _check_k(k, n)
    counts, correct = _groups(pool)
    answers = [a for a in counts if a is not None]
    ids = {a: i for i, a in enumerate(answers)}
    vote = Vote(
        answer_id=np.array([ids.get(s.answer, -1) for s in pool], dtype=np.intp),
        answer_ok=np.array([correct[a] for a in answers], dtype=np.float64),
        none_ok=float(correct.get(None, False)),
        values=_vote_values(pool, weight),
        logs=weight != "score",
    )
    accuracy, method = vote_expectation(vote, k, seed=seed, max_exact=max_exact,
                                        resamples=resamples)
    return _expected(pool, k, accuracy, method)


def vote_expectation(vote: "Vote", k: int, *, seed: int = 0, max_exact: int = 20000,
                     resamples: int = 4000) -> tuple[float, str]:
    """Expected correctness of a weighted vote of ``k`` samples, and the method: exact over
    every subset when there are at most ``max_exact``, else ``resampled(m)``."""
    n = len(vote.answer_id)
    n_subsets = math.comb(n, k)
    g = len(vote.answer_ok)
    if n_subsets <= max_exact:
        per_chunk = max(1, _CHUNK_CELLS // max(k, g, 1))
        it = combinations(range(n), k)
        total = 0.0
        while True:
            flat = np.fromiter(chain.from_iterable(islice(it, per_chunk)), dtype=np.intp)
            if not flat.size:
                break
            total += vote.score(flat.reshape(-1, k))
        return total / n_subsets, "exact"

    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_CELLS // max(n, g))
    total, done = 0.0, 0
    while done < resamples:
        m = min(per_chunk, resamples - done)
        subsets = (rng.random((m, n)).argpartition(k - 1, axis=1)[:, :k] if k < n
                   else np.tile(np.arange(n), (m, 1)))
        total += vote.score(subsets)
        done += m
    return total / resamples, f"resampled({resamples})"


@dataclass(frozen=True)
class Vote:
    """A pool as a weighted vote sees it (per-sample answers and weights)."""

    answer_id: np.ndarray  # per sample: answer index, -1 for None
    answer_ok: np.ndarray  # per answer: 1.0 if correct
    none_ok: float  # correctness of answering None (a subset of None answers)
    values: np.ndarray  # per sample: weight, or log weight (NaN = missing) if logs
    logs: bool

    def weights(self, subsets: np.ndarray) -> np.ndarray:
        values = self.values[subsets]
        if not self.logs:
            return values
        has = ~np.isnan(values)
        logs = np.where(has, values, -np.inf)
        top = logs.max(axis=1, keepdims=True)
        shifted = np.exp(logs - np.where(np.isfinite(top), top, 0.0))
        return np.where(has.any(axis=1, keepdims=True), shifted, 1.0)

    def score(self, subsets: np.ndarray) -> float:
        """Sum over subsets (rows of sample indices) of P(the weighted vote is correct)."""
        m = subsets.shape[0]
        g = len(self.answer_ok)
        if g == 0:
            return m * self.none_ok
        ids = self.answer_id[subsets]
        votes = ids >= 0
        cell = (np.arange(m)[:, None] * g + np.where(votes, ids, 0))[votes]
        totals = np.bincount(cell, weights=self.weights(subsets)[votes],
                             minlength=m * g).reshape(m, g)
        counts = np.bincount(cell, minlength=m * g).reshape(m, g)
        present = counts > 0
        masked = np.where(present, totals, -np.inf)
        best = masked.max(axis=1, keepdims=True)
        tied = present & (masked >= best - _TIE_RTOL * np.abs(best))
        tied_votes = np.where(tied, counts, 0)
        denom = tied_votes.sum(axis=1)
        wins = (tied_votes @ self.answer_ok) / np.maximum(denom, 1)
        return float(np.where(denom > 0, wins, self.none_ok).sum())
