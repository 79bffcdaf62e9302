"""Probe policies: k samples pick the bin, the bin's strategy reuses them."""

from __future__ import annotations

import pytest

from jointopt.backends import ScriptedBackend
from jointopt.errors import ConfigError
from jointopt.evaluation.evaluate import evaluate
from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.testing import RecordingBackend, noisy_responder, toy_task

SPEC = DifficultySpec(source="probe", bins=("1", "2"), default_bin="2", probe_k=2,
                      probe_temperature=0.7, probe_max_tokens=16, thresholds=(0.9,))


def _policy(spec=SPEC):
    return Policy(model="scripted", prompt=PromptTemplate(id="p", user="{{ question }}"),
                  difficulty=spec,
                  bins={"1": Allocation("single", 0.7, 16),
                        "2": Allocation("majority", 0.7, 16, {"n": 4})})


def test_probe_picks_bins_and_its_samples_are_reused_not_paid_twice():
    task = toy_task(12)
    backend = RecordingBackend(ScriptedBackend(noisy_responder(0.5)))
    result = evaluate(_policy(), task, backend)
    first, *rest = backend.batches
    assert [r.request.n for r in first] == [2] * 12  # every probe in one batch
    hard = [r for r in result.records if r.bin == "2"]
    easy = [r for r in result.records if r.bin == "1"]
    assert hard and easy
    # easy inputs answer from a probe sample: no second request at all
    assert all(r.engine_calls == 1 and r.completions == 2 for r in easy)
    # hard inputs ask only for the 2 samples the probe lacks, at offset 2
    assert len(rest) == 1 and all(r.request.n == 2 and r.request.offset == 2 for r in rest[0])
    assert len(rest[0]) == len(hard)
    assert all(r.completions == 4 for r in hard)
    assert sum(r.tokens for r in result.records) == backend.total_tokens


def test_probe_policy_round_trips_and_validates():
    policy = _policy()
    assert Policy.from_dict(policy.to_dict()) == policy
    with pytest.raises(ConfigError, match="thresholds"):
        DifficultySpec(source="probe", bins=("1", "2", "3"), probe_k=2, thresholds=(0.5,))
    with pytest.raises(ConfigError, match="probe_k"):
        DifficultySpec(source="probe", bins=("1", "2"), thresholds=(0.5,))


def test_runtime_answers_with_a_probe_policy(tmp_path):
    from jointopt.core.policy_file import save_policy
    from jointopt.serving.runtime import load_policy

    task = toy_task(4)
    policy = _policy()
    path = tmp_path / "policy.yaml"
    meta = {"task": {"name": task.name, "fields": list(task.fields),
                     "extractor": {"kind": "last_number"}, "matcher": {"kind": "numeric"}}}
    save_policy(Policy(**{**policy.__dict__, "metadata": meta}), path)
    backend = RecordingBackend(ScriptedBackend(noisy_responder(0.5)))
    runner = load_policy(path, backend=backend)
    answers = runner.answer_batch([dict(e.inputs) for e in task.examples])
    assert {a.bin for a in answers} <= {"1", "2"}
    assert sum(a.usage.total_tokens for a in answers) == backend.total_tokens


def study_with_difficulty(tmp_path, difficulty: dict, n_trials: int):
    """The quickstart study on the budgets_uniform space with ``difficulty``, a 30% test
    split and the scripted reversal responder."""
    from pathlib import Path

    import yaml

    from jointopt.search.config import load_config
    from jointopt.search.study import run_study
    from jointopt.testing import reverse_words_responder as reverse_responder

    root = Path(__file__).resolve().parents[2]
    space = yaml.safe_load((root / "search_spaces/budgets_uniform.yaml").read_text())
    space["difficulty"] = difficulty
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    config = load_config(root / "experiments/quickstart.yaml", {
        "output_dir": str(tmp_path / "run"), "search_space": str(tmp_path / "space.yaml"),
        "optimizer": {"n_trials": n_trials}, "validation": {"test_fraction": 0.3}})
    return run_study(config, backend=ScriptedBackend(reverse_responder))


