"""The pool estimators of :mod:`jointopt.strategies.pool`, vectorised over examples.

Each function takes the pools of many examples (:class:`~jointopt.core.pool_data.PoolData`)
and one ``k`` and returns the expected accuracy per pool, under the same model and
tie-breaking as the scalar estimators (which stay the reference: tests hold the two equal
to 1e-12 and to brute force over subsets):

* ``single``: the fraction of correct samples;
* majority@k: the generating function of the scalar table, truncated at ``z^k`` and
  evaluated for all pools at once (rows of group counts, padded with zeros), with one
  marker for answers tied at the top count and one for the correct ones among them (see
  :func:`_majority_rows`); a pool too large for float64 binomials (``N > 1000``) is scored
  by the scalar table;
* best-of-k: the closed form of :func:`~jointopt.strategies.pool.expected_best_of` on
  rows of per-sample keys sorted once;
* pass@k: ``1 - C(wrong, k) / C(N, k)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

import numpy as np

from jointopt.core.pool_data import PoolData
from jointopt.errors import StrategyError
from jointopt.strategies.pool import _FLOAT_MAX_N, _majority_table, _number_mode

__all__ = ["batch_single", "batch_majority", "batch_best_of", "batch_pass_at",
           "batch_tokens", "expanded_groups", "expected_list", "group_views",
           "sample_answers", "sample_views"]



def _check_k(k: int, pools: Sequence[PoolData]) -> None:
    for i, p in enumerate(pools):
        if not 1 <= k <= p.samples:
            raise StrategyError(
                f"`k` must be between 1 and the pool size N={p.samples}", where=f"pools[{i}]",
                value=k, fix=f"the pool must grow to at least k={k} samples (raise the pool "
                             "size)" if k > p.samples else "use k >= 1")


def batch_tokens(pools: Sequence[PoolData], k: int) -> np.ndarray:
    """Expected completion tokens of ``k`` samples: ``k`` times the pool mean."""
    return np.array([k * p.mean_completion_tokens for p in pools], dtype=np.float64)


def batch_single(pools: Sequence[PoolData]) -> np.ndarray:
    """Accuracy of one sample: the fraction of the pool that is correct."""
    return np.array([int(p.counts[p.correct].sum()) / p.samples for p in pools])


def batch_pass_at(pools: Sequence[PoolData], k: int) -> np.ndarray:
    """Unbiased pass@k of every pool."""
    _check_k(k, pools)
    return np.array([float(1 - Fraction(math.comb(p.samples - int(p.counts[p.correct].sum()), k),
                                        math.comb(p.samples, k))) for p in pools])


# --------------------------------------------------------------------------- majority


@lru_cache(maxsize=64)
def _binomials(n_max: int, k: int) -> np.ndarray:
    """``C(n, x)`` for n <= n_max, x <= k, as float64 (exact below 2**53, else rounded)."""
    table = np.zeros((n_max + 1, k + 1), dtype=np.float64)
    for n in range(n_max + 1):
        for x in range(min(n, k) + 1):
            table[n, x] = float(math.comb(n, x))
    return table


def _split(pool: PoolData) -> tuple[list[int], list[bool], int, bool]:
    """Counts and correctness of the non-None groups; the None group's count and flag."""
    counts, correct, n_none, none_ok = [], [], 0, False
    for answer, n, ok in zip(pool.answers, pool.counts.tolist(), pool.correct.tolist()):
        if answer is None:
            n_none, none_ok = n, ok
        elif n:
            counts.append(n)
            correct.append(ok)
    return counts, correct, n_none, none_ok


def _scalar_majority(counts: list[int], correct: list[bool], n_none: int, none_ok: bool,
                     k: int) -> float:
    signature = tuple(sorted(zip(counts, correct)))
    n = sum(counts) + n_none
    return _majority_table(signature, n_none, none_ok, _number_mode(n))[k - 1]


