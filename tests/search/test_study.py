"""A whole study on the scripted backend: Optuna, Pareto front, MLflow, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from jointopt.backends import ScriptedBackend
from jointopt.search.config import load_config
from jointopt.search.study import run_study
from jointopt.testing import reverse_words_responder as reverse_responder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path):
    return load_config(ROOT / "experiments/quickstart.yaml", {
        "output_dir": str(tmp_path / "run"), "optimizer": {"n_trials": 8}})


def test_study_runs_logs_and_resumes(config, tmp_path):
    import csv

    from jointopt.testing import RecordingBackend

    backend = ScriptedBackend(reverse_responder)
    engine = RecordingBackend(backend)  # sees only what passes the sample store
    result = run_study(config, backend=engine)
    assert len(result.proposed) == 8
    # per-trial engine cost: all of it is accounted to trials, none to cache hits
    assert sum(t.tokens_generated for t in result.trials) == engine.total_tokens > 0
    for t in result.trials:
        assert (t.tokens_generated == 0) == (t.generated == 0)
    assert result.pareto, "a Pareto front"
    # non-dominated and sorted by tokens
    for a in result.pareto:
        for b in result.trials:
            assert not (b.accuracy > a.accuracy and b.mean_tokens < a.mean_tokens)
    tokens = [p.mean_tokens for p in result.pareto]
    assert tokens == sorted(tokens)
    assert all(p.policy is not None for p in result.pareto)

    out = tmp_path / "run"
    for name in ("pareto.csv", "trials.csv", "pareto.png", "optuna.db", "samples.sqlite"):
        assert (out / name).exists(), name
    assert len(list((out / "policies").glob("*.yaml"))) == len(result.pareto)
    with (out / "trials.csv").open(encoding="utf-8") as fh:
        rows = {int(r["trial"]): r for r in csv.DictReader(fh)}
    assert {n: int(r["tokens_generated"]) for n, r in rows.items()} == {
        t.number: t.tokens_generated for t in result.trials}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("jointopt.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("jointopt.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 8
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials)
    assert all({"accuracy", "mean_tokens", "tokens_generated", "completions_cached"}
               <= set(r.data.metrics) for r in trials)
    assert all("prompt" in r.data.params and "strategy" in r.data.params for r in trials)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"pareto.png", "pareto.csv", "policies"} <= artifacts

    # Rerunning continues the same study up to the new target and reuses samples.
    again = run_study(config, backend=backend, n_trials=11)
    assert len(again.proposed) == 11
    assert sorted(t.number for t in again.trials) == list(range(len(again.trials)))
    runs = client.search_runs([exp.experiment_id])
    assert len([r for r in runs if r.data.tags.get("jointopt.role") == "study"]) == 1
    assert len([r for r in runs if r.data.tags.get("jointopt.role") == "trial"]) == 11


def test_same_seed_same_study(tmp_path):
    def run(sub):
        cfg = load_config(ROOT / "experiments/quickstart.yaml", {
            "output_dir": str(tmp_path / sub), "optimizer": {"n_trials": 6},
            "tracking": {"enabled": False}})
        return run_study(cfg, backend=ScriptedBackend(reverse_responder))

    a, b = run("a"), run("b")
    assert [(t.params, t.accuracy, t.mean_tokens) for t in a.trials] == [
        (t.params, t.accuracy, t.mean_tokens) for t in b.trials]


def test_held_out_split_rescores_the_front_on_test(tmp_path):
    cfg = load_config(ROOT / "experiments/quickstart.yaml", {
        "output_dir": str(tmp_path / "run"), "optimizer": {"n_trials": 6},
        "validation": {"test_fraction": 0.3, "seed": 1}, "tracking": {"enabled": True}})
    from jointopt.search.plan import plan_study

    plan = plan_study(cfg)
    dev_ids = {e.id for e in plan.task.examples}
    test_ids = {e.id for e in plan.test_task.examples}
    assert dev_ids and test_ids and not dev_ids & test_ids
    assert len(dev_ids | test_ids) == 30
    # stratified: every level is in both splits
    level = lambda i: i.split("-")[1]  # noqa: E731
    assert {level(i) for i in dev_ids} == {level(i) for i in test_ids} == {"L1", "L2", "L3"}

    result = run_study(cfg, backend=ScriptedBackend(reverse_responder))
    assert result.pareto and all(t.test is not None for t in result.pareto)
    for t in result.pareto:
        acc = t.test["accuracy"]
        assert acc.low <= acc.value <= acc.high
        assert t.dev["accuracy"].value == pytest.approx(t.accuracy)
    text = (tmp_path / "run" / "pareto.csv").read_text()
    assert "test_accuracy_ci" in text


PROPOSALS = ["Reverse the list of words and reply with the reversed list only.",
             "Write the same words in the opposite order, separated by commas."]


def test_proposed_prompts_join_the_search_and_are_cached(tmp_path):
    import yaml

    calls = {"proposer": 0}

    def respond(request, index, rng):
        system = request.messages[0].content if request.messages[0].role == "system" else ""
        if "instructions for an AI assistant" in system:
            calls["proposer"] += 1
            text = PROPOSALS[index % 2]  # index counts every draw of this prompt
            return f"[[ ## instruction ## ]]\n{text}\n\n[[ ## completed ## ]]"
        return reverse_responder(request, index, rng)

    space = yaml.safe_load((ROOT / "search_spaces/quickstart.yaml").read_text())
    space["prompts"] = [space["prompts"][1], {"propose": {"k": 2, "n_examples": 2}}]
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    cfg = load_config(ROOT / "experiments/quickstart.yaml", {
        "output_dir": str(tmp_path / "run"), "optimizer": {"n_trials": 6},
        "search_space": str(tmp_path / "space.yaml")})
    from jointopt.search.study import open_study
    from jointopt.search.plan import plan_study

    plan = plan_study(cfg)  # validates the proposal entry, spends nothing
    assert calls["proposer"] == 0 and plan.space.proposals

    run_study(cfg, backend=ScriptedBackend(respond))
    first_calls = calls["proposer"]
    assert first_calls >= 2
    study = open_study(plan)
    choices = study.trials[0].distributions["prompt"].choices
    assert set(choices) == {"strict", "proposed_0", "proposed_1"}
    assert (tmp_path / "run" / "proposals.json").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    parent = next(r for r in client.search_runs(
        [client.get_experiment_by_name("quickstart").experiment_id])
        if r.data.tags.get("jointopt.role") == "study")
    assert parent.data.metrics["proposer_tokens"] > 0
    assert any(a.path == "proposals" for a in client.list_artifacts(parent.info.run_id))

    run_study(cfg, backend=ScriptedBackend(respond), n_trials=8)
    assert calls["proposer"] == first_calls  # the cache answered: no new proposal calls
