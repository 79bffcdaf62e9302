"""Studies over several models: a model per bin, cascades, the cost objective, and a
one-model study unchanged."""

from __future__ import annotations

import csv

import pytest
import yaml

from jointopt.errors import ConfigError
from jointopt.search.config import load_config
from jointopt.search.study import run_study

SPACE = {
    "prompts": [{"id": "plain", "user": "{{ question }}"}],
    "strategies": {"single": {}, "majority": {"n": {"low": 1, "high": 5}},
                   "cascade": {"n": {"low": 1, "high": 4},
                               "threshold": {"low": 0.3, "high": 1.0},
                               "escalate_n": {"low": 1, "high": 3}, "escalate_to": "large"}},
    "temperature": 0.8,
    "max_tokens": 16,
    "difficulty": {"source": "label"},
}
SMALL = {"backend": "scripted", "name": "small", "model": "org/small", "params": 100,
         "engine": {"responder": "jointopt.testing.tiers:small", "model_id": "small"}}
LARGE = {"backend": "scripted", "name": "large", "model": "org/large", "params": 400,
         "engine": {"responder": "jointopt.testing.tiers:large", "model_id": "large"}}


def write(tmp_path, name="tiers", space=None, **sections):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space or SPACE))
    data = {"name": name, "output_dir": str(tmp_path / name), "search_space": "space.yaml",
            "task": {"builtin": {"family": "reverse_words", "levels": [1, 3],
                                 "n_per_level": 8, "n_demos": 3}},
            "tracking": {"enabled": False},
            "optimizer": {"n_trials": 24, "sampler": "random", "seed": 3}, **sections}
    if "optimizer" in sections:
        data["optimizer"] = {"n_trials": 24, "sampler": "random", "seed": 3,
                             **sections["optimizer"]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def test_each_bin_picks_its_model_and_the_cost_prices_each_token_at_its_model(tmp_path):
    config = write(tmp_path, models=[SMALL, LARGE], optimizer={"cost": "flops"},
                   validation={"test_fraction": 0.25, "resamples": 200})
    result = run_study(config)
    params = {"small": 100, "large": 400}
    models_seen = set()
    for t in result.trials:
        assert {"1.model", "3.model"} <= set(t.params)
        for bin_name, allocation in t.policy.bins.items():
            assert allocation.model == t.params[f"{bin_name}.model"]
            models_seen.add(allocation.model)
        assert t.policy.model == "small" and t.cost_objective == "flops"
        # Every token at 2 x params of the model that ran it: a bin answered by one model
        # without a cascade costs exactly that model's rate x its tokens.
        if all(a.strategy != "cascade" for a in t.policy.bins.values()):
            assert t.mean_cost > 0 and t.mean_tokens > 0
    assert models_seen == {"small", "large"}
    import optuna

    study = optuna.load_study(study_name=config.name, storage=result.storage)
    assert study.metric_names == ["accuracy", "mean_cost"]
    for frozen in study.get_trials():
        policy = frozen.user_attrs["policy"]
        costs, tokens = frozen.user_attrs["costs"], frozen.user_attrs["tokens"]
        assert frozen.values[1] == pytest.approx(sum(costs) / len(costs))
        uses = {a.get("model") for a in policy["bins"].values()}
        if len(uses) == 1 and all(a["strategy"] != "cascade"
                                  for a in policy["bins"].values()):
            rate = 2 * params[uses.pop()]
            assert costs == pytest.approx([rate * t for t in tokens], rel=1e-6)
    # The cheapest policy that reaches the large model's accuracy answers the easy bin
    # with the small model: the optimizer found the per-bin choice pays.
    best = max(t.accuracy for t in result.pareto)
    top = min((t for t in result.pareto if t.accuracy >= best - 1e-9),
              key=lambda t: t.mean_cost)
    assert top.policy.bins["1"].model == "small"
    for t in result.pareto:  # held-out intervals of the cost too
        assert set(t.test) == {"accuracy", "mean_tokens", "mean_cost"}
        assert t.test["mean_cost"].low <= t.test["mean_cost"].value <= t.test["mean_cost"].high
    with (tmp_path / "tiers" / "pareto.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert all(float(r["mean_cost"]) > 0 and float(r["mean_tokens"]) > 0 for r in rows)
    # The exported policy file carries each bin's model and both objectives.
    from jointopt.core.policy_file import load_policy_file
    from jointopt.export.policy import export_policy

    exported = export_policy(config, pick="max_accuracy", out_dir=tmp_path / "export",
                             register_prompt=False)
    again = load_policy_file(exported.files["policy"])
    assert {b: a.model for b, a in again.bins.items()} == {
        b: a.model for b, a in exported.policy.bins.items()}
    metrics = again.metadata["metrics"]
    assert metrics["cost_objective"] == "flops"
    assert metrics["mean_cost"]["estimate"] > metrics["mean_tokens"]["estimate"] > 0
    assert metrics["test"]["mean_cost"]["estimate"] > 0
    # Pick rules read the objective the front is on: the cheapest policy in FLOPs, and a
    # budget in FLOPs per input.
    cheap = export_policy(config, pick="min_tokens", out_dir=tmp_path / "cheap",
                          register_prompt=False)
    lowest = min(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)),
                 key=lambda t: (t.values[1], -t.values[0], t.number))
    assert cheap.trial_number == lowest.number
    with pytest.raises(ConfigError, match="mean cost"):
        export_policy(config, pick="budget", budget=1.0, out_dir=tmp_path / "none",
                      register_prompt=False)


