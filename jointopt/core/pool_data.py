"""One example's sample pool as arrays: what pool-scored strategies read.

A :class:`PoolData` describes the ``N`` samples of one (prompt, example, temperature,
max_tokens) pool by their distinct answers (*groups*): how many samples gave each answer
and whether it is correct, plus the pool's mean completion tokens. A pool recorded sample
by sample also carries per-sample arrays (group of each sample, mean and total token
logprob, a score); a pool imported as an answer histogram carries none. Both come from a
sample bank (:meth:`jointopt.backends.base.Backend.pool_data`) or from completions
(:func:`pool_data_from_samples`), and are scored by
:meth:`jointopt.strategies.base.Strategy.score_pool_batch` without building a Python object
per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PoolSample", "PoolData", "pool_data_from_samples"]


@dataclass(frozen=True)
class PoolSample:
    """One sample of a pool.

    Attributes:
        answer: canonical extracted answer; ``None`` when nothing was extracted (never
            wins a vote while any other answer is present).
        correct: whether ``answer`` matches the target.
        completion_tokens: completion tokens of the sample (engine count).
        mean_logprob: mean token logprob of the completion.
        sum_logprob: total token logprob of the completion.
        score: a scorer's value, higher is better (e.g. verifier or logprob).
    """

    answer: str | None
    correct: bool
    completion_tokens: int
    mean_logprob: float | None = None
    sum_logprob: float | None = None
    score: float | None = None


@dataclass(frozen=True, eq=False)
class PoolData:
    """One example's pool (read-only arrays).

    Attributes:
        answers: the distinct canonical answers (``None``: nothing extracted), one per group.
        counts: samples per group (int64); they sum to :attr:`samples`.
        correct: whether each group's answer is correct (bool).
        mean_completion_tokens: mean completion tokens per sample of the pool.
        prompt_tokens: prompt tokens of the pool's prompt (counted once per request).
        sample_group: per sample, the index of its group (None for a histogram pool).
        mean_logprob, sum_logprob, score: per sample, NaN where unknown (None for a
            histogram pool, or when no sample has the value).
        completions: the completions behind the samples, when known (scorers that read
            more than answers and logprobs need them).
        cached: samples served from a store or bank rather than generated.
    """

    answers: tuple[str | None, ...]
    counts: np.ndarray
    correct: np.ndarray
    mean_completion_tokens: float
    prompt_tokens: float = 0.0
    sample_group: np.ndarray | None = None
    mean_logprob: np.ndarray | None = None
    sum_logprob: np.ndarray | None = None
    score: np.ndarray | None = None
    completions: tuple | None = field(default=None, repr=False)
    cached: int = 0

    @property
    def samples(self) -> int:
        """Number of samples ``N``."""
        return int(self.counts.sum())

    @property
    def per_sample(self) -> bool:
        """Whether per-sample arrays are known (a pool recorded sample by sample)."""
        return self.sample_group is not None

    def repeated(self, times: int) -> "PoolData":
        """The pool with every sample repeated ``times`` times (a greedy pool of one
        sample standing for ``times`` identical draws)."""
        def rep(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.tile(a, times)

        return PoolData(
            answers=self.answers, counts=self.counts * times, correct=self.correct,
            mean_completion_tokens=self.mean_completion_tokens,
            prompt_tokens=self.prompt_tokens, sample_group=rep(self.sample_group),
            mean_logprob=rep(self.mean_logprob), sum_logprob=rep(self.sum_logprob),
            score=rep(self.score),
            completions=None if self.completions is None else self.completions * times,
            cached=self.cached)


def _values(values: Sequence[float | None]) -> np.ndarray | None:
    if all(v is None for v in values):
        return None
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def pool_data_from_samples(answers: Sequence[str | None], correct: Sequence[bool],
                           completion_tokens: Sequence[int], *,
                           mean_logprob: Sequence[float | None] | None = None,
                           sum_logprob: Sequence[float | None] | None = None,
                           score: Sequence[float | None] | None = None,
                           prompt_tokens: float = 0.0, completions: tuple | None = None,
                           cached: int = 0) -> PoolData:
    """A per-sample pool from its samples' answers, correctness and tokens.

    Raises:
        ValueError: an empty pool, or samples of one answer that disagree on correctness.
    """
    if not answers:
        raise ValueError("a pool needs at least one sample")
    index: dict[str | None, int] = {}
    group = np.empty(len(answers), dtype=np.int64)
    ok: list[bool] = []
    for i, (answer, right) in enumerate(zip(answers, correct)):
        g = index.get(answer)
        if g is None:
            g = index[answer] = len(ok)
            ok.append(bool(right))
        elif ok[g] != bool(right):
            raise ValueError(f"samples with the answer {answer!r} disagree on correctness")
        group[i] = g
    n = len(answers)
    return PoolData(
        answers=tuple(index), counts=np.bincount(group, minlength=len(ok)).astype(np.int64),
        correct=np.array(ok, dtype=bool),
        mean_completion_tokens=math.fsum(float(t) for t in completion_tokens) / n,
        prompt_tokens=float(prompt_tokens), sample_group=group,
        mean_logprob=_values(mean_logprob or [None] * n),
        sum_logprob=_values(sum_logprob or [None] * n), score=_values(score or [None] * n),
        completions=completions, cached=cached)
