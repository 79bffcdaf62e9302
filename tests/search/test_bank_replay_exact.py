"""Replayed studies from imported histograms are exact: every trial's accuracy and tokens,
and every held-out re-score, equal an independent computation written here (majority@k
by enumerating how k samples fall into the answers, in integer arithmetic), to 1e-9."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from itertools import product

import numpy as np
import pytest

from jointopt.banks.importer import ImportOptions, import_bank
from jointopt.search.config import load_config
from jointopt.search.plan import plan_study
from jointopt.search.study import run_study

PROMPTS, EXAMPLES, SAMPLES, LETTERS = 4, 48, 20, "ABCDE"


def _table(path, seed=3):
    rng = np.random.default_rng(seed)
    skill, hardness = rng.uniform(-1, 1.5, PROMPTS), rng.normal(0, 1.2, EXAMPLES)
    targets = rng.integers(0, 5, EXAMPLES)
    rows = {}
    with path.open("w") as fh:
        for p in range(PROMPTS):
            for e in range(EXAMPLES):
                right = 1 / (1 + math.exp(-(skill[p] - hardness[e])))
                probs = np.insert(rng.dirichlet(np.full(4, 0.6)) * (1 - right), targets[e], right)
                counts = rng.multinomial(SAMPLES, probs)
                row = {"prompt_id": f"p{p}", "example_id": f"q{e:02d}",
                       "counts": {c: int(n) for c, n in zip(LETTERS, counts) if n},
                       "correct": [LETTERS[targets[e]]], "completion_tokens": 10.0 + 7 * p,
                       "prompt_tokens": 30 + p}
                rows[(row["prompt_id"], row["example_id"])] = row
                fh.write(json.dumps(row) + "\n")
    return rows


@lru_cache(maxsize=None)
def _majority(counts: tuple[int, ...], correct: tuple[bool, ...], k: int) -> float:
    """Sum over every way x of drawing k of the samples (x_a of answer a) of
    prod C(n_a, x_a), times the share of the tied top answers that are correct."""
    total = 0
    scale = 60  # lcm(1..5): the tie shares s/t stay integers
    for x in product(*(range(min(n, k) + 1) for n in counts)):
        if sum(x) != k:
            continue
        ways = math.prod(math.comb(n, xi) for n, xi in zip(counts, x))
        top = max(x)
        tied = [i for i, xi in enumerate(x) if xi == top]
        total += ways * scale * sum(correct[i] for i in tied) // len(tied)
    return total / (scale * math.comb(sum(counts), k))


def _expected(row, strategy: str, n: int) -> tuple[float, float]:
    counts = tuple(row["counts"].values())
    correct = tuple(a in row["correct"] for a in row["counts"])
    single = sum(c for c, ok in zip(counts, correct) if ok) / sum(counts)
    k = 1 if strategy == "single" else n
    # best_of_n without scores: every sample ties, the pick is uniform: a single sample
    accuracy = _majority(counts, correct, k) if strategy == "majority" else single
    return accuracy, row["prompt_tokens"] + k * row["completion_tokens"]


@pytest.mark.timeout(600)
def test_every_trial_and_held_out_score_equals_the_independent_computation(tmp_path):
    rows = _table(tmp_path / "hist.jsonl")
    result = import_bank(tmp_path / "hist.jsonl", tmp_path / "b.bank.npz",
                         ImportOptions(n_trials=40, max_n=12, test_fraction=0.25))
    config = load_config(result.study, {"output_dir": str(tmp_path / "run"),
                                        "optimizer": {"sampler": "random"}})
    plan = plan_study(config)
    assert plan.test_task is not None and len(plan.test_task.examples) == 12
    study = run_study(config)
    # 40 proposed trials; every free variant of their settings is recorded too (derived
    # trials, scored from the same histograms), and checked below like the others.
    assert len(study.proposed) == 40
    assert len(study.trials) > 40 and any(t.derived_from is not None for t in study.trials)
    strategies = {t.policy.bins[next(iter(t.policy.bins))].strategy for t in study.trials}
    assert strategies == {"single", "majority", "best_of_n"}

    def score(trial, examples):
        allocation = next(iter(trial.policy.bins.values()))
        n = int(dict(allocation.params).get("n", 1))
        values = [_expected(rows[(trial.policy.prompt.id, e.id)], allocation.strategy, n)
                  for e in examples]
        return (sum(v[0] for v in values) / len(values),
                sum(v[1] for v in values) / len(values))

    for trial in study.trials:
        accuracy, tokens = score(trial, plan.task.examples)
        assert trial.accuracy == pytest.approx(accuracy, abs=1e-9), trial.number
        assert trial.mean_tokens == pytest.approx(tokens, abs=1e-9), trial.number
    assert study.pareto and all(t.test is not None for t in study.pareto)
    for trial in study.pareto:
        accuracy, tokens = score(trial, plan.test_task.examples)
        assert trial.test["accuracy"].value == pytest.approx(accuracy, abs=1e-9)
        assert trial.test["mean_tokens"].value == pytest.approx(tokens, abs=1e-9)
