"""Derived trials: the free variants of an evaluated setting, recorded in the study.

After a trial's setting has its pools (see :mod:`jointopt.search.variants`), every free
variant is scored from them and added to the Optuna study with ``study.add_trial``: its
parameters (as the sampler would have suggested them), its values, intervals and
per-example outcomes, and the user attribute :data:`DERIVED_ATTR` naming the trial it
was derived from. So the Pareto front of every evaluated setting is exact and complete,
and the sampler learns from all of it. Derived trials cost no generation
(``tokens_generated`` 0) and do not count towards ``optimizer.n_trials``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jointopt.core.policy import Policy
from jointopt.evaluation.stats import objective_intervals
from jointopt.search.variants import Variant, VariantScores, setting_front, setting_key

if TYPE_CHECKING:
    import optuna

__all__ = ["DERIVED_ATTR", "SETTING_ATTR", "RACED_ATTR", "SCREEN_ATTR", "SCREENED_ATTR",
           "is_derived", "raced_out", "variant_policy", "record_variants", "expanded_settings"]

log = logging.getLogger(__name__)

#: Trial user attribute of a derived trial: the number of the trial it was derived from.
DERIVED_ATTR = "derived_from"
#: Trial user attribute of a raced-out trial (PRUNED; see :mod:`jointopt.search.racing`):
#: {"examples": prefix size it stopped at, "saved": samples it did not draw}.
RACED_ATTR = "raced_out"
#: Trial user attribute of a trial queued to screen its setting (see
#: :mod:`jointopt.search.promise`).
SCREEN_ATTR = "screen"
#: Trial user attribute of a screened trial (PRUNED): its
#: :class:`~jointopt.search.promise.Screen` as a dict, with ``examples`` screened.
SCREENED_ATTR = "screened"
#: Trial user attribute: the setting key (:func:`~jointopt.search.variants.setting_key`)
#: of a trial whose variants were expanded, and of its derived trials.
SETTING_ATTR = "setting"


def is_derived(trial: Any) -> bool:
    """The trial was recorded from another trial's pools (not proposed by the sampler)."""
    return trial.user_attrs.get(DERIVED_ATTR) is not None


def raced_out(trial: Any) -> bool:
    """The trial's setting was raced out (a PRUNED trial that counts as done)."""
    return trial.user_attrs.get(RACED_ATTR) is not None


def expanded_settings(study: "optuna.Study") -> set[str]:
    """Setting keys whose variants the study already holds (of its complete trials)."""
    import optuna

    complete = (optuna.trial.TrialState.COMPLETE,)
    return {t.user_attrs[SETTING_ATTR]
            for t in study.get_trials(deepcopy=False, states=complete)
            if SETTING_ATTR in t.user_attrs}


def variant_policy(policy: Policy, choice: Mapping[str, Variant]) -> Policy:
    """``policy`` with each bin's strategy replaced by the chosen variant."""
    # Model and thinking spec stay: a variant differs only in the strategy of each bin.
    bins = {name: dataclasses.replace(a, strategy=choice[name].strategy,
                                      params=dict(choice[name].params))
            for name, a in policy.bins.items()}
    return dataclasses.replace(policy, bins=bins)


def _distribution(spec: Any) -> Any:
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    from jointopt.search.space import Choice, FloatRange, IntRange

    if isinstance(spec, Choice):
        return CategoricalDistribution(list(spec.choices))
    if isinstance(spec, IntRange):
        return IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, FloatRange):
        return FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    return None  # Fixed: not a trial parameter


