"""Reading a study for export: its plan and Optuna storage, the trial to export (by number
or pick rule) and that trial's measured numbers (bootstrap intervals over its per-example
outcomes, per bin, and held-out scores)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from jointopt.core.policy import Policy
from jointopt.errors import ConfigError
from jointopt.evaluation.stats import Interval, bootstrap
from jointopt.export.pick import pick_point
from jointopt.search.plan import as_plan
from jointopt.search.results import feasible as _feasible
from jointopt.search.study import load_study

if TYPE_CHECKING:
    import optuna

    from jointopt.search.plan import StudyPlan

__all__ = ["as_plan", "choose_trial", "load_study", "measure", "safe_storage"]


def safe_storage(url: str) -> str:
    """A storage URL without its password."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)


def _metric(data: Mapping[str, float]) -> dict[str, float]:
    """A stored interval (trial attributes) in the policy file's metric form."""
    return {"estimate": float(data["value"]), "low": float(data["low"]),
            "high": float(data["high"])}


def _per_example(attrs: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    correct, tokens = attrs.get("correct"), attrs.get("tokens")
    if correct is None or tokens is None:
        return None
    if isinstance(correct, str):
        values = [1.0 if ch == "1" else 0.0 for ch in correct]
    else:
        values = [float(v) for v in correct]
    toks = [float(t) for t in tokens]
    if len(values) != len(toks) or not values:
        return None
    return values, toks


def complete_trials(study: "optuna.Study") -> list["optuna.trial.FrozenTrial"]:
    """The study's complete trials that hold a policy and objective values."""
    import optuna

    return [t for t in study.get_trials(deepcopy=False,
                                        states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("policy") and t.values]


def choose_trial(plan: "StudyPlan", study: "optuna.Study", trial: int | None, pick: str,
                 budget: float | None, warnings: list[str]
                 ) -> tuple["optuna.trial.FrozenTrial", str]:
    """The trial to export (number ``trial``, else the ``pick`` rule among feasible ones)
    and the rule used (``trial`` when a number was given); appends warnings."""
    complete = complete_trials(study)
    if trial is not None:
        chosen = next((t for t in complete if t.number == trial), None)
        if chosen is None:
            numbers = [t.number for t in complete]
            shown = ", ".join(map(str, numbers[:30])) + (" ..." if len(numbers) > 30 else "")
            raise ConfigError(f"trial {trial} is not a complete trial of study "
                              f"{plan.study_name!r}", where="trial", value=trial,
                              fix=f"complete trials: {shown or '(none)'}")
        if not _feasible(chosen):
            warnings.append(f"trial {trial} violates the study's max_mean_tokens constraint")
        return chosen, "trial"
    if pick == "certified":
        from jointopt.export.certified import certified_trial

        return certified_trial(plan, study, complete), "certified"
    feasible = [t for t in complete if _feasible(t)]
    # The objective values are what the front was drawn on (mean cost under a cost
    # objective); no policy needs parsing to choose.
    unit = ("mean tokens" if plan.config.optimizer.cost == "tokens"
            else f"mean cost ({plan.config.optimizer.cost})")
    point = pick_point([_Objectives(t.number, t.values[0], t.values[1]) for t in feasible],
                       pick, budget, second=attrgetter("cost"), unit=unit)
    return next(t for t in feasible if t.number == point.number), pick


@dataclass(frozen=True)
class _Objectives:
    """A trial as the pick rules read it: accuracy and the study's second objective."""

    number: int
    accuracy: float
    cost: float


def measure(plan: "StudyPlan", study: "optuna.Study", chosen: "optuna.trial.FrozenTrial",
            policy: Policy, matches: bool | None, warnings: list[str], *, n_bootstrap: int,
            confidence: float, seed: int
            ) -> tuple[dict[str, Any], Interval | None, Interval | None]:
    """The trial's metrics (the policy file's ``metadata.metrics``) and its accuracy and
    mean-token intervals (None without per-example records); appends warnings."""
    metrics: dict[str, Any] = {}
    acc_ci = tok_ci = None
    per_example = _per_example(chosen.user_attrs)
    if per_example is None:
        warnings.append("the trial has no per-example records: no confidence intervals")
        metrics.update(accuracy={"estimate": float(chosen.values[0]), "low": None,
                                 "high": None},
                       mean_tokens={"estimate": float(chosen.user_attrs.get(
                           "mean_tokens", chosen.values[1])), "low": None, "high": None})
    else:
        correct, tokens = per_example
        acc_ci = bootstrap(correct, resamples=n_bootstrap, level=confidence, seed=seed)
        tok_ci = bootstrap(tokens, resamples=n_bootstrap, level=confidence, seed=seed)
        metrics.update(n_examples=len(correct), confidence=confidence, n_bootstrap=n_bootstrap,
                       bootstrap_seed=seed, accuracy=acc_ci.to_metric(),
                       mean_tokens=tok_ci.to_metric())
        costs = chosen.user_attrs.get("costs")
        if costs and None not in costs:  # the study's second objective was a cost
            metrics.update(cost_objective=chosen.user_attrs.get("cost_objective"),
                           mean_cost=bootstrap(costs, resamples=n_bootstrap, level=confidence,
                                               seed=seed).to_metric())
        for key in ("mean_prompt_tokens", "mean_completion_tokens"):
            if chosen.user_attrs.get(key) is not None:
                metrics[key] = round(float(chosen.user_attrs[key]), 6)
        task = plan.task
        if matches and len(task.examples) == len(correct) and len(policy.bins) > 1:
            metrics["per_bin"] = _per_bin(policy, task, correct, tokens, n_bootstrap=n_bootstrap,
                                          confidence=confidence, seed=seed)
    # Held-out scores (studies with validation.test_fraction): the numbers to trust.
    held_out = study.user_attrs.get("test_scores", {}).get(str(chosen.number))
    if held_out and plan.test_task is not None:
        metrics["test"] = {"n_examples": len(plan.test_task.examples),
                           "accuracy": _metric(held_out["accuracy"]),
                           "mean_tokens": _metric(held_out["mean_tokens"])}
        if "mean_cost" in held_out:
            metrics["test"]["mean_cost"] = _metric(held_out["mean_cost"])
    return metrics, acc_ci, tok_ci


def _per_bin(policy: Policy, task: Any, correct: list[float], tokens: list[float], *,
             n_bootstrap: int, confidence: float, seed: int) -> dict[str, Any]:
    groups: dict[str, list[int]] = {}
    for i, example in enumerate(task.examples):
        groups.setdefault(policy.allocation_for(example)[0], []).append(i)
    return {
        name: {
            "n_examples": len(idx),
            "accuracy": bootstrap([correct[i] for i in idx], resamples=n_bootstrap,
                                  level=confidence, seed=seed).to_metric(),
            "mean_tokens": bootstrap([tokens[i] for i in idx], resamples=n_bootstrap,
                                     level=confidence, seed=seed).to_metric(),
        }
        for name, idx in groups.items()
    }
