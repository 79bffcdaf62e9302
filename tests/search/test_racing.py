"""Racing over examples: order, rungs and the paired domination test."""

from __future__ import annotations

from collections import Counter

import numpy as np

from jointopt.search.racing import (all_dominated, race_order, race_setting, rung_sizes)


def test_every_prefix_of_the_order_keeps_the_strata_proportions():
    strata = ["easy"] * 60 + ["hard"] * 30 + ["mid"] * 10
    order = race_order(strata, seed=3)
    assert sorted(order) == list(range(100))
    for size in (10, 20, 50):
        counts = Counter(strata[i] for i in order[:size])
        assert abs(counts["easy"] - 0.6 * size) <= 1
        assert abs(counts["hard"] - 0.3 * size) <= 1
    assert race_order(strata, seed=3) == order != race_order(strata, seed=4)


def test_rungs_grow_stay_below_the_whole_set_and_respect_the_minimum():
    assert rung_sizes(316, [0.1, 0.25, 0.5], 16) == [32, 79, 158]
    assert rung_sizes(40, [0.1, 0.25, 0.5], 16) == [16, 20]
    assert rung_sizes(16, [0.1, 0.5], 16) == []


def _rows(acc, tokens, m=200, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(m) < acc).astype(float), np.full(m, float(tokens))


def test_domination_needs_confidence_not_a_point_estimate():
    good = _rows(0.8, 100, seed=1)
    assert all_dominated([_rows(0.3, 150, seed=2)], [good], 0.99)
    # slightly worse on these examples, but within noise: not dominated
    close = (good[0].copy(), good[1] + 10)
    flip = np.flatnonzero(close[0])[:3]
    close[0][flip] = 0.0
    assert not all_dominated([close], [good], 0.99)
    # cheaper: never dominated by a costlier front point, however accurate
    assert not all_dominated([_rows(0.3, 50, seed=2)], [good], 0.99)
    # every variant must be dominated
    assert not all_dominated([_rows(0.3, 150, seed=2), _rows(0.9, 150, seed=3)], [good], 0.99)
    assert not all_dominated([_rows(0.3, 150)], [], 0.99)


def test_a_race_stops_at_the_first_rung_that_settles_it():
    front = [_rows(0.8, 100, m=300, seed=1)]
    bad = _rows(0.2, 130, m=300, seed=5)
    seen = []

    def score(prefix):
        seen.append(len(prefix))
        return [(bad[0][prefix], bad[1][prefix])]

    def front_rows(prefix):
        return [(c[prefix], t[prefix]) for c, t in front]

    result = race_setting(score, front_rows, list(range(300)), [30, 75, 150], 0.99)
    assert result.stopped_at == 30 and seen == [30]
    good = _rows(0.85, 90, m=300, seed=6)
    survived = race_setting(lambda p: [(good[0][p], good[1][p])], front_rows,
                            list(range(300)), [30, 75, 150], 0.99)
    assert survived.stopped_at is None and survived.rungs == (30, 75, 150)