def variant_params(params: Mapping[str, Any], distributions: Mapping[str, Any],
                   strategies: Mapping[str, Mapping[str, Any]], policy: Policy,
                   choice: Mapping[str, Variant]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial parameters (and distributions) of a variant of the trial with ``params``."""
    params, dists = dict(params), dict(distributions)
    for name, allocation in policy.bins.items():
        prefix = "" if "strategy" in params else f"{name}."
        old = f"{prefix}{allocation.strategy}."
        for key in [k for k in params if k.startswith(old)]:
            params.pop(key)
            dists.pop(key)
        variant = choice[name]
        params[f"{prefix}strategy"] = variant.strategy
        for pname, value in variant.params:
            dist = _distribution(strategies[variant.strategy][pname])
            if dist is not None:
                params[f"{prefix}{variant.strategy}.{pname}"] = value
                dists[f"{prefix}{variant.strategy}.{pname}"] = dist
    return params, dists


def _metrics(records: Sequence[Any], priced: bool) -> dict[str, float]:
    # Summed as evaluate() sums them, so a derived trial equals its policy's evaluation.
    count = max(len(records), 1)
    extra = {"mean_cost": sum(r.cost or 0.0 for r in records) / count} if priced else {}
    return {**extra,
        "accuracy": sum(r.correct for r in records) / count,
        "mean_tokens": sum(r.tokens for r in records) / count,
        "mean_prompt_tokens": sum(r.prompt_tokens for r in records) / count,
        "mean_completion_tokens": sum(r.completion_tokens for r in records) / count,
        "wall_time_s": 0.0, "completions_generated": 0.0,
        "completions_cached": float(sum(r.completions for r in records)),
    }


def record_variants(study: "optuna.Study", trial: "optuna.Trial", policy: Policy,
                    scores: VariantScores, strategies: Mapping[str, Mapping[str, Any]], *,
                    validation: Any, dataset_hash: str,
                    max_mean_tokens: float | None = None,
                    cost_objective: str | None = None) -> list[int]:
    """Add the free variants of ``trial``'s setting (scored in ``scores`` on the whole dev
    set) to ``study`` as derived trials; the trial's own policy is not repeated. With a
    ``cost_objective`` (``optimizer.cost`` other than tokens; records priced), values are
    [accuracy, mean cost], as the objective returns them.

    Returns:
        numbers of the trials added.
    """
    import optuna

    key = setting_key(policy)
    own = policy.to_dict()
    added = []
    for choice_idx in setting_front(scores, list(policy.bins)):
        choice = {b: scores.variants[j] for b, j in choice_idx.items()}
        derived = variant_policy(policy, choice)
        if derived.to_dict() == own:
            continue
        records = [scores.records[choice_idx[b]][i] for i, b in enumerate(scores.bins)]
        metrics = _metrics(records, cost_objective is not None)
        params, dists = variant_params(trial.params, trial.distributions, strategies,
                                       policy, choice)
        attrs: dict[str, Any] = {
            **metrics, DERIVED_ATTR: trial.number, SETTING_ATTR: key,
            "policy": derived.to_dict(), "tokens_generated": 0.0,
            "correct": [round(r.correct, 6) for r in records],
            "tokens": [round(r.tokens, 3) for r in records],
            "dataset_hash": dataset_hash,
            "dev_intervals": {k: v.to_dict()
                              for k, v in objective_intervals(records, validation).items()},
        }
        if cost_objective is not None:
            attrs.update(cost_objective=cost_objective, costs=[r.cost for r in records])
        if max_mean_tokens is not None:
            attrs["constraint"] = [metrics["mean_tokens"] - max_mean_tokens]
        second = metrics["mean_cost"] if cost_objective is not None else metrics["mean_tokens"]
        frozen = optuna.trial.create_trial(
            params=params, distributions=dists,
            values=[metrics["accuracy"], second], user_attrs=attrs)
        study.add_trial(frozen)
        added.append(frozen)
    numbers = [t.number for t in study.get_trials(deepcopy=False)
               if t.user_attrs.get(DERIVED_ATTR) == trial.number]
    trial.set_user_attr("derived_trials", len(added))
    log.info("trial %d: %d free variants of its setting recorded", trial.number, len(added))
    return numbers
