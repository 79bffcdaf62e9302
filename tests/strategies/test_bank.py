"""Expected accuracy from a sample pool, checked against brute-force enumeration.

The references below run the strategies' own rule -- the first of equal candidates wins --
on every k-subset in every order, with exact fractions, so they test the modelling claim
("a random k-subset in a random order") as well as the algebra. Property checks use seeded
random pools (hypothesis is not installed in this environment).
"""

from __future__ import annotations

import math
import random
from fractions import Fraction
from itertools import combinations, permutations

import numpy as np
import pytest

import jointopt.strategies.pool as bank
from jointopt.strategies.pool import (
    Expected,
    PoolSample,
    expected_best_of,
    expected_majority,
    expected_pass_at,
    expected_single,
    majority_curve,
)
from jointopt.strategies.pool_weighted import expected_weighted
from jointopt.errors import StrategyError

# ----------------------------------------------------------------------------- helpers

LABELS = ["a", "b", "c", "d"]


def random_pool(rng: random.Random, n: int, *, scores=(None, 0.0, 0.5, 1.0, 2.0),
                continuous_logprobs: bool = False) -> list[PoolSample]:
    """1-4 distinct answers, some None, any subset of answers correct, tied scores."""
    labels = LABELS[: rng.randint(1, 4)]
    good = {a for a in labels if rng.random() < 0.45}
    p_none = rng.choice([0.0, 0.15, 0.4])
    pool = []
    for _ in range(n):
        answer = None if rng.random() < p_none else rng.choice(labels)
        if continuous_logprobs:
            mean_lp = None if rng.random() < 0.1 else -rng.random() * 3
        else:
            mean_lp = rng.choice([None, -0.5, -1.0, -2.0])
        tokens = rng.randint(1, 50)
        pool.append(PoolSample(
            answer=answer, correct=answer in good, completion_tokens=tokens,
            mean_logprob=mean_lp,
            sum_logprob=None if mean_lp is None else mean_lp * tokens,
            score=rng.choice(scores),
        ))
    return pool


def first_seen_vote(samples, weights=None):
    """``jointopt.strategies.voting.plurality`` with exact weights: first of ties wins."""
    totals: dict = {}
    for i, s in enumerate(samples):
        if s.answer is not None:
            totals[s.answer] = totals.get(s.answer, 0) + (1 if weights is None else weights[i])
    if not totals:
        return None
    best = max(totals.values())
    return next(a for a, w in totals.items() if w == best)


def answer_correct(pool, answer) -> bool:
    return any(s.correct for s in pool if s.answer == answer)


def key_of(s, key):
    v = getattr(s, key)
    return -math.inf if v is None else v


def exact_weight(s, weight, top=0.0):
    v = getattr(s, weight)
    if v is None:
        return Fraction(0)
    if weight == "score":
        return Fraction(v)
    return Fraction(math.exp(v - top))


def brute_over_orders(pool, k, decide) -> Fraction:
    """Mean of ``decide(ordered samples)`` over every k-subset in every order."""
    total, count = Fraction(0), 0
    for combo in combinations(range(len(pool)), k):
        for order in permutations(combo):
            total += decide([pool[i] for i in order])
            count += 1
    return total / count


def decide_majority(pool):
    return lambda samples: int(answer_correct(pool, first_seen_vote(samples)))


def decide_best_of(key):
    # BestOfN: max() keeps the first of equal scores.
    return lambda samples: int(max(samples, key=lambda s: key_of(s, key)).correct)


def decide_weighted(pool, weight):
    # WeightedVote: a run in which no sample has logprobs counts every vote 1.
    def decide(samples):
        logs = [getattr(s, weight) for s in samples if getattr(s, weight) is not None]
        if weight != "score" and not logs:
            weights = [1] * len(samples)
        else:  # exp relative to the most likely sample, as WeightedVote does
            top = max(logs) if weight != "score" else 0.0
            weights = [exact_weight(s, weight, top) for s in samples]
        return int(answer_correct(pool, first_seen_vote(samples, weights)))
    return decide


