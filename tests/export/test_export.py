"""Tests of jointopt.export: pick rules, bootstrap intervals, the exported files, MLflow.

A small study is run offline with the scripted backend; export reads its Optuna storage.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import pytest
import yaml

from jointopt import load_config, run_study
from jointopt.backends import ScriptedBackend
from jointopt.errors import ConfigError, DataError
from jointopt.export.messages import to_mlflow_template
from jointopt.evaluation.stats import Interval, bootstrap
from jointopt.export.pick import pick_point
from jointopt.search.results import TrialSummary, non_dominated
from jointopt.export.policy import export_policy
from jointopt.core.policy_file import load_policy_file
from jointopt.serving.runtime import load_policy

pytestmark = pytest.mark.timeout(120)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ statistics


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1] * 3
    a = bootstrap(values, seed=7)
    assert a == bootstrap(values, seed=7)
    assert a.value == pytest.approx(sum(values) / len(values))
    assert a.low <= a.value <= a.high
    assert 0 <= a.low < a.high <= 1
    wide = bootstrap(values[:10], seed=7)
    assert (wide.high - wide.low) > (a.high - a.low)
    assert bootstrap([3.0] * 5) == Interval(3.0, 3.0, 3.0, 0.95)


def test_bootstrap_handles_probabilities_and_large_inputs():
    rng = random.Random(0)
    values = [rng.random() for _ in range(20000)]
    ci = bootstrap(values, resamples=300)
    assert ci.high - ci.low < 0.02


def test_bootstrap_rejects_nothing_to_measure():
    with pytest.raises(DataError):
        bootstrap([])
    with pytest.raises(DataError, match="confidence level"):
        bootstrap([1.0], level=1.5)


# ------------------------------------------------------------------------------ pick rules

def TrialPoint(number, accuracy, mean_tokens):  # noqa: N802 - reads like the records it builds
    return TrialSummary(number=number, state="COMPLETE", accuracy=accuracy,
                        mean_tokens=mean_tokens, params={}, policy=None)


POINTS = [
    TrialPoint(0, 0.30, 10), TrialPoint(1, 0.70, 20), TrialPoint(2, 0.75, 60),
    TrialPoint(3, 0.80, 100), TrialPoint(4, 0.50, 50),  # 4 is dominated by 1
    TrialPoint(5, 0.70, 20),                             # same point as 1
]


def test_pareto_points_are_distinct_and_sorted():
    assert [p.number for p in non_dominated(POINTS)] == [0, 1, 2, 3]


def test_pick_rules():
    assert pick_point(POINTS, "knee").number == 1
    assert pick_point(POINTS, "max_accuracy").number == 3
    assert pick_point(POINTS, "min_tokens").number == 0
    assert pick_point(POINTS, "budget", 59).number == 1
    assert pick_point(POINTS, "budget", 60).number == 2
    # another second objective (a cost): the rules read it instead of mean tokens
    cost = {0: 9.0, 1: 1.0, 2: 2.0, 3: 3.0, 4: 5.0, 5: 1.0}
    by_cost = dict(second=lambda p: cost[p.number], unit="mean cost")
    assert pick_point(POINTS, "min_tokens", **by_cost).number == 1
    assert pick_point(POINTS, "budget", 2.5, **by_cost).number == 2
    with pytest.raises(ConfigError, match="mean cost"):
        pick_point(POINTS, "budget", 0.5, **by_cost)


def test_knee_without_a_bulge_takes_the_most_accurate_extreme():
    convex = [TrialPoint(0, 0.1, 10), TrialPoint(1, 0.2, 80), TrialPoint(2, 0.9, 100)]
    assert pick_point(convex, "knee").number == 2
    assert pick_point(convex[:1], "knee").number == 0
    assert pick_point(convex[:2], "knee").number == 1


def test_pick_errors_are_clear():
    with pytest.raises(ConfigError, match="raise --budget to at least 10"):
        pick_point(POINTS, "budget", 5)
    with pytest.raises(ConfigError, match=r"needs a budget > 0 \(mean tokens"):
        pick_point(POINTS, "budget")
    with pytest.raises(ConfigError, match="did you mean 'knee'"):
        pick_point(POINTS, "kne")
    with pytest.raises(ConfigError, match="jointopt run"):
        pick_point([], "knee")


@pytest.mark.parametrize("text, want, exact", [
    ("{{ question }}", "{{question}}", True),
    ("Q: {{question}} / {{  ctx  }}", "Q: {{question}} / {{ctx}}", True),
    ("{{ q | upper }}", "{{ q | upper }}", False),
    ("{% if x %}{{ x }}{% endif %}", "{% if x %}{{ x }}{% endif %}", True),
])
def test_mlflow_template_conversion(text, want, exact):
    assert to_mlflow_template(text) == (want, exact)


# ------------------------------------------------------------------------------ a study


def _respond(request, index, rng):
    text = request.messages[-1].content
    words = text.split(":")[-1].strip().split(", ")
    if rng.random() < 0.6:
        return ", ".join(reversed(words))
    return ", ".join(words) + " hmm" * rng.randint(0, 6)


def _write_config(folder: Path, *, space: Path | None = None, task_seed: int = 0,
                  name: str = "exp", tracking: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "name": name,
        "output_dir": str(folder / "run"),
        "model": {"backend": "vllm", "model": "smollm2-135m-instruct", "seed": 0},
        "task": {"builtin": {"family": "reverse_words", "levels": [1, 2], "n_per_level": 5,
                             "seed": task_seed, "n_demos": 4}},
        "search_space": str(space or ROOT / "search_spaces" / "quickstart.yaml"),
        "optimizer": {"n_trials": 10, "sampler": "random", "seed": 1},
        "tracking": {"enabled": tracking},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    path = _write_config(folder)
    config = load_config(path)
    result = run_study(config, backend=ScriptedBackend(_respond))
    return path, config, result


def test_export_knee_writes_every_file(study, tmp_path):
    path, config, result = study
    out = tmp_path / "out"
    exported = export_policy(config, out_dir=out, register_prompt=False)
    names = {p.name for p in exported.files.values()}
    assert {"policy.yaml", "vllm_serve.yaml", "generation_config.json", "openai_presets.json",
            "dspy_program.json", "EXPORT.md"} <= names
    assert exported.pick == "knee" and exported.prompt_uri is None

    # the policy file: validated, with measurement and provenance
    policy = load_policy_file(out / "policy.yaml")
    assert policy == exported.policy
    trial = next(t for t in result.trials if t.number == exported.trial_number)
    metrics = policy.metadata["metrics"]
    assert metrics["accuracy"]["estimate"] == pytest.approx(trial.accuracy, abs=1e-6)
    assert metrics["mean_tokens"]["estimate"] == pytest.approx(trial.mean_tokens, abs=1e-3)
    assert metrics["accuracy"]["low"] <= metrics["accuracy"]["estimate"] <= \
        metrics["accuracy"]["high"]
    assert metrics["n_examples"] == 10 and metrics["n_bootstrap"] == 2000
    prov = policy.metadata["provenance"]
    assert prov["trial_number"] == exported.trial_number and prov["study_name"] == "exp"
    assert prov["dataset_hash_matches"] is True and prov["jointopt_version"]
    assert policy.metadata["task"]["extractor"] == {"kind": "first_line"}
    assert policy.metadata["serving"]["served_model_name"] == "smollm2-135m-instruct"

    # the vLLM files
    serve_cfg = yaml.safe_load((out / "vllm_serve.yaml").read_text())
    alloc = policy.bins["all"]
    assert serve_cfg["served-model-name"] == "smollm2-135m-instruct"
    assert Path(serve_cfg["model"]).is_dir() and serve_cfg["generation-config"] == "vllm"
    assert serve_cfg["max-model-len"] == 2048 and serve_cfg["seed"] == 0
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == serve_cfg["override-generation-config"]
    assert generation["temperature"] == alloc.temperature
    assert generation["max_new_tokens"] == alloc.max_tokens
    if "vllm_env" in exported.files:
        assert serve_cfg["enforce-eager"] is True and serve_cfg["block-size"] == 32
        assert "VLLM_CPU_OMP_THREADS_BIND=" in (out / "vllm_serve.env").read_text()

    # the OpenAI presets
    presets = json.loads((out / "openai_presets.json").read_text())
    request = presets["bins"]["all"]["request"]
    assert request["temperature"] == alloc.temperature and request["max_tokens"] == alloc.max_tokens
    assert request["messages"][-1] == {"role": "user", "content": "{{question}}"}
    assert len(request["messages"]) == 1 + 2 * policy.prompt.shots + (policy.prompt.system
                                                                        is not None)
    assert presets["input_fields"] == ["question"]

    # DSPy loads it back
    import dspy

    program = dspy.Predict("question -> answer")
    program.load(str(out / "dspy_program.json"))
    assert len(program.demos) == policy.prompt.shots
    assert "question" in program.signature.instructions
    assert "What does not map" in (out / "EXPORT.md").read_text()


def test_exported_policy_runs(study, tmp_path):
    _, config, _ = study
    exported = export_policy(config, pick="max_accuracy", out_dir=tmp_path, register_prompt=False)
    runner = load_policy(exported.files["policy"], backend=ScriptedBackend(_respond))
    answer = runner.answer({"question": "Reverse the order of these words: red, cat"})
    assert answer.usage.total_tokens > 0
    from jointopt.search.plan import build_task

    assert len(runner.evaluate(build_task(config)).records) == 10


def test_pick_rules_on_the_study(study, tmp_path):
    _, config, result = study
    trials = result.trials
    best = max(trials, key=lambda t: (t.accuracy, -t.mean_tokens))
    cheap = min(trials, key=lambda t: (t.mean_tokens, -t.accuracy))
    assert export_policy(config, pick="max_accuracy", out_dir=tmp_path / "a",
                         register_prompt=False).trial_number == best.number
    assert export_policy(config, pick="min_tokens", out_dir=tmp_path / "b",
                         register_prompt=False).trial_number == cheap.number
    budget = export_policy(config, pick="budget", budget=cheap.mean_tokens + 0.01,
                           out_dir=tmp_path / "c", register_prompt=False)
    assert budget.trial_number == cheap.number
    assert budget.policy.metadata["provenance"]["budget"] == pytest.approx(cheap.mean_tokens + 0.01)
    some = trials[len(trials) // 2].number
    assert export_policy(config, trial=some, out_dir=tmp_path / "d",
                         register_prompt=False).pick == "trial"


def test_bad_trial_and_budget(study, tmp_path):
    _, config, result = study
    with pytest.raises(ConfigError) as info:
        export_policy(config, trial=999, out_dir=tmp_path, register_prompt=False)
    assert "not a complete trial" in str(info.value)
    assert str(result.trials[0].number) in str(info.value)
    with pytest.raises(ConfigError, match="raise --budget"):
        export_policy(config, pick="budget", budget=1, out_dir=tmp_path, register_prompt=False)


def test_export_targets_can_be_chosen_and_are_checked_first(study, tmp_path):
    _, config, _ = study
    exported = export_policy(config, out_dir=tmp_path / "some", register_prompt=False,
                             targets=["openai_presets"])
    assert {p.name for p in exported.files.values()} == {"policy.yaml", "openai_presets.json",
                                                         "EXPORT.md"}
    with pytest.raises(ConfigError, match="did you mean 'vllm'") as info:
        export_policy(config, out_dir=tmp_path / "bad", register_prompt=False, targets=["vlm"])
    assert info.value.where == "targets"
    assert not (tmp_path / "bad").exists()


def test_export_before_the_study_ran(tmp_path):
    config = load_config(_write_config(tmp_path / "fresh", name="fresh"))
    with pytest.raises(ConfigError, match="run the study first"):
        export_policy(config, out_dir=tmp_path / "out")


def test_changed_data_is_reported(study, tmp_path):
    path, config, _ = study
    data = yaml.safe_load(path.read_text())
    data["task"]["builtin"]["seed"] = 5
    other = tmp_path / "changed.yaml"
    other.write_text(yaml.safe_dump(data))
    exported = export_policy(load_config(other), pick="max_accuracy", out_dir=tmp_path / "o",
                             register_prompt=False)
    assert any("dataset hash differs" in w for w in exported.warnings)
    assert exported.policy.metadata["provenance"]["dataset_hash_matches"] is False


def test_mlflow_prompt_loads_back(study, tmp_path, monkeypatch):
    import mlflow

    _, config, _ = study
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    config = config.model_copy(update={"tracking": config.tracking.model_copy(
        update={"tracking_uri": uri})})
    first = export_policy(config, pick="knee", out_dir=tmp_path / "a", mlflow_alias="prod")
    second = export_policy(config, pick="min_tokens", out_dir=tmp_path / "b", mlflow_alias="prod")
    assert first.prompt_uri == "prompts:/exp-policy/1" and second.prompt_uri == "prompts:/exp-policy/2"

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        prompt = mlflow.genai.load_prompt("prompts:/exp-policy@prod")
        pinned = mlflow.genai.load_prompt("prompts:/exp-policy/1")
    finally:
        mlflow.set_tracking_uri(previous)
    assert prompt.version == 2
    presets = json.loads((tmp_path / "b" / "openai_presets.json").read_text())
    assert prompt.template == presets["bins"]["all"]["request"]["messages"]
    assert prompt.variables == {"question"}
    filled = prompt.format(question="Reverse the order of these words: a, b")
    assert filled[-1]["content"] == "Reverse the order of these words: a, b"
    alloc = second.policy.bins["all"]
    assert prompt.model_config["temperature"] == alloc.temperature
    assert prompt.model_config["max_tokens"] == alloc.max_tokens
    assert prompt.model_config["extra_params"]["strategy"] == alloc.strategy
    from jointopt.core.policy import Policy

    assert Policy.from_dict(json.loads(prompt.tags["jointopt.core.policy"])) == second.policy
    assert pinned.tags["jointopt.trial"] == str(first.trial_number)
    assert "accuracy" in pinned.commit_message


def test_per_bin_metrics_for_label_bins(tmp_path):
    space = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    space["difficulty"] = {"source": "label"}
    space["strategies"] = {"single": {}, "majority": {"n": {"low": 2, "high": 4}}}
    space_path = tmp_path / "space.yaml"
    space_path.write_text(yaml.safe_dump(space))
    config = load_config(_write_config(tmp_path / "bins", space=space_path, name="bins"))
    run_study(config, backend=ScriptedBackend(_respond), n_trials=4)
    exported = export_policy(config, pick="max_accuracy", out_dir=tmp_path / "out",
                             register_prompt=False)
    per_bin = exported.policy.metadata["metrics"]["per_bin"]
    assert set(per_bin) == {"1", "2"} and per_bin["1"]["n_examples"] == 5
    presets = json.loads((tmp_path / "out" / "openai_presets.json").read_text())
    assert set(presets["bins"]) == {"1", "2"}
    runner = load_policy(exported.files["policy"], backend=ScriptedBackend(_respond))
    assert runner.answer({"question": "Reverse the order of these words: a, b"},
                         difficulty="1").bin == "1"


def test_cli_export(study, tmp_path, capsys):
    from jointopt.cli.export import add_export_parser, run_export

    path, _, _ = study
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", str(path), "--pick", "max_accuracy", "--out",
                              str(tmp_path / "cli"), "--no-mlflow"])
    assert run_export(args) == 0
    assert (tmp_path / "cli" / "policy.yaml").is_file()
    assert "exported" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--pick budget needs --budget"):
        run_export(parser.parse_args(["export", str(path), "--pick", "budget", "--out", "x"]))
    with pytest.raises(ConfigError, match="only applies"):
        run_export(parser.parse_args(["export", str(path), "--budget", "5", "--out", "x"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["export", str(path), "--trial", "1", "--pick", "knee", "--out", "x"])
