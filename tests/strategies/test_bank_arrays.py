"""The array estimators equal the scalar ones and brute force over every k-subset."""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from jointopt.core.pool_data import PoolData, pool_data_from_samples
from jointopt.strategies.pool import (PoolSample, expected_best_of, expected_majority,
                                      expected_pass_at, expected_single)
from jointopt.strategies.pool_arrays import (batch_best_of, batch_majority, batch_pass_at,
                                             batch_single)
from jointopt.strategies.pool_weighted import expected_weighted


def _pools(seed: int, count: int = 60, max_n: int = 12):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(1, max_n + 1))
        groups = int(rng.integers(1, 6))
        answers = [None if g == groups else f"a{g}" for g in rng.integers(0, groups + 1, n)]
        right = {a: bool(rng.random() < 0.4) for a in set(answers)}
        right[None] = bool(rng.random() < 0.1) if None in right else False
        # coarse logprobs make ties between samples common
        logs = [float(rng.choice([-2.0, -1.0, -0.5])) if rng.random() < 0.8 else None
                for _ in answers]
        samples = [PoolSample(a, right[a], int(rng.integers(1, 20)), mean_logprob=m,
                              sum_logprob=None if m is None else 3 * m, score=m)
                   for a, m in zip(answers, logs)]
        data = pool_data_from_samples(
            answers, [right[a] for a in answers], [s.completion_tokens for s in samples],
            mean_logprob=logs, sum_logprob=[s.sum_logprob for s in samples], score=logs)
        out.append((samples, data))
    return out


def _brute_majority(samples, k):
    """Plurality over every k-subset; ties split evenly; None never votes."""
    total = 0.0
    for subset in combinations(samples, k):
        votes = Counter(s.answer for s in subset if s.answer is not None)
        if not votes:
            total += float(subset[0].correct)  # only None answers: answer None
            continue
        top = max(votes.values())
        tied = [a for a, c in votes.items() if c == top]
        ok = {s.answer: s.correct for s in subset}
        total += sum(ok[a] for a in tied) / len(tied)
    return total / math.comb(len(samples), k)


def _brute_best_of(samples, k):
    total = 0.0
    for subset in combinations(samples, k):
        keys = [-math.inf if s.score is None else s.score for s in subset]
        top = max(keys)
        tied = [s for s, key in zip(subset, keys) if key == top]
        total += sum(s.correct for s in tied) / len(tied)
    return total / math.comb(len(samples), k)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_majority_best_of_pass_and_single_equal_scalar_and_brute_force(seed):
    pools = _pools(seed)
    for k in range(1, 9):
        chosen = [(s, d) for s, d in pools if len(s) >= k]
        data = [d for _, d in chosen]
        majority = batch_majority(data, k)
        best = batch_best_of(data, k, [d.score for d in data])
        passes = batch_pass_at(data, k)
        for i, (samples, _) in enumerate(chosen):
            assert majority[i] == pytest.approx(expected_majority(samples, k).accuracy,
                                                abs=1e-12)
            assert best[i] == pytest.approx(expected_best_of(samples, k).accuracy, abs=1e-12)
            assert passes[i] == pytest.approx(expected_pass_at(samples, k), abs=1e-12)
            if len(samples) <= 10:
                assert majority[i] == pytest.approx(_brute_majority(samples, k), abs=1e-12)
                assert best[i] == pytest.approx(_brute_best_of(samples, k), abs=1e-12)
    single = batch_single([d for _, d in pools])
    assert single.tolist() == [expected_single(s).accuracy for s, _ in pools]


def test_histogram_pools_equal_the_same_samples_one_by_one():
    for samples, data in _pools(5, count=30):
        hist = PoolData(answers=data.answers, counts=data.counts, correct=data.correct,
                        mean_completion_tokens=data.mean_completion_tokens)
        for k in range(1, min(len(samples), 6) + 1):
            assert batch_majority([hist], k)[0] == pytest.approx(
                batch_majority([data], k)[0], abs=1e-15)


def test_large_pools_of_many_answers_and_float64_limit():
    rng = np.random.default_rng(9)
    samples = [PoolSample(f"a{int(x)}", int(x) == 0, 5) for x in rng.integers(0, 40, 300)]
    data = pool_data_from_samples([s.answer for s in samples], [s.correct for s in samples],
                                  [5] * 300)
    for k in (1, 7, 31):
        assert batch_majority([data], k)[0] == pytest.approx(
            expected_majority(samples, k).accuracy, abs=1e-12)
    big = PoolData(answers=("a", "b"), counts=np.array([700, 500]),
                   correct=np.array([True, False]), mean_completion_tokens=1.0)
    scalar = expected_majority([PoolSample("a", True, 1)] * 700 +
                               [PoolSample("b", False, 1)] * 500, 15).accuracy
    assert batch_majority([big], 15)[0] == pytest.approx(scalar, abs=1e-12)


def test_weighted_vote_from_arrays_equals_the_scalar_estimator():
    from jointopt.strategies.weighted import WeightedVote

    for weight in ("mean_logprob", "sum_logprob"):
        strategy = WeightedVote(n=3, weight=weight)
        pools = [(s, d) for s, d in _pools(7, count=25) if len(s) >= 3]
        got = strategy.score_pool_batch([d for _, d in pools], [None] * len(pools))
        for (samples, _), exp in zip(pools, got):
            want = expected_weighted(samples, 3, weight=weight)
            assert exp.accuracy == pytest.approx(want.accuracy, abs=1e-12)
            assert exp.completion_tokens == pytest.approx(want.completion_tokens, abs=1e-12)


def test_resampled_weighted_vote_draws_the_scalar_subsets():
    from jointopt.strategies.weighted import WeightedVote

    rng = np.random.default_rng(11)
    pools = []
    for _ in range(6):
        answers = [f"a{int(x)}" for x in rng.integers(0, 4, 40)]
        logs = [float(-rng.random()) for _ in answers]
        samples = [PoolSample(a, a == "a0", 5, mean_logprob=m) for a, m in zip(answers, logs)]
        pools.append((samples, pool_data_from_samples(answers, [a == "a0" for a in answers],
                                                      [5] * 40, mean_logprob=logs)))
    got = WeightedVote(n=8).score_pool_batch([d for _, d in pools], [None] * len(pools))
    for (samples, _), exp in zip(pools, got):
        want = expected_weighted(samples, 8)
        assert exp.method == want.method == "resampled(4000)"
        assert exp.accuracy == pytest.approx(want.accuracy, abs=1e-12)
