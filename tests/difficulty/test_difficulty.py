"""Difficulty bins: oracle quantile bins, the probe signal, the text predictor, agreement."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest

from jointopt.strategies.pool import PoolSample
from jointopt.difficulty.sources import (
    Agreement,
    DifficultyPredictor,
    agreement,
    bin_of,
    fit_thresholds,
    oracle_bins,
    pass_rates_from_pools,
    probe_signal,
    text_features,
)
from jointopt.errors import ConfigError
from jointopt.tasks import Example

# ----------------------------------------------------------------------------- oracle


def test_oracle_bins_equal_sizes_and_order():
    rates = {f"e{i}": i / 9 for i in range(10)}  # e9 easiest, e0 hardest
    bins = oracle_bins(rates, 5)
    assert Counter(bins.values()) == {str(b): 2 for b in range(1, 6)}
    assert bins["e9"] == bins["e8"] == "1"
    assert bins["e0"] == bins["e1"] == "5"
    # monotone: higher pass rate never gets a harder bin
    ids = sorted(rates, key=rates.get, reverse=True)
    nums = [int(bins[i]) for i in ids]
    assert nums == sorted(nums)
    assert list(bins) == list(rates)  # keeps input order


def test_oracle_bins_uneven_counts():
    rates = {f"e{i}": i / 6 for i in range(7)}
    bins = oracle_bins(rates, 5)
    sizes = Counter(bins.values())
    assert set(sizes) == {"1", "2", "3", "4", "5"}
    assert max(sizes.values()) - min(sizes.values()) <= 1
    assert bins["e6"] == "1" and bins["e0"] == "5"


def test_oracle_bins_ties_share_a_bin():
    rates = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.5, "e": 0.0, "f": 0.0}
    bins = oracle_bins(rates, 3)
    assert bins["a"] == bins["b"] == bins["c"] == "1"
    assert bins["e"] == bins["f"]
    assert int(bins["d"]) <= int(bins["e"])
    # 3 groups starting at positions 0, 3, 4 of 6 -> bins 1, 2, 3
    assert bins == {"a": "1", "b": "1", "c": "1", "d": "2", "e": "3", "f": "3"}


def test_oracle_bins_fewer_distinct_values_use_fewer_bins():
    rates = {f"x{i}": (1.0 if i < 5 else 0.0) for i in range(10)}
    bins = oracle_bins(rates, 5)
    assert set(bins.values()) == {"1", "3"}
    assert all(bins[f"x{i}"] == "1" for i in range(5))
    assert set(oracle_bins({"a": 0.3, "b": 0.3}, 5).values()) == {"1"}


@pytest.mark.parametrize("n_bins", [0, 1, -3, 2.5, True, "5"])
def test_oracle_bins_rejects_bad_n_bins(n_bins):
    with pytest.raises(ConfigError) as err:
        oracle_bins({"a": 0.5}, n_bins)
    assert err.value.where == "n_bins" and err.value.fix


def test_oracle_bins_rejects_empty_and_out_of_range():
    with pytest.raises(ConfigError) as err:
        oracle_bins({}, 5)
    assert err.value.where == "pass_rates"
    with pytest.raises(ConfigError) as err:
        oracle_bins({"a": 1.5}, 5)
    assert "pass_rates['a']" in err.value.where
    with pytest.raises(ConfigError):
        oracle_bins({"a": float("nan")}, 5)


def test_pass_rates_from_pools():
    s = lambda ok: PoolSample(answer="1" if ok else "2", correct=ok, completion_tokens=3)  # noqa: E731
    pools = {"a": [s(True), s(True), s(False), s(False)], "b": [s(False)] * 3, "c": [s(True)]}
    assert pass_rates_from_pools(pools) == {"a": 0.5, "b": 0.0, "c": 1.0}
    with pytest.raises(ConfigError) as err:
        pass_rates_from_pools({"a": []})
    assert err.value.where == "pools['a']"
    with pytest.raises(ConfigError):
        pass_rates_from_pools({})


# ----------------------------------------------------------------------------- probe


def test_probe_signal_values():
    # plurality 3/4, no logprobs
    assert probe_signal(["7", "7", "7", "8"], [None] * 4) == pytest.approx(0.75)
    # None answers count against the plurality
    assert probe_signal(["7", None, None, None], [None] * 4) == pytest.approx(0.25)
    assert probe_signal([None, None], [None, None]) == 0.0
    # tie-breaker: 0.01 * mean exp(mean_logprob) over samples that have one
    lp = [math.log(0.5), None, math.log(0.9), None]
    expect = 0.5 + 0.01 * (0.5 + 0.9) / 2
    assert probe_signal(["a", "a", "b", "c"], lp) == pytest.approx(expect)
    assert probe_signal(["a"], [0.0]) == pytest.approx(1.01)
    assert probe_signal(["a"], [float("-inf")]) == pytest.approx(1.0)
    # the tie-breaker never overturns a difference in agreement
    assert probe_signal(["a", "b"], [0.0, 0.0]) < probe_signal(["a", "a"], [-50.0, -50.0])


def test_probe_signal_errors():
    with pytest.raises(ConfigError) as err:
        probe_signal([], [])
    assert err.value.where == "answers"
    with pytest.raises(ConfigError) as err:
        probe_signal(["a", "b"], [None])
    assert err.value.where == "mean_logprobs"
    with pytest.raises(ConfigError):
        probe_signal(["a"], [float("nan")])


def test_fit_thresholds_split_evenly_and_bin_of_monotone():
    rng = random.Random(3)
    signals = [rng.random() for _ in range(200)]
    th = fit_thresholds(signals, 4)
    assert len(th) == 3
    assert list(th) == sorted(th, reverse=True)
    sizes = Counter(bin_of(s, th) for s in signals)
    assert set(sizes) == {"1", "2", "3", "4"}
    assert all(abs(v - 50) <= 2 for v in sizes.values())
    grid = [i / 100 for i in range(-10, 111)]
    nums = [int(bin_of(s, th)) for s in grid]
    assert nums == sorted(nums, reverse=True)  # higher signal -> easier (smaller) bin
    assert bin_of(2.0, th) == "1" and bin_of(-1.0, th) == "4"
    assert bin_of(th[0], th) == "1"  # ">=" at a cut point


def test_fit_thresholds_and_bin_of_errors():
    with pytest.raises(ConfigError) as err:
        fit_thresholds([0.1, 0.2], 1)
    assert err.value.where == "n_bins"
    with pytest.raises(ConfigError) as err:
        fit_thresholds([], 3)
    assert err.value.where == "signals"
    with pytest.raises(ConfigError):
        bin_of(0.5, [])
    with pytest.raises(ConfigError) as err:
        bin_of(0.5, [0.2, 0.8])
    assert err.value.where == "thresholds"


# ----------------------------------------------------------------------------- predictor


def _toy(n_per_bin: int = 20, seed: int = 0) -> tuple[list[Example], dict[str, str]]:
    """Word count decides the bin: 2-5 words -> "1", 10-15 -> "2", 25-35 -> "3"."""
    rng = random.Random(seed)
    ranges = {"1": (2, 5), "2": (10, 15), "3": (25, 35)}
    vocab = [f"w{i}" for i in range(40)]
    examples, bins = [], {}
    for label, (lo, hi) in ranges.items():
        for j in range(n_per_bin):
            words = " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))
            ex = Example(id=f"b{label}-{j}", inputs={"question": words}, target="x")
            examples.append(ex)
            bins[ex.id] = label
    return examples, bins


def test_text_features():
    ex = Example(id="a", inputs={"q": "Sort 3, 1, 22\n- apple\n- pear"}, target="")
    chars, words, digits, items, distinct = (math.expm1(v) for v in text_features(ex))
    assert round(chars) == len("Sort 3, 1, 22\n- apple\n- pear")
    assert round(words) == 6 and round(digits) == 4
    assert round(items) == 4 and round(distinct) == 6


def test_predictor_learns_separable_toy_and_round_trips():
    examples, bins = _toy()
    model = DifficultyPredictor.fit(examples, bins)
    preds = {ex.id: model.predict(ex) for ex in examples}
    acc = sum(preds[i] == bins[i] for i in bins) / len(bins)
    assert acc >= 0.9
    assert model.classes == ("1", "2", "3")
    # generalises to fresh examples of the same rule
    fresh, fresh_bins = _toy(seed=7)
    fresh_acc = sum(model.predict(e) == fresh_bins[e.id] for e in fresh) / len(fresh)
    assert fresh_acc >= 0.85
    # deterministic
    assert DifficultyPredictor.fit(examples, bins) == model
    # round trip through JSON
    back = DifficultyPredictor.from_dict(json.loads(json.dumps(model.to_dict())))
    assert back == model
    assert all(back.predict(e) == preds[e.id] for e in examples)
    probs = model.probabilities(examples[0])
    assert set(probs) == {"1", "2", "3"} and sum(probs.values()) == pytest.approx(1.0)


def test_predictor_errors():
    examples, bins = _toy(3)
    with pytest.raises(ConfigError) as err:
        DifficultyPredictor.fit([], bins)
    assert err.value.where == "examples"
    missing = dict(bins)
    del missing[examples[0].id]
    with pytest.raises(ConfigError) as err:
        DifficultyPredictor.fit(examples, missing)
    assert examples[0].id in err.value.where
    with pytest.raises(ConfigError):
        DifficultyPredictor.fit(examples + examples[:1], bins)
    model = DifficultyPredictor.fit(examples, bins, iterations=10)
    bad = model.to_dict()
    bad["weights"] = bad["weights"][:-1]
    with pytest.raises(ConfigError) as err:
        DifficultyPredictor.from_dict(bad)
    assert err.value.where == "difficulty_predictor.weights"
    bad = model.to_dict()
    del bad["means"]
    with pytest.raises(ConfigError):
        DifficultyPredictor.from_dict(bad)


# ----------------------------------------------------------------------------- agreement


def test_agreement_hand_case():
    oracle = {"a": "1", "b": "2", "c": "3", "d": "3", "e": "2"}
    predicted = {"a": "1", "b": "3", "c": "3", "d": "1", "e": "2"}
    ag = agreement(predicted, oracle)
    assert isinstance(ag, Agreement)
    assert ag.n == 5
    assert ag.exact == pytest.approx(3 / 5)
    assert ag.within_one == pytest.approx(4 / 5)
    # average ranks: oracle [1, 2.5, 4.5, 4.5, 2.5], predicted [1.5, 4.5, 4.5, 1.5, 3];
    # centred dot product 2.25, both sums of squares 9 -> rho = 2.25 / 9
    assert ag.spearman == pytest.approx(0.25)
    assert ag.labels == ("1", "2", "3")
    assert ag.confusion == ((1, 0, 0), (0, 1, 1), (1, 0, 1))
    d = ag.to_dict()
    assert d["confusion"] == [[1, 0, 0], [0, 1, 1], [1, 0, 1]] and d["n"] == 5
    json.dumps(d)
    text = str(ag)
    assert "exact=0.600" in text and "spearman=0.250" in text


def test_agreement_perfect_and_constant():
    oracle = {"a": "1", "b": "2", "c": "10"}
    ag = agreement(dict(oracle), oracle)
    assert ag.exact == 1.0 and ag.spearman == pytest.approx(1.0)
    assert ag.labels == ("1", "2", "10")  # numeric order
    const = agreement({"a": "2", "b": "2", "c": "2"}, oracle)
    assert const.spearman == 0.0
    assert const.within_one == pytest.approx(2 / 3)


def test_agreement_errors():
    with pytest.raises(ConfigError) as err:
        agreement({}, {})
    assert err.value.where == "predicted"
    with pytest.raises(ConfigError) as err:
        agreement({"a": "1"}, {"b": "1"})
    assert "different example ids" in err.value.message
    with pytest.raises(ConfigError) as err:
        agreement({"a": "easy"}, {"a": "1"})
    assert err.value.where == "predicted['a']"
