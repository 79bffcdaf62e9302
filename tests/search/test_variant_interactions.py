"""Free variants with the other study features: a cost objective and a model per bin,
thinking bins, and replayed (version 2) banks."""

from __future__ import annotations

import optuna
import pytest

from jointopt.backends import CachedBackend, SampleStore, ScriptedBackend
from jointopt.backends.replay import ReplayBackend
from jointopt.core.cost import TokenCost
from jointopt.core.policy import Allocation, Policy
from jointopt.core.thinking import ThinkingSpec
from jointopt.errors import ConfigError
from jointopt.evaluation.evaluate import evaluate
from jointopt.search.derived import DERIVED_ATTR, variant_policy
from jointopt.search.plan import plan_study
from jointopt.search.record import record_bank
from jointopt.search.study import run_study
from jointopt.search.variants import (free_variants, pooled_setting, score_variants,
                                      setting_key)

from test_multi_model import LARGE, SMALL, write
from test_record_replay import _config, reverse_responder

POOLED_SPACE = {
    "prompts": [{"id": "plain", "user": "{{ question }}"}],
    "strategies": {"single": {}, "majority": {"n": {"low": 1, "high": 4}}},
    "temperature": 0.8,
    "max_tokens": 16,
    "difficulty": {"source": "label"},
}


def test_derived_trials_under_a_cost_objective_are_priced_at_each_bins_model(tmp_path):
    config = write(tmp_path, space=POOLED_SPACE, models=[SMALL, LARGE],
                   optimizer={"cost": "flops", "n_trials": 4})
    result = run_study(config)
    study = optuna.load_study(study_name=config.name, storage=result.storage)
    assert study.metric_names == ["accuracy", "mean_cost"]
    by_number = {t.number: t for t in study.get_trials()}
    derived = [t for t in by_number.values() if t.user_attrs.get(DERIVED_ATTR) is not None]
    assert derived
    rate = {"small": 2 * SMALL["params"], "large": 2 * LARGE["params"]}
    for frozen in derived:
        attrs = frozen.user_attrs
        assert attrs["cost_objective"] == "flops"
        assert frozen.values[1] == pytest.approx(sum(attrs["costs"]) / len(attrs["costs"]))
        assert attrs["mean_cost"] == pytest.approx(frozen.values[1])
        # a variant changes the strategies only: each bin keeps the model of its setting
        source = by_number[attrs[DERIVED_ATTR]].user_attrs["policy"]["bins"]
        bins = attrs["policy"]["bins"]
        assert {b: a["model"] for b, a in bins.items()} == {
            b: a["model"] for b, a in source.items()}
        ratios = {round(c / t) for c, t in zip(attrs["costs"], attrs["tokens"])}
        assert ratios <= {rate[a["model"]] for a in bins.values()}
    # summaries carry both the cost and where a derived trial came from
    summaries = [t for t in result.trials if t.derived_from is not None]
    assert summaries and all(t.cost_objective == "flops" and t.mean_cost > 0
                             for t in summaries)


def test_variant_scores_price_each_record_like_evaluate(tmp_path):
    config = write(tmp_path, space=POOLED_SPACE, models=[SMALL, LARGE])
    plan = plan_study(config)
    variants = free_variants(plan.space.strategies)
    costs = {"small": TokenCost(1.0, 3.0), "large": TokenCost(5.0, 7.0)}
    base = Policy(model="small", prompt=plan.space.prompts[0],
                  bins={"all": Allocation("single", temperature=0.8, max_tokens=16,
                                          model="large")})
    engine = CachedBackend(ScriptedBackend(reverse_responder),
                           SampleStore(tmp_path / "s.sqlite"))
    scores = score_variants(base, variants, plan.task, engine, pool_size=4, costs=costs)
    for j, variant in enumerate(variants):
        policy = variant_policy(base, {"all": variant})
        assert policy.bins["all"].model == "large"
        alone = evaluate(policy, plan.task, engine, pool_size=4, costs=costs)
        assert [r.cost for r in alone.records] == pytest.approx(
            [r.cost for r in scores.records[j]])
        assert [r.cost for r in scores.records[j]] == pytest.approx(
            [5.0 * r.prompt_tokens + 7.0 * r.completion_tokens for r in scores.records[j]])
    engine.store.close()


def test_thinking_bins_have_no_free_variants_and_settings_name_models(tmp_path):
    plan = plan_study(write(tmp_path, space=POOLED_SPACE, models=[SMALL, LARGE]))
    prompt = plan.space.prompts[0]

    def policy(**allocation):
        return Policy(model="small", prompt=prompt, bins={"all": Allocation(
            "majority", params={"n": 3}, temperature=0.8, max_tokens=16, **allocation)})

    assert pooled_setting(policy())
    assert pooled_setting(policy(thinking=ThinkingSpec(budget=0)))  # answers directly
    assert not pooled_setting(policy(thinking=ThinkingSpec(budget=64)))
    keys = {setting_key(policy()), setting_key(policy(model="large")),
            setting_key(policy(thinking=ThinkingSpec(budget=64)))}
    assert len(keys) == 3
    assert setting_key(policy(model="small")) == setting_key(policy())


def test_a_replayed_v2_bank_expands_the_same_variants_as_the_live_study(tmp_path):
    expand = {"optimizer": {"n_trials": 6, "expand_variants": True}}
    live_config = _config(tmp_path, "live", **expand)
    live = run_study(live_config, backend=ScriptedBackend(reverse_responder))
    plan = plan_study(live_config)
    bank = tmp_path / "bank.npz"
    record_bank(plan, ScriptedBackend(reverse_responder), samples=8, out=bank)
    replayed = run_study(_config(tmp_path, "replayed", **expand),
                         backend=ReplayBackend(bank))

    def derived(result):
        return sorted((t.derived_from, t.policy.describe(), round(t.accuracy, 9),
                       round(t.mean_tokens, 6)) for t in result.trials
                      if t.derived_from is not None)

    assert derived(live) and derived(replayed) == derived(live)


def test_a_bank_smaller_than_the_largest_variant_is_refused_before_any_compute(tmp_path):
    expand = {"optimizer": {"n_trials": 2, "expand_variants": True}}
    plan = plan_study(_config(tmp_path, "plan", **expand))
    bank = tmp_path / "bank.npz"
    record_bank(plan, ScriptedBackend(reverse_responder), samples=5, out=bank)
    config = _config(tmp_path, "replayed", **expand,
                     model={"backend": "replay", "bank": str(bank), "model": "m"})
    with pytest.raises(ConfigError, match="needs 6"):  # majority etc. go up to n=6
        plan_study(config)


def test_a_multi_model_study_cuts_each_models_pools_at_max_tokens(tmp_path, monkeypatch):
    caps: set[int] = set()
    original = ScriptedBackend.generate

    def logged(self, requests):
        caps.update(r.max_tokens for r in requests)
        return original(self, requests)

    monkeypatch.setattr(ScriptedBackend, "generate", logged)
    space = {**POOLED_SPACE, "max_tokens": {"choices": [8, 16]}}
    result = run_study(write(tmp_path, space=space, models=[SMALL, LARGE],
                             bank={"cut_max_tokens": True},
                             optimizer={"n_trials": 8, "max_generated_tokens": 10 ** 9}))
    assert caps == {16}  # every model's pools drawn once, at the largest cap
    assert {a.max_tokens for t in result.trials for a in t.policy.bins.values()} == {8, 16}
