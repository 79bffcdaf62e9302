"""Predictor policies: a text model fitted on dev oracle bins picks the bin, at no token cost."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jointopt.backends import ScriptedBackend
from jointopt.difficulty.sources import DifficultyPredictor
from jointopt.errors import ConfigError
from jointopt.evaluation.evaluate import evaluate
from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.testing import RecordingBackend

ROOT = Path(__file__).resolve().parents[2]


def by_length(request, index, rng):
    """reverse_words answers: right on 2 words, wrong on 4 (so level 1 is the easy bin)."""
    words = request.messages[-1].content.split(":")[-1].strip().split(", ")
    return ", ".join(reversed(words)) if len(words) == 2 else ", ".join(words)


def _space(**difficulty):
    from jointopt.search.space_config import load_space_file
    from jointopt.search.space_build import space_from_dict

    data = load_space_file(ROOT / "search_spaces/budgets_uniform.yaml").model_dump()
    data["difficulty"] = {"source": "predictor", "n_bins": 2, "oracle_samples": 4,
                          "probe_temperature": 0.7, "probe_max_tokens": 16, **difficulty}
    return space_from_dict(data, "space")


def _split():
    from jointopt.tasks import make_task

    task = make_task("reverse_words", levels=(1, 3), n_per_level=8, n_demos=3)
    dev = task.subset(e for i, e in enumerate(task.examples) if i % 4)
    test = task.subset(e for i, e in enumerate(task.examples) if not i % 4)
    return dev, test


def test_predictor_is_fitted_on_dev_oracle_bins_and_predicts_held_out_inputs():
    space = _space()
    assert space.needs_fit
    dev, test = _split()
    backend = RecordingBackend(ScriptedBackend(by_length))
    fitted, fit = space.fit_difficulty(dev, backend, test_task=test)
    report = fit.report
    assert not fitted.needs_fit
    spec = fitted.difficulty
    assert spec.source == "predictor" and spec.bins == ("1", "2")
    # word count tells the difficulty here, so held-out inputs get their oracle bin
    assert report["test"]["exact"] == 1.0 and report["dev"]["exact"] == 1.0
    for e in test.examples:
        assert spec.bin_of(e) == ("1" if e.difficulty == "1" else "2")
    calls = len(backend.batches)
    spec.bin_of(test.examples[0])
    assert len(backend.batches) == calls  # predicting generates nothing


def test_an_unfitted_predictor_space_builds_no_policy():
    import optuna

    trial = optuna.trial.FixedTrial({"prompt": "fewshot_nearest"})
    with pytest.raises(ConfigError, match="predictor is not fitted"):
        _space().build_policy(trial, "scripted")


def _policy():
    from jointopt.tasks import make_task

    dev, _ = _split()
    bins = {e.id: ("1" if e.difficulty == "1" else "2") for e in dev.examples}
    spec = DifficultySpec(source="predictor", bins=("1", "2"), default_bin="2",
                          predictor=DifficultyPredictor.fit(dev.examples, bins))
    task = make_task("reverse_words", levels=(1, 3), n_per_level=3, n_demos=3, seed=9)
    from jointopt.core.prompts import PromptTemplate

    policy = Policy(model="scripted", prompt=PromptTemplate(id="p", user="{{ question }}"),
                    difficulty=spec,
                    bins={"1": Allocation("single", 0.7, 16),
                          "2": Allocation("majority", 0.7, 16, {"n": 3})})
    return policy, task


def test_predictor_policy_spends_tokens_only_on_the_bins_strategy_and_round_trips():
    policy, task = _policy()
    assert Policy.from_dict(yaml.safe_load(policy.to_yaml())) == policy
    backend = RecordingBackend(ScriptedBackend(by_length))
    result = evaluate(policy, task, backend)
    by_bin = {r.example_id: r for r in result.records}
    for e in task.examples:
        record = by_bin[e.id]
        assert record.bin == ("1" if e.difficulty == "1" else "2")
        assert record.completions == (1 if record.bin == "1" else 3)
    assert sum(r.tokens for r in result.records) == backend.total_tokens


def test_runtime_answers_with_a_predictor_policy(tmp_path):
    from jointopt.core.policy_file import save_policy
    from jointopt.serving.runtime import load_policy

    policy, task = _policy()
    meta = {"task": {"name": task.name, "fields": list(task.fields),
                     "extractor": dict(kind="first_line"), "matcher": dict(kind="words")}}
    path = tmp_path / "policy.yaml"
    save_policy(Policy(**{**policy.__dict__, "metadata": meta}), path)
    runner = load_policy(path, backend=ScriptedBackend(by_length))
    answers = runner.answer_batch([dict(e.inputs) for e in task.examples])
    assert [a.bin for a in answers] == [policy.difficulty.bin_of(e) for e in task.examples]


def test_predictor_spec_validation():
    policy, _ = _policy()
    with pytest.raises(ConfigError, match="needs a fitted predictor"):
        DifficultySpec(source="predictor", bins=("1", "2"), default_bin="2")
    with pytest.raises(ConfigError) as info:
        DifficultySpec(source="predictor", bins=("1",), default_bin="1",
                       predictor=policy.difficulty.predictor)
    assert info.value.where == "difficulty.predictor.classes" and info.value.value == ["2"]


def test_a_study_with_predicted_bins_reports_dev_and_held_out_agreement(tmp_path):
    import json

    from test_difficulty_probe import study_with_difficulty

    result = study_with_difficulty(
        tmp_path, {"source": "predictor", "n_bins": 2, "oracle_samples": 4}, n_trials=5)
    assert len(result.proposed) == 5
    report = json.loads((tmp_path / "run" / "difficulty_report.json").read_text())
    assert report["source"] == "predictor" and {"dev", "test"} <= set(report)
    predictors = {t.policy.difficulty.predictor for t in result.trials}
    assert len(predictors) == 1 and None not in predictors
    for t in result.trials:
        assert set(t.policy.bins) == {"1", "2"} and {"1.strategy", "2.strategy"} <= set(t.params)
    assert all(t.test is not None for t in result.pareto)
