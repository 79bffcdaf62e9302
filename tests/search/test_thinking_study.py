"""The thinking budget as a searched per-bin dimension: space files and an offline study."""

from __future__ import annotations

from pathlib import Path

import pytest

from jointopt.backends import ScriptedBackend
from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.core.policy_file import load_policy_file
from jointopt.core.prompts import PromptTemplate
from jointopt.errors import ConfigError
from jointopt.evaluation.evaluate import evaluate
from jointopt.search.config import load_config
from jointopt.search.space_build import space_from_dict
from jointopt.search.space_config import SearchSpaceFile
from jointopt.search.study import run_study
from jointopt.tasks import make_task
from jointopt.testing.thinking import NEED_PER_STEP, thinking_responder

ROOT = Path(__file__).resolve().parents[2]
BASE = {"prompts": [{"id": "p", "user": "{{ question }}"}], "strategies": {"single": {}}}


def _space(**extra):
    data = SearchSpaceFile.model_validate({**BASE, **extra}).model_dump()
    return space_from_dict(data, "space.yaml")


class _Trial:
    """Suggests the last choice / the high end of everything (an Optuna stand-in)."""

    def __init__(self):
        self.params = {}

    def suggest_categorical(self, name, choices):
        return self.params.setdefault(name, choices[-1])

    def suggest_int(self, name, low, high, step=1, log=False):
        return self.params.setdefault(name, high)

    def suggest_float(self, name, low, high, step=None, log=False):
        return self.params.setdefault(name, high)


def test_each_bin_suggests_its_own_thinking_budget():
    space = _space(thinking_budget={"choices": [0, 64]},
                   thinking={"engine": "forcing", "answer_max_tokens": 6},
                   difficulty={"source": "label", "bins": ["1", "2"]})
    trial = _Trial()
    policy = space.build_policy(trial, "m")
    assert {"1.thinking_budget", "2.thinking_budget"} <= set(trial.params)
    spec = policy.bins["2"].thinking
    assert spec.budget == 64 and spec.engine == "forcing" and spec.answer_max_tokens == 6


def test_without_thinking_budget_allocations_do_not_think():
    policy = _space().build_policy(_Trial(), "m")
    assert policy.bins["all"].thinking is None


@pytest.mark.parametrize("extra, where, needle", [
    ({"thinking": {"engine": "forcing"}}, "space.yaml: thinking", "need a `thinking_budget`"),
    ({"thinking_budget": {"choices": [0, -8]}}, "thinking_budget", ">= 0"),
    ({"thinking_budget": {"low": 0.5, "high": 8.5}}, "thinking_budget", "whole number"),
    ({"thinking_budget": {"choices": [16, 64]}, "thinking": {"min": 32}},
     "thinking.min", "between 0 and 16"),
])
def test_space_errors_name_the_field(extra, where, needle):
    with pytest.raises(ConfigError) as err:
        _space(**extra)
    assert where in str(err.value) and needle in str(err.value)


def test_scripted_model_gains_from_thinking_on_hard_bins_only():
    task = make_task("word_problems", n_per_level=12, n_demos=0)
    backend = ScriptedBackend(thinking_responder)

    def accuracy(budget):
        policy = Policy(model="scripted", prompt=PromptTemplate(id="p", user="{{ question }}"),
                        difficulty=DifficultySpec(source="label", bins=("1", "2", "3", "4"),
                                                  default_bin="4"),
                        bins={b: Allocation("single", max_tokens=8,
                                            thinking={"budget": budget, "engine": "forcing"})
                              for b in ("1", "2", "3", "4")})
        result = evaluate(policy, task, backend)
        per_bin = {}
        for r in result.records:
            per_bin.setdefault(r.bin, []).append(r.correct)
        return {b: sum(v) / len(v) for b, v in per_bin.items()}, result

    direct, plain = accuracy(0)
    deep, thought = accuracy(4 * NEED_PER_STEP)
    assert direct["1"] >= 0.6 and max(direct[b] for b in "234") <= 0.3
    assert min(deep[b] for b in "234") >= 0.7
    assert thought.mean_thinking_tokens > 0 == plain.mean_thinking_tokens
    assert thought.mean_tokens > plain.mean_tokens


def test_offline_thinking_study_searches_budgets_per_bin_and_exports_them(tmp_path):
    config = load_config(ROOT / "experiments/thinking_budget_scripted.yaml", {
        "output_dir": str(tmp_path / "run"), "optimizer": {"n_trials": 12}})
    result = run_study(config)
    assert len(result.trials) == 12
    for trial in result.trials:
        assert {f"{b}.thinking_budget" for b in "1234"} <= set(trial.params)
    budgets = {trial.params["4.thinking_budget"] for trial in result.trials}
    assert len(budgets) > 1
    files = sorted((tmp_path / "run" / "policies").glob("*.yaml"))
    assert files
    loaded = [load_policy_file(f) for f in files]
    assert all(p.bins["4"].thinking is not None for p in loaded)
    best = max(result.pareto, key=lambda t: t.accuracy)
    assert best.policy.bins["4"].thinking.budget > 0  # hard problems are worth a thought
