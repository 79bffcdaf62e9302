"""MLflow tracking: one parent run per study, one nested run per trial, and the study's
reports (Pareto plot, Pareto table, winning policies) as artifacts of the parent run.

Uses ``MlflowClient`` with explicit run ids, so nothing depends on MLflow's global
"active run" state. The tracking URI defaults to a SQLite file in the study's output
directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .policy import Policy

if TYPE_CHECKING:
    from .study import StudyPlan, TrialSummary

__all__ = ["StudyTracker", "plot_pareto"]

log = logging.getLogger(__name__)

STUDY_TAG = "jointopt.study"


def _flatten(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v)[:500] for k, v in params.items()}


class StudyTracker:
    """Logs a study to MLflow. Create with :meth:`open`."""

    def __init__(self, client: Any, experiment_id: str, parent_run_id: str) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id

    @classmethod
    def open(cls, plan: "StudyPlan") -> "StudyTracker":
        """Connect, create the experiment if needed, and start or reopen the study's parent run."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        config = plan.config
        out = plan.out_dir.resolve()
        out.mkdir(parents=True, exist_ok=True)
        uri = config.tracking.tracking_uri or f"sqlite:///{(out / 'mlflow.db').as_posix()}"
        client = MlflowClient(tracking_uri=uri)
        name = config.tracking.experiment or config.name
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            experiment_id = client.create_experiment(
                name, artifact_location=(out / "mlartifacts").as_uri())
        else:
            experiment_id = experiment.experiment_id
        key = f"{plan.storage}#{plan.study_name}"
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{key}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            run = client.create_run(experiment_id, run_name=plan.study_name, tags={
                STUDY_TAG: key, "jointopt.role": "study", "mlflow.note.content":
                config.description or f"jointopt study {plan.study_name}"})
            run_id = run.info.run_id
            client.log_batch(run_id, params=_params({
                "model": plan.model, "task": plan.task.name,
                "n_examples": len(plan.task.examples),
                "search_space": config.search_space, "sampler": config.optimizer.sampler,
                "n_trials": config.optimizer.n_trials, "storage": plan.storage,
            }))
        log.info("MLflow: %s, experiment %r, parent run %s", uri, name, run_id)
        return cls(client, experiment_id, run_id)

    def log_trial(self, number: int, params: Mapping[str, Any], metrics: Mapping[str, float],
                  policy: Policy, failed: str | None = None) -> str:
        """One nested run with the trial's parameters, metrics and policy."""
        from mlflow.entities import Metric, Param

        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number:04d}", tags={
            "mlflow.parentRunId": self.parent_run_id, "jointopt.role": "trial",
            "jointopt.trial": str(number)})
        run_id = run.info.run_id
        flat = {"trial": number, **params}
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in _flatten(flat).items()],
        )
        self.client.log_text(run_id, policy.to_yaml(), "policy.yaml")
        if failed:
            self.client.set_tag(run_id, "jointopt.fail_reason", failed[:5000])
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
        if not failed:
            self.client.log_batch(self.parent_run_id, metrics=[
                Metric(f"trial_{k}", float(metrics[k]), 0, number)
                for k in ("accuracy", "mean_tokens")
            ])
        return run_id

    def finish(self, trials: Sequence["TrialSummary"], front: Sequence["TrialSummary"],
               paths: Mapping[str, Path]) -> str:
        """Log the Pareto plot, tables and policies to the parent run and close it."""
        from mlflow.entities import Metric

        plot = paths["pareto_csv"].parent / "pareto.png"
        plot_pareto(trials, front, plot)
        self.client.log_artifact(self.parent_run_id, str(plot))
        self.client.log_artifact(self.parent_run_id, str(paths["pareto_csv"]))
        self.client.log_artifact(self.parent_run_id, str(paths["trials_csv"]))
        self.client.log_artifacts(self.parent_run_id, str(paths["policies"]), "policies")
        for t in front:
            if t.test:
                self.client.log_batch(self.parent_run_id, metrics=[
                    Metric("pareto_test_accuracy", t.test["accuracy"].value, 0, t.number),
                    Metric("pareto_test_mean_tokens", t.test["mean_tokens"].value, 0, t.number),
                ])
        if front:
            best = max(front, key=lambda t: t.accuracy or 0.0)
            self.client.log_batch(self.parent_run_id, metrics=[
                Metric("best_accuracy", float(best.accuracy or 0.0), 0, 0),
                Metric("best_accuracy_tokens", float(best.mean_tokens or 0.0), 0, 0),
                Metric("pareto_size", float(len(front)), 0, 0),
                Metric("complete_trials", float(len(trials)), 0, 0),
            ])
        self.client.set_terminated(self.parent_run_id, status="FINISHED")
        return self.parent_run_id


def _params(values: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, v) for k, v in _flatten(values).items()]


def plot_pareto(trials: Sequence["TrialSummary"], front: Sequence["TrialSummary"],
                path: Path) -> Path:
    """Scatter of every trial (accuracy vs mean tokens) with the Pareto front drawn on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    strategies = sorted({t.policy.strategy_label for t in trials if t.policy})
    for strategy in strategies:
        pts = [t for t in trials if t.policy and t.policy.strategy_label == strategy]
        ax.scatter([t.mean_tokens for t in pts], [t.accuracy for t in pts], alpha=0.55,
                   label=strategy, s=28)
    if front:
        ax.step([t.mean_tokens for t in front], [t.accuracy for t in front], where="post",
                color="black", linewidth=1.4, label="Pareto front (dev)")
        tested = [t for t in front if t.test]
        if tested:
            acc = [t.test["accuracy"] for t in tested]
            tok = [t.test["mean_tokens"].value for t in tested]
            ax.errorbar(tok, [a.value for a in acc],
                        yerr=[[a.value - a.low for a in acc], [a.high - a.value for a in acc]],
                        fmt="s", color="crimson", capsize=3, markersize=4,
                        label=f"same policies on test ({acc[0].level:.0%} CI)")
            ax.step(tok, [a.value for a in acc], where="post", color="crimson",
                    linewidth=1.0, linestyle="--")
        for t in front:
            ax.annotate(f"#{t.number}",
                        (t.mean_tokens, t.accuracy), fontsize=7, xytext=(4, -10),
                        textcoords="offset points")
    ax.set_xlabel("mean tokens per example (prompt + completion)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
