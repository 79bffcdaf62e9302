"""Learn-then-Test certification over candidates (jointopt.evaluation.certificate)."""

from __future__ import annotations

import numpy as np
import pytest

from jointopt.errors import ConfigError, DataError
from jointopt.evaluation.certificate import CertCandidate, certify_candidates
from jointopt.evaluation.risk import binomial_pvalue


def _cand(key, cost, dev, correct, n=200):
    return CertCandidate(key=key, cost=cost, dev_accuracy=dev,
                         outcomes=tuple([1.0] * correct + [0.0] * (n - correct)))


def test_tests_from_the_safest_and_certifies_the_cheapest_passing():
    cands = [_cand(0, 10, 0.80, 150), _cand(1, 20, 0.88, 176), _cand(2, 40, 0.93, 192),
             _cand(3, 80, 0.96, 197)]
    result = certify_candidates(cands, 0.9, 0.05)
    assert [t.key for t in result.tested] == [3, 2, 1]  # stops at the first failure
    assert [t.certified for t in result.tested] == [True, True, False]
    assert result.chosen == 2 and result.method == "binomial"
    assert result.tested[1].p_value == pytest.approx(binomial_pvalue(192, 200, 0.9))
    assert result.tested[2].p_value > 0.05
    assert 0.9 < result.tested[0].lower_bound < 197 / 200
    data = result.to_dict()
    assert data["chosen_trial"] == 2 and len(data["tested"]) == 3


def test_fixed_sequence_does_not_skip_a_failure():
    # the cheap candidate would pass on its own, but the sequence stopped before it
    cands = [_cand(0, 10, 0.90, 199), _cand(1, 50, 0.95, 150)]
    result = certify_candidates(cands, 0.9, 0.05)
    assert result.chosen is None and len(result.tested) == 1
    assert result.closest.key == 1 and result.closest.lower_bound < 0.9


def test_per_bin_targets_take_the_largest_p_value():
    outcomes = tuple([1.0] * 100 + [1.0] * 70 + [0.0] * 30)
    labels = ["easy"] * 100 + ["hard"] * 100
    cand = CertCandidate(key=5, cost=1.0, dev_accuracy=0.9, outcomes=outcomes)
    ok = certify_candidates([cand], None, 0.05, bin_targets={"easy": 0.9, "hard": 0.6},
                            labels=labels)
    assert ok.chosen == 5 and set(ok.tested[0].bin_p_values) == {"easy", "hard"}
    strict = certify_candidates([cand], 0.8, 0.05, bin_targets={"hard": 0.7}, labels=labels)
    assert strict.chosen is None
    assert strict.tested[0].p_value == pytest.approx(strict.tested[0].bin_p_values["hard"])
    with pytest.raises(ConfigError, match="no calibration example"):
        certify_candidates([cand], 0.8, 0.05, bin_targets={"medium": 0.7}, labels=labels)


def test_bad_inputs_are_refused():
    with pytest.raises(ConfigError, match="no candidate"):
        certify_candidates([], 0.9, 0.05)
    with pytest.raises(ConfigError, match="nothing to certify"):
        certify_candidates([_cand(0, 1, 1, 5, 5)], None, 0.05)
    with pytest.raises(DataError, match="one outcome per"):
        certify_candidates([_cand(0, 1, 1, 5, 5), _cand(1, 1, 1, 5, 6)], 0.9, 0.05)
    with pytest.raises(ConfigError, match="risk"):
        certify_candidates([_cand(0, 1, 1, 5, 5)], 0.9, 1.5)


def test_pooled_outcomes_use_hoeffding_bentkus():
    rng = np.random.default_rng(0)
    cand = CertCandidate(key=0, cost=1, dev_accuracy=1,
                         outcomes=tuple(np.clip(rng.normal(0.97, 0.02, 400), 0, 1)))
    result = certify_candidates([cand], 0.9, 0.05)
    assert result.method == "hoeffding_bentkus" and result.chosen == 0
