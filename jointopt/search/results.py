"""Study results: one trial record (:class:`TrialSummary`), the outcome of a study
(:class:`StudyResult`), its Pareto front, and the result files (CSV tables, policies)."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

from jointopt.core.policy import Policy
from jointopt.evaluation.stats import Interval

if TYPE_CHECKING:
    import optuna

__all__ = ["TrialSummary", "StudyResult", "non_dominated", "summarize", "pareto_front",
           "write_reports"]

T = TypeVar("T")

OBJECTIVES = ("accuracy", "mean_tokens")
#: Study user attribute holding the held-out scores of Pareto trials, by trial number.
TEST_ATTR = "test_scores"


@dataclass(frozen=True)
class TrialSummary:
    """One finished trial.

    ``dev`` holds bootstrap intervals of accuracy and mean tokens on the examples the
    study searched on; ``test`` the same on the held-out split (Pareto trials only, when
    the study has one). ``generated`` / ``cached``: completions the engine produced / the
    sample store served during the trial; ``tokens_generated``: prompt + completion tokens
    the engine processed for it (what the trial really cost to evaluate);
    ``tokens_reused``: completion tokens its policy counts that a sample store served
    instead of the engine (stored samples, and thoughts cut from a larger thinking
    budget's pool).
    """

    number: int
    state: str
    accuracy: float | None
    mean_tokens: float | None
    params: dict[str, Any]
    policy: Policy | None
    wall_time: float | None = None
    generated: int | None = None
    cached: int | None = None
    tokens_generated: int | None = None
    tokens_reused: int | None = None
    dev: dict[str, Interval] | None = None
    test: dict[str, Interval] | None = None
    #: Mean cost per example when the study's second objective is a cost
    #: (``optimizer.cost``: ``flops`` or ``price``; its name in ``cost_objective``).
    mean_cost: float | None = None
    cost_objective: str | None = None
    #: For a derived trial (a free variant scored from another trial's pools, see
    #: :mod:`jointopt.search.derived`): the number of that trial; None otherwise.
    derived_from: int | None = None


@dataclass(frozen=True)
class StudyResult:
    """The outcome of :func:`run_study`.

    Attributes:
        pareto: non-dominated trials (accuracy up, tokens down), by increasing tokens,
            one per distinct objective point.
        trials: every complete trial of the study (including earlier runs and derived
            trials: free variants recorded from another trial's pools).
    """

    study_name: str
    storage: str
    out_dir: Path
    trials: tuple[TrialSummary, ...]
    pareto: tuple[TrialSummary, ...]
    mlflow_run_id: str | None = None
    wall_time: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def proposed(self) -> tuple[TrialSummary, ...]:
        """The trials the sampler proposed (``trials`` without derived ones)."""
        return tuple(t for t in self.trials if t.derived_from is None)

    @property
    def pareto_policies(self) -> list[Policy]:
        return [t.policy for t in self.pareto if t.policy is not None]


def _intervals(data: dict[str, Any] | None) -> dict[str, Interval] | None:
    if not data:
        return None
    return {k: Interval(**v) for k, v in data.items()}


def summarize(trial: "optuna.trial.FrozenTrial",
              tests: dict[str, Any] | None = None) -> TrialSummary:
    policy_data = trial.user_attrs.get("policy")
    values = trial.values or [None, None]
    cost = trial.user_attrs.get("cost_objective")  # the second value is a mean cost
    tokens = trial.user_attrs.get("mean_tokens") if cost else values[1]
    return TrialSummary(
        dev=_intervals(trial.user_attrs.get("dev_intervals")),
        test=_intervals((tests or {}).get(str(trial.number))),
        number=trial.number,
        state=trial.state.name,
        accuracy=values[0],
        mean_tokens=tokens,
        mean_cost=values[1] if cost else None,
        cost_objective=cost,
        params=dict(trial.params),
        policy=Policy.from_dict(policy_data) if policy_data else None,
        wall_time=trial.user_attrs.get("wall_time_s"),
        generated=trial.user_attrs.get("completions_generated"),
        cached=trial.user_attrs.get("completions_cached"),
        tokens_generated=trial.user_attrs.get("tokens_generated"),
        tokens_reused=trial.user_attrs.get("completion_tokens_reused"),
        derived_from=trial.user_attrs.get("derived_from"),
    )


def non_dominated(items: Iterable[T], *,
                  accuracy: Callable[[T], float] = attrgetter("accuracy"),
                  tokens: Callable[[T], float] = attrgetter("mean_tokens"),
                  number: Callable[[T], int] = attrgetter("number")) -> list[T]:
    """The Pareto front of ``items`` (accuracy up, mean tokens down): one item per distinct
    objective point (the lowest ``number`` among equal points), by increasing tokens.

    Points are compared at 9 decimals of accuracy and 6 of tokens, so float noise in
    equal means does not split a point in two. The keys read a
    :class:`TrialSummary` by default; pass others for Optuna trials or plain tuples.
    """
    def key(item: T) -> tuple[float, float, int]:
        return round(tokens(item), 6), -round(accuracy(item), 9), number(item)

    front: list[T] = []
    best = -math.inf
    for item in sorted(items, key=key):
        if round(accuracy(item), 9) > best:
            front.append(item)
            best = round(accuracy(item), 9)
    return front


def feasible(trial: "optuna.trial.FrozenTrial") -> bool:
    """The trial meets the study's constraint (``optimizer.max_mean_tokens``)."""
    return all(c <= 0 for c in trial.user_attrs.get("constraint", [0.0]))


def front_trials(study: "optuna.Study", *, keep: Callable[[Any], bool] = feasible
                 ) -> list["optuna.trial.FrozenTrial"]:
    """The non-dominated complete trials of ``study`` among those ``keep`` accepts
    (feasible ones by default), by increasing tokens, one per distinct point."""
    import optuna

    trials = [t for t in study.get_trials(deepcopy=False,
                                          states=(optuna.trial.TrialState.COMPLETE,))
              if t.values and keep(t)]
    return non_dominated(trials, accuracy=lambda t: t.values[0],
                         tokens=lambda t: t.values[1])


def pareto_front(study: "optuna.Study") -> tuple[TrialSummary, ...]:
    """Distinct non-dominated feasible trials of ``study``, by increasing tokens (with
    their held-out scores when the study has a test split)."""
    tests = study.user_attrs.get(TEST_ATTR, {})
    return tuple(summarize(t, tests) for t in front_trials(study))


def write_reports(result_dir: Path, trials: tuple[TrialSummary, ...],
                  front: tuple[TrialSummary, ...]) -> dict[str, Path]:
    """Write the Pareto table (CSV), the winning policies (YAML) and the trials table."""
    result_dir.mkdir(parents=True, exist_ok=True)
    paths = {"pareto_csv": result_dir / "pareto.csv", "trials_csv": result_dir / "trials.csv"}
    for key, rows in (("pareto_csv", front), ("trials_csv", trials)):
        with paths[key].open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["trial", "accuracy", "mean_tokens", "prompt", "strategy",
                             "allocation", "dev_accuracy_ci", "test_accuracy",
                             "test_accuracy_ci", "test_mean_tokens", "completions_generated",
                             "completions_cached", "tokens_generated", "tokens_reused",
                             "mean_cost", "derived_from"])
            for t in rows:
                dev = (t.dev or {}).get("accuracy")
                test = t.test or {}
                writer.writerow([
                    t.number, f"{t.accuracy:.4f}", f"{t.mean_tokens:.2f}",
                    t.policy.prompt.id if t.policy else "",
                    t.policy.strategy_label if t.policy else "",
                    t.policy.describe() if t.policy else "",
                    f"[{dev.low:.4f}, {dev.high:.4f}]" if dev else "",
                    f"{test['accuracy'].value:.4f}" if test else "",
                    f"[{test['accuracy'].low:.4f}, {test['accuracy'].high:.4f}]" if test else "",
                    f"{test['mean_tokens'].value:.2f}" if test else "",
                    *("" if v is None else int(v)
                      for v in (t.generated, t.cached, t.tokens_generated, t.tokens_reused)),
                    "" if t.mean_cost is None else f"{t.mean_cost:.6g}",
                    "" if t.derived_from is None else t.derived_from,
                ])
    policy_dir = result_dir / "policies"
    policy_dir.mkdir(exist_ok=True)
    for t in front:
        if t.policy is not None:
            (policy_dir / f"trial_{t.number:04d}.yaml").write_text(t.policy.to_yaml(), "utf-8")
    paths["policies"] = policy_dir
    return paths


TrialCallback = Callable[[TrialSummary, int, int], None]