def batch_majority(pools: Sequence[PoolData], k: int) -> np.ndarray:
    """Exact majority@k of every pool (plurality of ``k`` random samples; see module)."""
    _check_k(k, pools)
    out = np.empty(len(pools), dtype=np.float64)
    split = [_split(p) for p in pools]
    small = []
    for i, (counts, correct, n_none, none_ok) in enumerate(split):
        if pools[i].samples > _FLOAT_MAX_N:
            out[i] = _scalar_majority(counts, correct, n_none, none_ok, k)
        else:
            small.append(i)
    if small:
        width = max(1, max(len(split[i][0]) for i in small))
        counts = np.zeros((len(small), width), dtype=np.int64)
        correct = np.zeros((len(small), width), dtype=bool)
        for row, i in enumerate(small):
            order = sorted(range(len(split[i][0])), key=lambda j: -split[i][0][j])
            counts[row, :len(order)] = [split[i][0][j] for j in order]
            correct[row, :len(order)] = [split[i][1][j] for j in order]
        n_none = np.array([split[i][2] for i in small], dtype=np.int64)
        none_ok = np.array([split[i][3] for i in small], dtype=bool)
        out[small] = _majority_rows(counts, correct, n_none, none_ok, k)
    return out


def _majority_rows(counts: np.ndarray, correct: np.ndarray, n_none: np.ndarray,
                   none_ok: np.ndarray, k: int) -> np.ndarray:
    """Majority@k of pools given as rows of group counts sorted high to low (zeros pad).

    For each top count ``c``, the generating function of the groups that can reach ``c``
    (``sum_{x<c} C(n, x) z^x + u v^ok C(n, c) z^c``; ``u`` counts groups tied at ``c``,
    ``v`` the correct ones among them) times ``(1 + z)^free`` for the samples that cannot
    (``None`` and groups smaller than ``c``) gives, at ``z^k u^t v^s``, the number of
    ``k``-subsets whose plurality is ``c`` with ``t`` answers tied there, ``s`` of them
    correct: such a subset is answered correctly with probability ``s / t``.
    """
    e = counts.shape[0]
    table = _binomials(int(max(counts.max(), (counts.sum(1) + n_none).max())), k)
    numer = np.zeros(e, dtype=np.float64)
    for c in range(1, k + 1):
        big = counts >= c
        n_big = int(big.sum(axis=1).max())
        if n_big == 0:
            break
        free = n_none + np.where(big, 0, counts).sum(axis=1)
        ties = min(n_big, k // c) + 1
        oks = min(int((big & correct).sum(axis=1).max()), k // c) + 1
        poly = np.zeros((e, k + 1, ties, oks), dtype=np.float64)
        poly[:, :, 0, 0] = table[free]
        for j in range(n_big):
            n_j = np.where(big[:, j], counts[:, j], 0)
            coef = table[n_j]  # (e, k+1): C(n_j, x)
            new = np.zeros_like(poly)
            for x in range(min(c, k + 1)):
                new[:, x:] += poly[:, :k + 1 - x] * coef[:, x, None, None, None]
            top = coef[:, c, None, None]
            ok = correct[:, j] & big[:, j]
            wrong_top = np.where(ok, 0.0, 1.0)[:, None, None] * top
            right_top = np.where(ok, 1.0, 0.0)[:, None, None] * top
            new[:, c:, 1:, :] += poly[:, :k + 1 - c, :-1, :] * wrong_top[:, None]
            if oks > 1:
                new[:, c:, 1:, 1:] += poly[:, :k + 1 - c, :-1, :-1] * right_top[:, None]
            poly = new
        t = np.arange(ties, dtype=np.float64)
        share = np.arange(oks, dtype=np.float64)[None, :] / np.maximum(t, 1)[:, None]
        share[0] = 0.0
        numer += (poly[:, k] * share).sum(axis=(1, 2))
    numer += np.where(none_ok, table[n_none, k], 0.0)  # subsets of None answers only
    totals = np.array([float(math.comb(int(n), k)) for n in counts.sum(axis=1) + n_none])
    return np.minimum(numer / totals, 1.0)


# --------------------------------------------------------------------------- best-of


def expanded_groups(pool: PoolData) -> np.ndarray:
    """The group of every sample: the recorded order, or for a histogram pool each
    group repeated by its count (the order does not change any estimate)."""
    if pool.sample_group is not None:
        return pool.sample_group
    return np.repeat(np.arange(len(pool.answers)), pool.counts)


@lru_cache(maxsize=1024)
def _subset_share(n: int, k: int) -> np.ndarray:
    """``C(j, k) / C(n, k)`` for j = 0..n (the chance that a k-subset lies in the j lowest)."""
    total = math.comb(n, k)
    return np.array([float(Fraction(math.comb(j, k), total)) for j in range(n + 1)])


def batch_best_of(pools: Sequence[PoolData], k: int,
                  keys: Sequence[np.ndarray | None]) -> np.ndarray:
    """Best-of-k: the sample with the highest key among ``k`` wins, ties uniform.

    ``keys[i]`` holds one value per sample of ``pools[i]`` (in the order of
    :func:`expanded_groups`; None: no sample has one); NaN ranks lowest, as ``-inf``.
    """
    _check_k(k, pools)
    out = np.empty(len(pools), dtype=np.float64)
    by_size: dict[int, list[int]] = {}
    for i, p in enumerate(pools):
        by_size.setdefault(p.samples, []).append(i)
    for n, idx in by_size.items():
        key = np.array([np.full(n, np.nan) if keys[i] is None else keys[i] for i in idx],
                       dtype=np.float64).reshape(len(idx), n)
        key = np.where(np.isnan(key), -np.inf, key)
        ok = np.array([pools[i].correct[expanded_groups(pools[i])] for i in idx],
                      dtype=np.float64).reshape(len(idx), n)
        order = np.argsort(key, axis=1, kind="stable")
        key = np.take_along_axis(key, order, axis=1)
        ok = np.take_along_axis(ok, order, axis=1)
        first = np.ones_like(key, dtype=bool)
        first[:, 1:] = key[:, 1:] != key[:, :-1]
        last = np.ones_like(first)
        last[:, :-1] = first[:, 1:]
        pos = np.arange(n)
        start = np.maximum.accumulate(np.where(first, pos, 0), axis=1)
        end = np.minimum.accumulate(np.where(last, pos + 1, n)[:, ::-1], axis=1)[:, ::-1]
        share = _subset_share(n, k)
        weight = (share[end] - share[start]) / (end - start)
        out[idx] = (weight * ok).sum(axis=1)
    return out


# --------------------------------------------------------------------------- helpers


class _SampleView:
    """What scorers read of a completion when only a bank's arrays are known."""

    __slots__ = ("mean_logprob", "sum_logprob", "logprobs", "text", "token_ids")

    def __init__(self, mean: float, total: float) -> None:
        self.mean_logprob = None if math.isnan(mean) else mean
        self.sum_logprob = None if math.isnan(total) else total
        self.logprobs = None if self.sum_logprob is None else (self.sum_logprob,)
        self.text = ""
        self.token_ids = ()


def sample_answers(pool: PoolData) -> list[str | None]:
    """The answer of every sample (in the order of :func:`expanded_groups`)."""
    return [pool.answers[g] for g in expanded_groups(pool).tolist()]


def sample_views(pool: PoolData) -> list:
    """The completions behind the samples, or views of their logprobs (``mean_logprob``,
    ``sum_logprob``) when the pool carries no completions."""
    if pool.completions is not None:
        return list(pool.completions)
    n = pool.samples
    mean = pool.mean_logprob if pool.mean_logprob is not None else np.full(n, np.nan)
    total = pool.sum_logprob if pool.sum_logprob is not None else np.full(n, np.nan)
    return [_SampleView(m, t) for m, t in zip(mean.tolist(), total.tolist())]


def group_views(pool: PoolData) -> list[tuple["_SampleView", str | None]]:
    """One (view without logprobs, answer) per group of a histogram pool."""
    return [(_SampleView(math.nan, math.nan), answer) for answer in pool.answers]


def expected_list(pools: Sequence[PoolData], k: int, accuracy: np.ndarray,
                  method: str = "exact") -> list:
    """:class:`~jointopt.strategies.pool.Expected` values (``k`` times the pool's mean tokens)."""
    from jointopt.strategies.pool import Expected

    tokens = batch_tokens(pools, k)
    return [Expected(accuracy=float(a), completion_tokens=float(t), method=method)
            for a, t in zip(accuracy.tolist(), tokens.tolist())]
