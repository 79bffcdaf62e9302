"""Statistics of certification (jointopt.evaluation.risk): against scipy, hand-computed
values, and simulations whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from jointopt.errors import ConfigError, DataError
from jointopt.evaluation.risk import (
    BernoulliConfidenceSequence,
    accuracy_lower_bound,
    accuracy_pvalue,
    binomial_pvalue,
    binomial_tail,
    fixed_sequence,
    hoeffding_bentkus_pvalue,
)


@pytest.mark.parametrize("k,n,p", [(0, 10, 0.3), (7, 10, 0.5), (95, 100, 0.9),
                                   (480, 500, 0.9), (500, 500, 0.9), (1, 1, 0.2),
                                   (40, 1000, 0.01), (990, 1000, 0.95)])
def test_binomial_tails_match_scipy(k, n, p):
    assert binomial_tail(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), rel=1e-9,
                                                   abs=1e-300)
    assert binomial_tail(k, n, p, upper=False) == pytest.approx(stats.binom.cdf(k, n, p),
                                                                rel=1e-9, abs=1e-300)


def test_binomial_pvalue_is_the_upper_tail_at_the_target():
    # 19 of 20 correct against 0.8: P(X >= 19) = 20 * .8^19 * .2 + .8^20
    expected = 20 * 0.8 ** 19 * 0.2 + 0.8 ** 20
    assert binomial_pvalue(19, 20, 0.8) == pytest.approx(expected, rel=1e-12)
    assert binomial_pvalue(0, 20, 0.8) == 1.0


def test_hoeffding_bentkus_against_hand_computed_values():
    # n = 100, mean 0.95 (error 0.05), target 0.9 (alpha 0.1).
    kl = 0.05 * math.log(0.05 / 0.1) + 0.95 * math.log(0.95 / 0.9)
    hoeffding = math.exp(-100 * kl)
    bentkus = math.e * sum(math.comb(100, j) * 0.1 ** j * 0.9 ** (100 - j) for j in range(6))
    assert hoeffding_bentkus_pvalue(0.95, 100, 0.9) == pytest.approx(min(hoeffding, bentkus),
                                                                     rel=1e-9)
    assert bentkus < hoeffding  # here the Bentkus term decides: 0.1565 vs 0.1995
    assert bentkus == pytest.approx(math.e * stats.binom.cdf(5, 100, 0.1), rel=1e-9)
    assert bentkus == pytest.approx(0.15651, abs=1e-5)
    # a mean at or below the target gives no evidence
    assert hoeffding_bentkus_pvalue(0.9, 100, 0.9) == 1.0
    assert hoeffding_bentkus_pvalue(0.5, 100, 0.9) == 1.0


def test_auto_method_and_its_checks():
    assert accuracy_pvalue([1, 1, 0, 1], 0.5)[1] == "binomial"
    p, method = accuracy_pvalue([1.0, 0.75, 1.0, 0.5], 0.5)
    assert method == "hoeffding_bentkus" and 0 < p <= 1
    with pytest.raises(DataError, match="0/1"):
        accuracy_pvalue([0.5], 0.5, "binomial")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        accuracy_pvalue([1.5], 0.5)
    with pytest.raises(ConfigError, match="target"):
        accuracy_pvalue([1], 1.0)
    with pytest.raises(ConfigError, match="unknown p-value method"):
        accuracy_pvalue([1], 0.5, "bonferroni")


def test_lower_bound_is_clopper_pearson_for_binary_outcomes():
    values = [1] * 90 + [0] * 10
    cp = stats.beta.ppf(0.05, 90, 11)
    assert accuracy_lower_bound(values, 0.05) == pytest.approx(cp, abs=1e-6)


def test_fixed_sequence_stops_at_the_first_failure():
    assert fixed_sequence([0.001, 0.02, 0.2, 0.001], 0.05) == 2
    assert fixed_sequence([0.3, 0.001], 0.05) == 0
    assert fixed_sequence([], 0.05) == 0


@pytest.mark.parametrize("method", ["binomial", "hoeffding_bentkus"])
def test_pvalues_are_valid_in_simulation(method):
    """At the null boundary (true accuracy = target) rejections happen at most `risk` of
    the time; above it, often."""
    rng = np.random.default_rng(0)
    target, risk, n = 0.8, 0.1, 200
    null = [accuracy_pvalue(rng.random(n) < target, target, method)[0] <= risk
            for _ in range(2000)]
    assert np.mean(null) <= risk + 0.015
    good = [accuracy_pvalue(rng.random(n) < 0.9, target, method)[0] <= risk
            for _ in range(300)]
    assert np.mean(good) > 0.8


def test_fixed_sequence_controls_the_family_wise_error_in_simulation():
    """Candidates ordered from most to least accurate; the truth is known: every
    certified candidate whose true accuracy is below target is an error."""
    rng = np.random.default_rng(1)
    truth = np.array([0.95, 0.92, 0.90, 0.88, 0.85, 0.7])
    target, risk, n = 0.9, 0.1, 300
    errors = 0
    runs = 1500
    for _ in range(runs):
        successes = rng.binomial(n, truth)
        pvals = [binomial_pvalue(int(s), n, target) for s in successes]
        certified = fixed_sequence(pvals, risk)
        errors += bool(np.any(truth[:certified] < target))
    assert errors / runs <= risk + 0.015


def test_confidence_sequence_covers_uniformly_over_time():
    rng = np.random.default_rng(2)
    cs = BernoulliConfidenceSequence(risk=0.1)
    truth, misses, runs, horizon = 0.7, 0, 200, 400
    checkpoints = range(10, horizon + 1, 10)
    for _ in range(runs):
        outcomes = np.cumsum(rng.random(horizon) < truth)
        for t in checkpoints:
            low, high = cs.interval(int(outcomes[t - 1]), t)
            if not low <= truth <= high:
                misses += 1
                break
    assert misses / runs <= 0.1


def test_confidence_sequence_shape_and_violation():
    cs = BernoulliConfidenceSequence(risk=0.05)
    assert cs.interval(0, 0) == (0.0, 1.0)
    low, high = cs.interval(50, 100)
    assert low < 0.5 < high and high - low < 0.4
    assert cs.interval(0, 10)[0] == 0.0 and cs.interval(10, 10)[1] == 1.0
    # it is wider than a fixed-n interval (the price of looking any time)
    assert low < stats.beta.ppf(0.025, 50, 51)
    assert cs.violates(60, 100, 0.9) and not cs.violates(88, 100, 0.9)
    with pytest.raises(ConfigError, match="risk"):
        BernoulliConfidenceSequence(risk=0)