def test_a_study_with_probe_bins_fits_thresholds_and_reports_agreement(tmp_path):
    import json

    result = study_with_difficulty(tmp_path, {
        "source": "probe", "n_bins": 2, "probe_k": 3, "probe_temperature": 0.7,
        "probe_max_tokens": 16}, n_trials=6)
    assert len(result.proposed) == 6
    report = json.loads((tmp_path / "run" / "difficulty_report.json").read_text())
    item = report["prompts"]["fewshot_nearest"]
    assert len(item["thresholds"]) == 1
    assert 0.0 <= item["agreement"]["exact"] <= 1.0
    for t in result.trials:
        spec = t.policy.difficulty
        assert spec.source == "probe" and spec.thresholds == tuple(item["thresholds"])
        assert set(t.policy.bins) == {"1", "2"}
        assert {"1.strategy", "2.strategy"} <= set(t.params)
    assert all(t.test is not None for t in result.pareto)


def test_a_study_with_oracle_bins_labels_dev_and_test_by_pass_rate(tmp_path):
    result = study_with_difficulty(
        tmp_path, {"source": "oracle", "n_bins": 2, "oracle_samples": 4}, n_trials=5)
    assert len(result.proposed) == 5
    for t in result.trials:
        assert t.policy.difficulty.source == "label"
        assert set(t.policy.bins) == {"1", "2"}
    assert all(t.test is not None for t in result.pareto)


def test_oracle_labels_follow_the_pass_rate():
    from pathlib import Path

    from jointopt.search.space_config import load_space_file
    from jointopt.search.space_build import space_from_dict
    from jointopt.tasks import make_task

    root = Path(__file__).resolve().parents[2]
    data = load_space_file(root / "search_spaces/budgets_uniform.yaml").model_dump()
    data["difficulty"] = {"source": "oracle", "n_bins": 2, "oracle_samples": 4,
                          "probe_temperature": 0.7, "probe_max_tokens": 16}
    space = space_from_dict(data, "space")
    task = make_task("reverse_words", levels=(1, 3), n_per_level=4, n_demos=3)

    def by_length(request, index, rng):  # right on 2 words, wrong on 4
        words = request.messages[-1].content.split(":")[-1].strip().split(", ")
        return ", ".join(reversed(words)) if len(words) == 2 else ", ".join(words)

    labels = space.difficulty_labels(task, ScriptedBackend(by_length))
    for e in task.examples:
        assert labels[e.id] == ("1" if e.difficulty == "1" else "2")


def test_the_probe_bin_a_policy_runs_is_the_tested_bin_of():
    """One function assigns probe bins: the one test_difficulty checks is what runs."""
    from jointopt.difficulty.sources import bin_of
    from jointopt.evaluation.evaluate import check_policy, drive, policy_run

    task = toy_task(12)
    spec = DifficultySpec(source="probe", bins=("easy", "hard"), default_bin="hard",
                          probe_k=2, thresholds=(0.9,))
    bins = _policy().bins
    policy = Policy(model="scripted", prompt=PromptTemplate(id="p", user="{{ question }}"),
                    difficulty=spec, bins={"easy": bins["1"], "hard": bins["2"]})
    strategies = check_policy(policy, task)
    runs = [policy_run(policy, strategies, task, e)[0] for e in task.examples]
    outcomes = [outcome for outcome, _ in drive(ScriptedBackend(noisy_responder(0.5)), runs)]
    bins = [o.info["bin"] for o in outcomes]
    assert {"easy", "hard"} == set(bins)
    assert bins == [bin_of(o.info["probe_signal"], spec.thresholds, spec.bins) for o in outcomes]
    assert [bin_of(o.info["probe_signal"], spec.thresholds) for o in outcomes] == \
        [{"easy": "1", "hard": "2"}[b] for b in bins]