def brute_majority_subsets(pool, k) -> Fraction:
    """Over k-subsets only, with the uniform-among-tied-answers rule."""
    total = Fraction(0)
    for combo in combinations(range(len(pool)), k):
        counts: dict = {}
        for i in combo:
            if pool[i].answer is not None:
                counts[pool[i].answer] = counts.get(pool[i].answer, 0) + 1
        if not counts:
            continue
        top = max(counts.values())
        tied = [a for a, c in counts.items() if c == top]
        total += Fraction(sum(answer_correct(pool, a) for a in tied), len(tied))
    return total / math.comb(len(pool), k)


def brute_best_of_subsets(pool, k, key) -> Fraction:
    total = Fraction(0)
    for combo in combinations(range(len(pool)), k):
        top = max(key_of(pool[i], key) for i in combo)
        tied = [i for i in combo if key_of(pool[i], key) == top]
        total += Fraction(sum(pool[i].correct for i in tied), len(tied))
    return total / math.comb(len(pool), k)


def simulate_majority(pool, k, draws, seed):
    """Independent Monte Carlo of the first-seen plurality (for pools too big to enumerate)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(draws):
        order = rng.permutation(len(pool))[:k]
        hits += answer_correct(pool, first_seen_vote([pool[i] for i in order]))
    return hits / draws


def seeded_pools(count, n_range, seed, **kw):
    rng = random.Random(seed)
    return [random_pool(rng, rng.randint(*n_range), **kw) for _ in range(count)]


# ----------------------------------------------------------------------------- brute force


@pytest.mark.parametrize("seed", range(40))
def test_majority_matches_every_subset_and_order(seed):
    rng = random.Random(seed)
    pool = random_pool(rng, rng.randint(1, 6 if seed % 8 else 7))
    for k in range(1, len(pool) + 1):
        expected = brute_over_orders(pool, k, decide_majority(pool))
        assert expected_majority(pool, k).accuracy == pytest.approx(float(expected), abs=1e-12)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("key", ["score", "mean_logprob", "sum_logprob"])
def test_best_of_matches_every_subset_and_order(seed, key):
    rng = random.Random(1000 + seed)
    pool = random_pool(rng, rng.randint(1, 6 if seed % 8 else 7))
    for k in range(1, len(pool) + 1):
        expected = brute_over_orders(pool, k, decide_best_of(key))
        assert expected_best_of(pool, k, key=key).accuracy == pytest.approx(
            float(expected), abs=1e-12)


@pytest.mark.parametrize("seed", range(30))
def test_weighted_score_matches_every_subset_and_order(seed):
    # Dyadic scores sum exactly in floats, so ties in the reference and in the bank agree;
    # tied answers often have unequal counts (e.g. 0.5 + 0.5 against 1.0).
    rng = random.Random(2000 + seed)
    pool = random_pool(rng, rng.randint(1, 6), scores=(None, 0.0, 0.5, 1.0, 2.0))
    for k in range(1, len(pool) + 1):
        expected = brute_over_orders(pool, k, decide_weighted(pool, "score"))
        got = expected_weighted(pool, k, "score")
        assert got.method == "exact"
        assert got.accuracy == pytest.approx(float(expected), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("weight", ["mean_logprob", "sum_logprob"])
def test_weighted_logprob_matches_every_subset_and_order(seed, weight):
    rng = random.Random(3000 + seed)
    pool = random_pool(rng, rng.randint(1, 6), continuous_logprobs=True)
    for k in range(1, len(pool) + 1):
        expected = brute_over_orders(pool, k, decide_weighted(pool, weight))
        assert expected_weighted(pool, k, weight).accuracy == pytest.approx(
            float(expected), abs=1e-12)


def test_weighted_tie_goes_to_the_answer_seen_first():
    # a: 0.5 + 0.5, b: 1.0 -> tied; in a random order a comes first with probability 2/3.
    pool = [PoolSample("a", True, 1, score=0.5), PoolSample("a", True, 1, score=0.5),
            PoolSample("b", False, 1, score=1.0)]
    assert expected_weighted(pool, 3, "score").accuracy == pytest.approx(2 / 3)
    brute = brute_over_orders(pool, 3, decide_weighted(pool, "score"))
    assert float(brute) == pytest.approx(2 / 3)


def test_weighted_ties_are_ties_of_real_sums_not_of_float_rounding():
    # 0.1 + 0.2 != 0.3 in floats, and (0.1 + 0.2) + 0.3 != 0.1 + (0.2 + 0.3): the sum
    # order would decide. The bank treats totals equal up to rounding as tied.
    pool = [PoolSample("a", True, 1, score=0.1), PoolSample("a", True, 1, score=0.2),
            PoolSample("b", False, 1, score=0.3)]
    assert expected_weighted(pool, 3, "score").accuracy == pytest.approx(2 / 3)
    pool = [PoolSample("a", True, 1, score=v) for v in (0.1, 0.2, 0.3)] + [
        PoolSample("b", False, 1, score=0.6)]
    assert expected_weighted(pool, 4, "score").accuracy == pytest.approx(3 / 4)


@pytest.mark.parametrize("seed", range(25))
def test_majority_and_best_of_match_subset_enumeration_up_to_n10(seed):
    rng = random.Random(4000 + seed)
    pool = random_pool(rng, rng.randint(7, 10))
    for k in range(1, len(pool) + 1):
        assert expected_majority(pool, k).accuracy == pytest.approx(
            float(brute_majority_subsets(pool, k)), abs=1e-12)
        assert expected_best_of(pool, k, "score").accuracy == pytest.approx(
            float(brute_best_of_subsets(pool, k, "score")), abs=1e-12)


def test_pass_at_matches_enumeration():
    for pool in seeded_pools(30, (1, 9), 5000):
        for k in range(1, len(pool) + 1):
            hit = sum(any(pool[i].correct for i in combo)
                      for combo in combinations(range(len(pool)), k))
            assert expected_pass_at(pool, k) == pytest.approx(
                hit / math.comb(len(pool), k), abs=1e-12)


# ----------------------------------------------------------------------------- hand-made


def test_majority_known_values():
    P = PoolSample
    # k=2 of {a, a, b}: {a,a} -> a; {a,b} twice -> tie, a with 1/2. (1 + 2*0.5) / 3.
    pool = [P("a", True, 1), P("a", True, 1), P("b", False, 1)]
    assert expected_majority(pool, 2).accuracy == pytest.approx(2 / 3)
    assert expected_majority(pool, 3).accuracy == 1.0
    # Several correct answers share the win; None never wins against an answer.
    pool = [P("a", True, 1), P("b", True, 1), P("c", False, 1), P(None, False, 1)]
    assert expected_majority(pool, 4).accuracy == pytest.approx(2 / 3)
    assert expected_majority(pool, 2).accuracy == pytest.approx(
        float(brute_majority_subsets(pool, 2)))
    # All-None subset answers None, which is wrong.
    pool = [P(None, False, 1), P(None, False, 1), P("a", True, 1)]
    assert expected_majority(pool, 2).accuracy == pytest.approx(2 / 3)
    assert expected_majority(pool, 1).accuracy == pytest.approx(1 / 3)


def test_none_answer_marked_correct_is_honoured_only_when_alone():
    # The strategies score a None answer with task.is_correct(None) like any other.
    P = PoolSample
    pool = [P(None, True, 1), P(None, True, 1), P("a", False, 1)]
    for k in range(1, 4):
        expected = float(brute_over_orders(pool, k, decide_majority(pool)))
        assert expected_majority(pool, k).accuracy == pytest.approx(expected)
        assert expected_weighted(pool, k, "score").accuracy == pytest.approx(expected)


def test_best_of_known_values():
    P = PoolSample
    pool = [P("a", False, 1, score=3.0), P("b", True, 1, score=1.0), P("c", True, 1),
            P("d", False, 1, score=1.0)]
    # k=4: the 3.0 sample always wins.
    assert expected_best_of(pool, 4).accuracy == 0.0
    # k=2: 3 of 6 pairs contain the 3.0 sample (wrong); {b,d} -> 1/2; {b,c} -> b; {c,d} -> d.
    assert expected_best_of(pool, 2).accuracy == pytest.approx((0.5 + 1) / 6)


def test_completion_tokens_are_k_times_the_pool_mean():
    pool = [PoolSample("a", True, 10), PoolSample("b", False, 30), PoolSample(None, False, 5)]
    mean = 45 / 3
    assert expected_single(pool).completion_tokens == pytest.approx(mean)
    for k in (1, 2, 3):
        for result in (expected_majority(pool, k), expected_best_of(pool, k),
                       expected_weighted(pool, k)):
            assert isinstance(result, Expected)
            assert result.completion_tokens == pytest.approx(k * mean)


def test_sum_logprob_weights_do_not_underflow():
    # exp(-2000) is 0.0 in floats; the ranking must survive, within every subset too.
    P = PoolSample
    pool = [P("a", True, 1, sum_logprob=-2000.0), P("b", False, 1, sum_logprob=-2100.0),
            P("b", False, 1, sum_logprob=-2100.0), P("c", True, 1, sum_logprob=-3000.0),
            P("d", False, 1, sum_logprob=-3001.0)]
    assert expected_weighted(pool, 5, "sum_logprob").accuracy == 1.0
    assert expected_weighted(pool, 2, "sum_logprob").accuracy == pytest.approx(
        float(brute_over_orders(pool, 2, decide_weighted(pool, "sum_logprob"))))
    # {c, d} alone: c is e times more likely and wins.
    assert expected_weighted(pool[3:], 2, "sum_logprob").accuracy == 1.0


@pytest.mark.parametrize("seed", range(10))
def test_weighted_subsets_without_logprobs_count_every_vote_one(seed):
    rng = random.Random(7000 + seed)
    pool = [PoolSample(s.answer, s.correct, s.completion_tokens,
                       mean_logprob=None if rng.random() < 0.6 else -rng.random())
            for s in random_pool(rng, rng.randint(2, 6))]
    for k in range(1, len(pool) + 1):
        expected = brute_over_orders(pool, k, decide_weighted(pool, "mean_logprob"))
        assert expected_weighted(pool, k).accuracy == pytest.approx(float(expected), abs=1e-12)
    bare = [PoolSample(s.answer, s.correct, 1) for s in pool]
    for k in range(1, len(pool) + 1):
        assert expected_weighted(bare, k).accuracy == pytest.approx(
            expected_majority(bare, k).accuracy, abs=1e-12)


# ----------------------------------------------------------------------------- properties


POOLS = seeded_pools(150, (1, 24), 6000)


def test_property_accuracies_are_probabilities_below_pass_at_k():
    for pool in POOLS:
        for k in range(1, len(pool) + 1):
            bound = expected_pass_at(pool, k) + 1e-9
            for value in (expected_majority(pool, k).accuracy,
                          expected_best_of(pool, k, "score").accuracy,
                          expected_best_of(pool, k, "mean_logprob").accuracy):
                assert 0.0 <= value <= bound


def test_property_k1_majority_equals_single():
    for pool in POOLS:
        single = expected_single(pool).accuracy
        assert expected_majority(pool, 1).accuracy == pytest.approx(single, abs=1e-12)
        assert expected_weighted(pool, 1).accuracy == pytest.approx(single, abs=1e-12)
        assert expected_best_of(pool, 1).accuracy == pytest.approx(single, abs=1e-12)
        assert expected_pass_at(pool, 1) == pytest.approx(single, abs=1e-12)


def test_property_k_equals_n_majority_is_the_tie_fraction():
    for pool in POOLS:
        counts: dict = {}
        for s in pool:
            if s.answer is not None:
                counts[s.answer] = counts.get(s.answer, 0) + 1
        if counts:
            top = max(counts.values())
            tied = [a for a, c in counts.items() if c == top]
            want = sum(answer_correct(pool, a) for a in tied) / len(tied)
        else:
            want = 0.0
        assert expected_majority(pool, len(pool)).accuracy == pytest.approx(want, abs=1e-12)


def test_property_best_of_with_equal_scores_is_single():
    for pool in POOLS:
        flat = [PoolSample(s.answer, s.correct, s.completion_tokens, score=0.25) for s in pool]
        single = expected_single(flat).accuracy
        for k in range(1, len(pool) + 1):
            assert expected_best_of(flat, k).accuracy == pytest.approx(single, abs=1e-12)


def test_property_weighted_with_equal_weights_is_majority():
    for pool in POOLS[:60]:
        flat = [PoolSample(s.answer, s.correct, s.completion_tokens, score=1.0) for s in pool]
        for k in range(1, len(pool) + 1):
            got = expected_weighted(flat, k, "score", max_exact=3000)
            want = expected_majority(pool, k).accuracy
            tol = 1e-12 if got.method == "exact" else 0.05
            assert got.accuracy == pytest.approx(want, abs=tol)


def test_property_order_of_the_pool_does_not_matter():
    rng = random.Random(7)
    for pool in POOLS[:40]:
        shuffled = list(pool)
        rng.shuffle(shuffled)
        for k in range(1, len(pool) + 1):
            assert majority_curve(pool)[k - 1] == pytest.approx(
                majority_curve(shuffled)[k - 1], abs=1e-12)
            assert expected_best_of(pool, k).accuracy == pytest.approx(
                expected_best_of(shuffled, k).accuracy, abs=1e-12)


def test_majority_curve_matches_per_k_calls():
    for pool in POOLS[:20]:
        curve = majority_curve(pool)
        assert len(curve) == len(pool)
        assert curve == tuple(expected_majority(pool, k).accuracy
                              for k in range(1, len(pool) + 1))


# ----------------------------------------------------------------------------- large pools


def big_pool(seed, n, n_answers, p_none=0.1):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(n_answers))
    good = set(rng.choice(n_answers, size=max(1, n_answers // 3), replace=False).tolist())
    pool = []
    for _ in range(n):
        if rng.random() < p_none:
            pool.append(PoolSample(None, False, 7))
        else:
            a = int(rng.choice(n_answers, p=probs))
            pool.append(PoolSample(f"x{a}", a in good, 7, score=float(rng.random())))
    return pool


def table(pool, mode):
    counts, correct = bank._groups(tuple(pool))
    n_none = counts.pop(None, 0)
    ok_none = correct.pop(None, False)
    sig = tuple(sorted((counts[a], correct[a]) for a in counts))
    return bank._majority_table(sig, n_none, ok_none, mode)


@pytest.mark.parametrize("seed,n,n_answers", [(1, 40, 6), (2, 90, 25), (3, 60, 60)])
def test_float_tables_equal_exact_integer_table(seed, n, n_answers):
    pool = big_pool(seed, n, n_answers)
    exact = table(pool, "exact")
    assert table(pool, "float64") == pytest.approx(exact, abs=1e-12)
    assert table(pool, "longdouble") == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("seed,n,k", [(11, 200, 9), (12, 300, 40), (13, 150, 150)])
def test_large_majority_agrees_with_simulation(seed, n, k):
    pool = big_pool(seed, n, 12)
    got = expected_majority(pool, k).accuracy
    draws = 4000
    sim = simulate_majority(pool, k, draws, seed)
    assert abs(got - sim) <= 5 * math.sqrt(max(got * (1 - got), 1e-3) / draws)


def test_pools_beyond_float64_range_switch_arithmetic():
    assert bank._number_mode(1000) == "float64"
    assert bank._number_mode(1001) in ("longdouble", "exact")
    assert bank._number_mode(10**6) == "exact"
    # C(1204, 602) ~ 1e361 overflows float64.
    pool = ([PoolSample("a", True, 1)] * 601 + [PoolSample(None, False, 1)] * 400
            + [PoolSample("b", False, 1)] * 3 + [PoolSample("c", True, 1)] * 200)
    curve = majority_curve(pool)
    assert curve[0] == pytest.approx(801 / 1204)
    assert curve[-1] == 1.0
    assert all(0.0 <= v <= 1.0 for v in curve)
    draws = 3000
    sim = simulate_majority(pool, 25, draws, seed=4)
    assert abs(curve[24] - sim) <= 5 * math.sqrt(curve[24] * (1 - curve[24]) / draws)


# ----------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("weight", ["mean_logprob", "score"])
def test_weighted_resampled_is_close_to_exact(weight):
    rng = random.Random(99)
    pool = random_pool(rng, 14, continuous_logprobs=True)
    pool = [PoolSample(s.answer, s.correct, s.completion_tokens, s.mean_logprob,
                       s.sum_logprob, rng.random()) for s in pool]
    for k in (3, 7, 11):
        exact = expected_weighted(pool, k, weight)
        assert exact.method == "exact"
        approx = expected_weighted(pool, k, weight, max_exact=10, resamples=20000, seed=3)
        assert approx.method == "resampled(20000)"
        assert approx.accuracy == pytest.approx(exact.accuracy, abs=0.015)
        again = expected_weighted(pool, k, weight, max_exact=10, resamples=20000, seed=3)
        assert again == approx  # seeded: deterministic


def test_weighted_switches_to_resampling_above_max_exact():
    pool = big_pool(5, 60, 8)
    result = expected_weighted(pool, 20, "score", resamples=500)
    assert result.method == "resampled(500)"
    assert 0.0 <= result.accuracy <= 1.0


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("call", [
    lambda p, k: expected_majority(p, k),
    lambda p, k: expected_best_of(p, k),
    lambda p, k: expected_weighted(p, k),
    lambda p, k: expected_pass_at(p, k),
])
def test_k_out_of_range_names_k_and_n(call):
    pool = [PoolSample("a", True, 1)] * 3
    for k in (0, -1, 4):
        with pytest.raises(StrategyError) as info:
            call(pool, k)
        text = str(info.value)
        assert text.startswith("k: `k` must be between 1 and the pool size N=3")
        assert f"(got {k})" in text
        if k > 3:
            assert "pool must grow" in info.value.fix
    with pytest.raises(StrategyError):
        call(pool, 2.0)
    with pytest.raises(StrategyError):
        call(pool, True)
    with pytest.raises(StrategyError) as info:
        call([], 1)
    assert "N=0" in str(info.value) and "pool must grow" in info.value.fix


def test_empty_pool_single_raises():
    with pytest.raises(StrategyError):
        expected_single([])


def test_bad_key_weight_and_settings():
    pool = [PoolSample("a", True, 1, score=1.0)] * 3
    with pytest.raises(StrategyError, match="best-of key"):
        expected_best_of(pool, 2, key="verifier")
    with pytest.raises(StrategyError, match="vote weight"):
        expected_weighted(pool, 2, weight="logprob")
    with pytest.raises(StrategyError, match="resamples"):
        expected_weighted(pool, 2, resamples=0)
    with pytest.raises(StrategyError, match="max_exact"):
        expected_weighted(pool, 2, max_exact=-1)
    negative = [PoolSample("a", True, 1, score=-0.5)] * 3
    with pytest.raises(StrategyError, match=">= 0"):
        expected_weighted(negative, 2, weight="score")


def test_inconsistent_correctness_is_rejected():
    pool = [PoolSample("a", True, 1), PoolSample("a", False, 1)]
    with pytest.raises(StrategyError, match="disagree"):
        expected_majority(pool, 1)
