"""Sample once, score many: expected accuracy of parallel strategies from a sample pool.

For one example, a *pool* holds ``N`` samples drawn i.i.d. with one (prompt, model,
temperature, max_tokens). A parallel strategy run with ``k <= N`` samples is modelled as
running on a uniformly random ``k``-subset of the pool, presented in a uniformly random
order. The functions here return the expectation of the strategy's correctness over that
randomness, so a trial that only changes ``k`` or the aggregation generates nothing.

Tie-breaking follows the strategies, which keep the *first* of equal candidates: in a
random order that is

* majority vote: uniform among the tied answers (tied answers have equal counts);
* best-of: uniform among the tied samples;
* weighted vote: the answer whose first sample comes first among the tied answers'
  samples, i.e. an answer wins with probability proportional to its number of votes
  (uniform when the tied answers have equal counts).

A subset whose samples all have the answer ``None`` answers ``None``; it is correct only
if the pool says ``None`` is correct (never, for ordinary tasks). The weighted vote is in
:mod:`jointopt.strategies.pool_weighted`.

Everything here is a pure function of its arguments (resampling uses a seeded
``numpy.random.default_rng``), and majority tables are cached per pool *shape*.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from jointopt.core.pool_data import PoolSample
from jointopt.errors import StrategyError

if TYPE_CHECKING:
    from jointopt.strategies.base import StrategyContext

__all__ = [
    "PoolSample",
    "Expected",
    "expected_single",
    "expected_majority",
    "majority_curve",
    "expected_best_of",
    "expected_pass_at",
    "BEST_OF_KEYS",
    "pool_samples",
]

#: Keys :func:`expected_best_of` ranks by.
BEST_OF_KEYS = ("score", "mean_logprob", "sum_logprob")

# Above these pool sizes binomials overflow float64 / x86 long doubles; the majority
# table then moves to the next wider arithmetic (see _number_mode).
_FLOAT_MAX_N = 1000
_LONGDOUBLE_MAX_N = 16000


@dataclass(frozen=True)
class Expected:
    """Expected outcome of a strategy over random ``k``-subsets of a pool.

    Attributes:
        accuracy: probability that the final answer is correct.
        completion_tokens: expected completion tokens of the ``k`` samples
            (``k`` times the pool mean).
        method: ``"exact"``, or ``"resampled(m)"`` for a Monte Carlo estimate over ``m``
            seeded random subsets.
    """

    accuracy: float
    completion_tokens: float
    method: str


# --------------------------------------------------------------------------- checks


def _check_pool(pool: Sequence[PoolSample]) -> tuple[PoolSample, ...]:
    pool = tuple(pool)
    if not pool:
        raise StrategyError(
            "cannot score a strategy from an empty pool (N=0)", where="pool", value=[],
            fix="the pool must grow: draw at least k samples per example")
    return pool


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise StrategyError(
            "`k` must be an integer", where="k", value=k,
            fix=f"use an integer between 1 and the pool size N={n}")
    k = int(k)
    if not 1 <= k <= n:
        raise StrategyError(
            f"`k` must be between 1 and the pool size N={n}", where="k", value=k,
            fix=(f"the pool must grow to at least k={k} samples (raise the pool size)"
                 if k > n else "use k >= 1"))
    return k


def _groups(pool: tuple[PoolSample, ...]) -> tuple[dict[str | None, int], dict[str | None, bool]]:
    """Counts and correctness per answer; the samples of one answer must agree."""
    counts: dict[str | None, int] = {}
    correct: dict[str | None, bool] = {}
    for i, s in enumerate(pool):
        ok = bool(s.correct)
        if s.answer in correct:
            if correct[s.answer] != ok:
                raise StrategyError(
                    "samples with the same answer disagree on correctness",
                    where=f"pool[{i}]", value=s.answer,
                    fix="derive `correct` from the canonical answer alone")
            counts[s.answer] += 1
        else:
            counts[s.answer] = 1
            correct[s.answer] = ok
    return counts, correct


def _mean_tokens(pool: tuple[PoolSample, ...]) -> float:
    return math.fsum(float(s.completion_tokens) for s in pool) / len(pool)


def _expected(pool: tuple[PoolSample, ...], k: int, accuracy, method: str = "exact") -> Expected:
    return Expected(accuracy=float(accuracy), completion_tokens=k * _mean_tokens(pool),
                    method=method)


# --------------------------------------------------------------------------- single


def expected_single(pool: Sequence[PoolSample]) -> Expected:
    """One sample (``k = 1``): the fraction of the pool that is correct."""
    pool = _check_pool(pool)
    return _expected(pool, 1, Fraction(sum(bool(s.correct) for s in pool), len(pool)))


# --------------------------------------------------------------------------- majority


def expected_majority(pool: Sequence[PoolSample], k: int) -> Expected:
    """Plurality vote of ``k`` samples, exact for any pool size in polynomial time.

    ``None`` answers do not vote; ties go uniformly to one of the tied answers (the first
    seen in a random order); a subset of ``None`` answers only answers ``None``.
    """
    pool = _check_pool(pool)
    k = _check_k(k, len(pool))
    return _expected(pool, k, _majority_curve(pool)[k - 1])


def majority_curve(pool: Sequence[PoolSample]) -> tuple[float, ...]:
    """Exact majority-vote accuracy for every ``k``: element ``k - 1`` is ``majority@k``.

    Costs the same as one :func:`expected_majority` call (which computes every ``k``).
    """
    return _majority_curve(_check_pool(pool))


def _majority_curve(pool: tuple[PoolSample, ...]) -> tuple[float, ...]:
    counts, correct = _groups(pool)
    n_none = counts.pop(None, 0)
    none_ok = correct.pop(None, False)
    signature = tuple(sorted((counts[a], correct[a]) for a in counts))
    return _majority_table(signature, n_none, none_ok, _number_mode(len(pool)))


def _number_mode(n: int) -> str:
    """Arithmetic for the majority table of a pool of ``n``: the fastest that cannot overflow.

    Every number in the table is a non-negative count of at most about ``n * C(n, n/2)``
    subsets, so float64 holds it up to n=1000 and x86 80-bit long doubles up to n=16000;
    beyond (or without extended long doubles), Python integers.
    """
    if n <= _FLOAT_MAX_N:
        return "float64"
    if n <= _LONGDOUBLE_MAX_N and np.finfo(np.longdouble).maxexp >= 16384:
        return "longdouble"
    return "exact"


@lru_cache(maxsize=4096)
def _majority_table(signature: tuple[tuple[int, bool], ...], n_none: int, none_ok: bool,
                    mode: str = "float64") -> tuple[float, ...]:
    """Majority accuracy for k = 1..N of a pool described by its answer groups.

    ``signature`` lists (count, correct) of every non-None answer. For a correct answer
    ``g`` drawn ``c`` times, the other answers are counted by the generating function
    ``prod_a f_a(z, u)`` with ``f_a = sum_{x<c} C(n_a, x) z^x + u C(n_a, c) z^c`` (no other
    answer above ``c``; ``u`` marks an answer tied at ``c``) times ``(1+z)^{n_none}``.
    The coefficient of ``z^{k-c} u^t``, times ``C(n_g, c) / (t+1)``, summed and divided
    by ``C(N, k)`` is the probability ``g`` wins. Answers drawn fewer than ``c`` times
    in the pool can never reach ``c``: they merge with the ``None`` answers into one
    binomial, so each ``c`` costs about ``N`` vector operations. Answers of equal count
    and correctness are interchangeable, so each distinct count is solved once.

    ``mode`` is ``float64``, ``longdouble`` (every term is a non-negative count, so
    floating point only rounds, it never cancels) or ``exact`` (Python integers, with
    numerators scaled by lcm(1..G) so the 1/(t+1) stay integral).
    """
    exact = mode == "exact"
    dtype = {"float64": np.float64, "longdouble": np.longdouble, "exact": object}[mode]
    counts = [n for n, _ in signature]
    n_total = sum(counts) + n_none
    correct_counts = Counter(n for n, ok in signature if ok)
    rows: dict[int, list] = {}

    def row(n: int) -> list:  # C(n, 0..n), one per distinct group size
        if n not in rows:
            rows[n] = _binomial_row(n, n, dtype)
        return rows[n]

    scale = math.lcm(*range(1, len(signature) + 1)) if exact and signature else 1
    numer = np.zeros(n_total + 1, dtype=dtype)

    for c in range(1, max(correct_counts, default=0) + 1):
        targets = sorted(n for n in correct_counts if n >= c)
        width = n_total - c  # z-degree: samples drawn besides the c copies of g
        free = n_none + sum(n for n in counts if n < c)
        big = [n for n in counts if n >= c]
        ties = min(len(big) - 1, width // c)
        base = np.zeros((width + 1, ties + 1), dtype=dtype)
        upto = min(free, width)
        base[: upto + 1, 0] = _binomial_row(free, upto, dtype)
        rest = list(big)
        for n in targets:  # one representative of each target count joins later
            rest.remove(n)
        for n in rest:
            base = _times_group(base, row(n), c)
        for n in targets:
            others = base
            for m in targets:
                if m != n:
                    others = _times_group(others, row(m), c)
            if exact:
                wins = sum(others[:, t] * (scale // (t + 1)) for t in range(others.shape[1]))
            else:
                wins = others @ (1 / np.arange(1, others.shape[1] + 1, dtype=dtype))
            numer[c:] += wins * (correct_counts[n] * row(n)[c])

    if none_ok and n_none:  # subsets of None answers only
        none_row = _binomial_row(n_none, n_none, dtype)
        for k in range(1, n_none + 1):
            numer[k] += none_row[k] * scale
    all_row = _binomial_row(n_total, n_total, object)
    if exact:
        return tuple(float(Fraction(int(numer[k]), scale * all_row[k]))
                     for k in range(1, n_total + 1))
    return tuple(min(1.0, float(numer[k] / dtype(all_row[k]))) for k in range(1, n_total + 1))


def _binomial_row(n: int, upto: int, dtype) -> list:
    """``[C(n, 0), ..., C(n, upto)]``: Python ints for ``object``, else rounded to dtype."""
    out = [1]
    for s in range(min(n, upto)):
        out.append(out[-1] * (n - s) // (s + 1))
    return out if dtype is object else [dtype(v) for v in out]


def _times_group(poly: np.ndarray, binomials: list, c: int) -> np.ndarray:
    """``poly * f`` for an answer with ``n >= c`` samples (``binomials`` = C(n, .))."""
    rows, cols = poly.shape
    out = np.zeros_like(poly)
    for x in range(min(c, rows)):
        out[x:] += poly[: rows - x] * binomials[x]
    if c < rows and cols > 1:
        out[c:, 1:] += poly[: rows - c, :-1] * binomials[c]
    return out


# --------------------------------------------------------------------------- best-of


def _key_value(sample: PoolSample, key: str) -> float:
    value = getattr(sample, key)
    if value is None:
        return -math.inf
    value = float(value)
    return -math.inf if math.isnan(value) else value


def expected_best_of(pool: Sequence[PoolSample], k: int, key: str = "score") -> Expected:
    """The sample with the highest ``key`` among ``k`` wins; exact closed form.

    ``key`` is ``score``, ``mean_logprob`` or ``sum_logprob``; ``None`` (and NaN) rank
    lowest, as ``-inf``. Ties go uniformly to one of the tied samples. A group of ``m``
    samples with equal key and ``L`` samples strictly below holds the subset's maximum
    with probability ``[C(L+m, k) - C(L, k)] / C(N, k)``; given that, the winner is
    uniform over the group, so it contributes the group's fraction correct.
    """
    if key not in BEST_OF_KEYS:
        raise StrategyError("unknown best-of key", where="key", value=key,
                            fix=f"use one of: {', '.join(BEST_OF_KEYS)}")
    pool = _check_pool(pool)
    k = _check_k(k, len(pool))
    groups: dict[float, list[int]] = {}
    for s in pool:
        g = groups.setdefault(_key_value(s, key), [0, 0])
        g[0] += 1
        g[1] += bool(s.correct)
    # Exact integer sums per group size m (few distinct sizes), one division each.
    # C(L, k) is walked up L = 0..N with one multiply-divide per sample.
    by_size: dict[int, int] = {}
    lower, below = 0, 0  # below = C(lower, k)
    for value in sorted(groups):
        m, ok = groups[value]
        upper = below
        for top in range(lower + 1, lower + m + 1):
            upper = 1 if top == k else upper * top // (top - k) if top > k else 0
        if ok and upper:
            by_size[m] = by_size.get(m, 0) + (upper - below) * ok
        lower, below = lower + m, upper
    total = sum((Fraction(v, m) for m, v in by_size.items()), Fraction(0))
    return _expected(pool, k, total / math.comb(len(pool), k))


# --------------------------------------------------------------------------- pass@k


def expected_pass_at(pool: Sequence[PoolSample], k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): P(at least one of ``k`` samples is correct)."""
    pool = _check_pool(pool)
    n = len(pool)
    k = _check_k(k, n)
    wrong = n - sum(bool(s.correct) for s in pool)
    return float(1 - Fraction(math.comb(wrong, k), math.comb(n, k)))


def pool_samples(ctx: "StrategyContext", completions: Sequence[Any]) -> list[PoolSample]:
    """The completions of one example read as sample-bank entries (answer, correctness,
    tokens, likelihoods)."""
    pool = []
    for c in completions:
        answer = ctx.extract(c.text)
        pool.append(PoolSample(
            answer=answer, correct=ctx.task.is_correct(ctx.example, answer),
            completion_tokens=c.num_tokens, mean_logprob=c.mean_logprob,
            sum_logprob=c.sum_logprob,
        ))
    return pool