def test_one_model_as_a_list_gives_the_same_trials_as_model(tmp_path):
    one = {k: v for k, v in LARGE.items() if k not in ("name",)}
    space = {**SPACE, "strategies": {k: v for k, v in SPACE["strategies"].items()
                                     if k != "cascade"}}
    a = run_study(write(tmp_path, "a", space=space, model=one))
    b = run_study(write(tmp_path, "b", space=space, models=[one]))
    assert [(t.params, t.accuracy, t.mean_tokens) for t in a.trials] == \
        [(t.params, t.accuracy, t.mean_tokens) for t in b.trials]
    assert all(t.mean_cost is None and t.cost_objective is None for t in a.trials)
    assert all("model" not in t.policy.to_dict()["bins"]["1"] for t in a.trials)
    # The flops objective of one model is its mean tokens x 2 x params.
    c = run_study(write(tmp_path, "c", space=space, model=one, optimizer={"cost": "flops"}))
    assert [t.params for t in c.trials] != [] and all(
        t.mean_cost == pytest.approx(800 * t.mean_tokens) for t in c.trials)


def test_cost_and_model_mistakes_are_refused_before_any_compute(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        write(tmp_path, model={"backend": "scripted"}, models=[SMALL])
    with pytest.raises(ConfigError, match="same name"):
        write(tmp_path, models=[SMALL, {**LARGE, "name": "small"}])
    from jointopt.search.plan import plan_study

    with pytest.raises(ConfigError, match="prices") as info:
        plan_study(write(tmp_path, models=[SMALL, LARGE], optimizer={"cost": "price"}))
    assert "models[0].prices" in str(info.value)
    no_params = {k: v for k, v in LARGE.items() if k != "params"}
    with pytest.raises(ConfigError, match="parameter count") as info:
        plan_study(write(tmp_path, models=[SMALL, no_params], optimizer={"cost": "flops"}))
    assert "models[1].params" in str(info.value)
    with pytest.raises(ConfigError, match="escalates") as info:
        plan_study(write(tmp_path, models=[SMALL, {**LARGE, "name": "big"}]))
    assert "escalate_to" in str(info.value) and "big" in str(info.value)
    priced = [{**SMALL, "prices": {"prompt": 0.1, "completion": 0.4}},
              {**LARGE, "prices": {"prompt": 1.0, "completion": 4.0}}]
    plan = plan_study(write(tmp_path, models=priced, optimizer={"cost": "price"}))
    assert plan.space.models == ("small", "large") and plan.model == "small"


def test_one_engine_at_a_time_gives_the_same_trials(tmp_path, monkeypatch):
    from jointopt.backends.router import ModelRouter

    built = []
    original = ModelRouter.engine

    def counting(self, model):
        before = dict(self.builds)
        engine = original(self, model)
        if self.builds != before:
            built.append((self.max_loaded, model, len(self.engines)))
        return engine

    monkeypatch.setattr(ModelRouter, "engine", counting)
    runs = [run_study(write(tmp_path, name, models=[SMALL, LARGE], optimizer={"n_trials": 6},
                            **extra))
            for name, extra in (("all", {}), ("one", {"max_engines_loaded": 1}))]
    assert [(t.params, t.accuracy, t.mean_tokens) for t in runs[0].trials] == \
        [(t.params, t.accuracy, t.mean_tokens) for t in runs[1].trials]
    # With the limit, every build leaves one engine up, and swapping builds more often.
    assert all(loaded == 1 for limit, _, loaded in built if limit == 1)
    assert len([b for b in built if b[0] == 1]) > len([b for b in built if b[0] is None])


def test_one_bank_per_model_replays_a_two_model_study_exactly(tmp_path):
    """`jointopt record --model NAME` writes one bank per model; a study whose models are
    `backend: replay` entries over those banks gives the live study's values."""
    from jointopt.cli.app import main

    space = {**SPACE, "strategies": {"single": {}, "majority": {"n": {"low": 1, "high": 5}}}}
    live = write(tmp_path, name="live", space=space, models=[SMALL, LARGE],
                 bank={"pool_size": 5}, validation={"test_fraction": 0.25, "resamples": 200})
    # several models and no --model: refused before any work
    assert main(["record", str(tmp_path / "live.yaml"), "--out", str(tmp_path / "x.npz")]) == 2
    assert not (tmp_path / "x.npz").exists()
    for name in ("small", "large"):
        assert main(["record", str(tmp_path / "live.yaml"), "--model", name, "--samples", "5",
                     "--out", str(tmp_path / f"{name}.npz"),
                     "--output-dir", str(tmp_path / f"rec-{name}")]) == 0
    replayed = write(tmp_path, name="replayed", space=space, bank={"pool_size": 5},
                     validation={"test_fraction": 0.25, "resamples": 200},
                     models=[{"backend": "replay", "name": "small", "model": "org/small",
                              "params": 100, "bank": str(tmp_path / "small.npz")},
                             {"backend": "replay", "name": "large", "model": "org/large",
                              "params": 400, "bank": str(tmp_path / "large.npz")}])
    want = {tuple(sorted(t.params.items())): (t.accuracy, t.mean_tokens)
            for t in run_study(live).trials}
    got = run_study(replayed).trials
    assert {a.model for t in got for a in t.policy.bins.values()} == {"small", "large"}
    for t in got:
        key = tuple(sorted(t.params.items()))
        if key in want:
            assert (t.accuracy, t.mean_tokens) == pytest.approx(want[key], abs=1e-12)
    assert sum(tuple(sorted(t.params.items())) in want for t in got) >= 12
