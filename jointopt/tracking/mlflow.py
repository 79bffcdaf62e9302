"""MLflow tracking: one parent run per study, one nested run per trial, and the study's
reports (Pareto plot, Pareto table, winning policies) as artifacts of the parent run.

Uses ``MlflowClient`` with explicit run ids, so nothing depends on MLflow's global
"active run" state. The tracking URI defaults to a SQLite file in the study's output
directory.

Several workers, one parent run: the parent's id is kept in the Optuna study (user
attribute ``mlflow_parent_run_id``), so every worker of the study finds the same run. A
worker that finds none looks it up by tag; when it has to create it, it waits a moment and
elects the oldest run carrying the study's tag, deleting its own if another won (several
workers started at the same moment end up with one parent). ``jointopt run --workers N``
creates the parent before starting the workers.

A trial's run is created when the trial starts (status RUNNING) and terminated when it
ends; when a tracker opens, runs left RUNNING by killed processes are closed (FAILED, or
FINISHED with their metrics when Optuna recorded the trial as complete).

Nothing secret reaches MLflow: storage and tracking URLs are logged without passwords,
and every parameter, tag and text artifact goes through :func:`jointopt.safety.secrets.redact`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from jointopt.errors import ConfigError
from jointopt.core.policy import Policy
from jointopt.safety.secrets import redact, register_url, safe_url
from jointopt.tracking.plots import plot_pareto

if TYPE_CHECKING:
    import optuna

    from jointopt.search.plan import StudyPlan
    from jointopt.search.results import TrialSummary

__all__ = ["StudyTracker", "PARENT_ATTR"]

log = logging.getLogger(__name__)

STUDY_TAG = "jointopt.search.study"
#: Study user attribute holding the MLflow parent run id.
PARENT_ATTR = "mlflow_parent_run_id"
#: Seconds a worker that created a parent run waits before electing the oldest one.
ELECTION_WAIT = 0.5

T = TypeVar("T")


def _flatten(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: redact(str(v))[:500] for k, v in params.items()}


def _retry(what: str, fn: Callable[..., T], *args: Any, attempts: int = 5, **kwargs: Any) -> T:
    """Call an MLflow client method, retrying transient errors (a SQLite file several
    workers write to can be busy; a fresh database is being created by another worker)."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - MLflow and SQLAlchemy raise many kinds
            if attempt + 1 == attempts:
                raise ConfigError(f"MLflow {what} failed: {type(exc).__name__}: "
                                  f"{redact(str(exc).splitlines()[0] if str(exc) else '')}",
                                  where="tracking",
                                  fix="check tracking.tracking_uri, or run with --no-tracking"
                                  ) from None
            time.sleep(0.2 * (2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


class StudyTracker:
    """Logs a study to MLflow. Create with :meth:`open`."""

    def __init__(self, client: Any, experiment_id: str, parent_run_id: str,
                 plan: "StudyPlan | None" = None, study: "optuna.Study | None" = None) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        #: The study and its plan (for the report :meth:`finish` writes), when known.
        self.plan = plan
        self.study = study

    @classmethod
    def open(cls, plan: "StudyPlan", study: "optuna.Study | None" = None) -> "StudyTracker":
        """Connect, create the experiment if needed, and find, create or reopen the study's
        parent run (recorded in ``study``); close trial runs left RUNNING by dead workers."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        config = plan.config
        out = plan.out_dir.resolve()
        out.mkdir(parents=True, exist_ok=True)
        uri = config.tracking.tracking_uri or f"sqlite:///{(out / 'mlflow.db').as_posix()}"
        register_url(uri)
        name = config.tracking.experiment or config.name
        with _init_lock(uri):
            # MLflow creates and migrates a fresh database on first connection; two
            # processes doing it at once break a SQLite file for good.
            client = _retry("connection", MlflowClient, tracking_uri=uri)
            experiment_id = _retry("experiment", _experiment, client, name,
                                   (out / "mlartifacts").as_uri())
        tracker = cls(client, experiment_id, "", plan, study)
        run_id = None
        if study is not None:
            run_id = tracker._valid_parent(study.user_attrs.get(PARENT_ATTR))
        if run_id is None:
            run_id = tracker._find_or_create_parent(plan)
            if study is not None:
                study.set_user_attr(PARENT_ATTR, run_id)
        tracker.parent_run_id = run_id
        _retry("reopening the parent run", client.update_run, run_id, status="RUNNING")
        log.info("MLflow: %s, experiment %r, parent run %s", safe_url(uri), name, run_id)
        if study is not None:
            tracker.close_orphans(study)
        return tracker

    # ------------------------------------------------------------------ parent run

    def _valid_parent(self, run_id: Any) -> str | None:
        if not isinstance(run_id, str) or not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - another tracking server, deleted run
            return None
        if run.info.lifecycle_stage != "active" or run.info.experiment_id != self.experiment_id:
            return None
        return run_id

    def _parents(self, key: str) -> list[Any]:
        runs = _retry("search", self.client.search_runs, [self.experiment_id],
                      filter_string=f"tags.`{STUDY_TAG}` = '{_quote(key)}'", max_results=100)
        return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    def _find_or_create_parent(self, plan: "StudyPlan") -> str:
        config = plan.config
        key = f"{safe_url(plan.storage)}#{plan.study_name}"
        found = self._parents(key)
        if found:
            return found[0].info.run_id
        run = _retry("creating the parent run", self.client.create_run, self.experiment_id,
                     run_name=plan.study_name, tags={
                         STUDY_TAG: key, "jointopt.role": "study", "mlflow.note.content":
                         redact(config.description or f"jointopt study {plan.study_name}")})
        mine = run.info.run_id
        _retry("logging parameters", self.client.log_batch, mine, params=_params({
            "model": plan.model, "backend": config.model.backend, "task": plan.task.name,
            "n_examples": len(plan.task.examples),
            "search_space": config.search_space, "sampler": config.optimizer.sampler,
            "n_trials": config.optimizer.n_trials, "storage": safe_url(plan.storage),
        }))
        # Workers that started together may each have created one: the oldest wins.
        time.sleep(ELECTION_WAIT)
        found = self._parents(key)
        winner = found[0].info.run_id if found else mine
        if winner != mine:
            log.info("another worker created the parent run first; using %s", winner)
            try:
                self.client.delete_run(mine)
            except Exception as exc:  # noqa: BLE001 - harmless: an empty extra run
                log.warning("could not delete the duplicate parent run %s: %s", mine, exc)
        return winner

    # ------------------------------------------------------------------ trial runs

    def tag_parent(self, tags: Mapping[str, Any]) -> None:
        """Set tags on the study's parent run (tags, unlike params, may change on resume)."""
        from mlflow.entities import RunTag

        _retry("tagging the parent run", self.client.log_batch, self.parent_run_id,
               tags=[RunTag(str(k), str(v)[:5000]) for k, v in tags.items()])

    def start_trial(self, number: int, params: Mapping[str, Any], policy: Policy) -> str:
        """Open the trial's run (status RUNNING) with its parameters and policy."""
        run = _retry("creating a trial run", self.client.create_run, self.experiment_id,
                     run_name=f"trial-{number:04d}", tags={
                         "mlflow.parentRunId": self.parent_run_id, "jointopt.role": "trial",
                         "jointopt.trial": str(number)})
        run_id = run.info.run_id
        from mlflow.entities import Param

        flat = {"trial": number, **params}
        _retry("logging parameters", self.client.log_batch, run_id,
               params=[Param(k, v) for k, v in _flatten(flat).items()])
        _retry("logging the policy", self.client.log_text, run_id, redact(policy.to_yaml()),
               "policy.yaml")
        return run_id

    def end_trial(self, trial: "optuna.trial.FrozenTrial") -> None:
        """Close the trial's run: metrics and FINISHED when complete, else FAILED with the
        reason. A trial without a run (older studies) gets one now."""
        from mlflow.entities import Metric
        from optuna.trial import TrialState

        run_id = trial.user_attrs.get("mlflow_run_id")
        if not run_id:
            policy = trial.user_attrs.get("policy")
            if not policy:
                return
            run_id = self.start_trial(trial.number, trial.params, Policy.from_dict(policy))
        if trial.state == TrialState.COMPLETE:
            metrics = {k: trial.user_attrs[k] for k in _METRICS if k in trial.user_attrs}
            if trial.values:
                metrics.setdefault("accuracy", trial.values[0])
                metrics.setdefault("mean_tokens", trial.values[1])
            _retry("logging metrics", self.client.log_batch, run_id,
                   metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()])
            _retry("closing a trial run", self.client.set_terminated, run_id, status="FINISHED")
            _retry("logging metrics", self.client.log_batch, self.parent_run_id, metrics=[
                Metric(f"trial_{k}", float(metrics[k]), 0, trial.number)
                for k in ("accuracy", "mean_tokens") if k in metrics])
        elif outcome := _outcome(trial.user_attrs):
            # screened or raced out: a normal end of a proposal, not a failure
            metrics = {k: trial.user_attrs[k] for k in ("tokens_generated",)
                       if k in trial.user_attrs}
            metrics["examples"] = trial.user_attrs[outcome].get("examples", 0)
            _retry("logging metrics", self.client.log_batch, run_id,
                   metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()])
            _retry("tagging a run", self.client.set_tag, run_id, "jointopt.outcome", outcome)
            _retry("closing a trial run", self.client.set_terminated, run_id, status="FINISHED")
        else:
            reason = trial.user_attrs.get("fail_reason") or f"trial ended {trial.state.name}"
            self.end_run(run_id, "FAILED", str(reason))

    def end_run(self, run_id: str, status: str, reason: str | None = None) -> None:
        if reason:
            _retry("tagging a run", self.client.set_tag, run_id, "jointopt.fail_reason",
                   redact(reason)[:5000])
        _retry("closing a run", self.client.set_terminated, run_id, status=status)

    def close_orphans(self, study: "optuna.Study") -> list[str]:
        """Close trial runs left RUNNING whose Optuna trial is not running any more (their
        process was killed): FINISHED with metrics if the trial is COMPLETE, else FAILED."""
        from optuna.trial import TrialState

        runs = _retry("search", self.client.search_runs, [self.experiment_id],
                      filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
                                    "and attributes.status = 'RUNNING'", max_results=1000)
        if not runs:
            return []
        by_run = {t.user_attrs.get("mlflow_run_id"): t for t in study.get_trials(deepcopy=False)}
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        closed = []
        for run in runs:
            trial = by_run.get(run.info.run_id)
            if trial is None:
                number = run.data.tags.get("jointopt.trial")
                trial = by_number.get(int(number)) if number and number.isdigit() else None
            if trial is not None and trial.state in (TrialState.RUNNING, TrialState.WAITING) \
                    and trial.user_attrs.get("mlflow_run_id") == run.info.run_id:
                continue  # still running somewhere
            if trial is not None and trial.state == TrialState.COMPLETE \
                    and trial.user_attrs.get("mlflow_run_id") == run.info.run_id:
                self.end_trial(trial)
            else:
                reason = (trial.user_attrs.get("fail_reason") if trial is not None
                          and trial.user_attrs.get("mlflow_run_id") == run.info.run_id
                          else None) or "the worker process died during the trial"
                self.end_run(run.info.run_id, "FAILED", reason)
            closed.append(run.info.run_id)
        if closed:
            log.info("closed %d MLflow trial run(s) left RUNNING by dead workers", len(closed))
        return closed

    def finish(self, trials: Sequence["TrialSummary"], front: Sequence["TrialSummary"],
               paths: Mapping[str, Path]) -> str:
        """Log the Pareto plot, tables and policies, the front as a table artifact and the
        study report (written to the output folder) to the parent run, and close it."""
        from mlflow.entities import Metric

        from jointopt.tracking.mlflow_report import log_report_and_front

        plot = paths["pareto_csv"].parent / "pareto.png"
        plot_pareto(trials, front, plot)
        self.client.log_artifact(self.parent_run_id, str(plot))
        self.client.log_artifact(self.parent_run_id, str(paths["pareto_csv"]))
        self.client.log_artifact(self.parent_run_id, str(paths["trials_csv"]))
        self.client.log_artifacts(self.parent_run_id, str(paths["policies"]), "policies")
        log_report_and_front(self.client, self.parent_run_id, self.plan, self.study, front)
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

    def abort(self, reason: str) -> str:
        """Mark the parent run FAILED with the reason (a rerun reopens it)."""
        self.end_run(self.parent_run_id, "FAILED", reason)
        return self.parent_run_id


@contextlib.contextmanager
def _init_lock(uri: str) -> Iterator[None]:
    """An exclusive file lock next to a SQLite tracking database (processes of this machine
    take turns creating it); nothing for other URIs (their server or database serialises)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    lock = db.with_name(db.name + ".lock")
    if db.is_file() and lock.is_file() and lock.read_text().strip() == "ready":
        yield  # created and migrated before: MLflow only reads the schema version
        return
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        if fh.read().strip() == "ready":  # another process created it while we waited
            fcntl.flock(fh, fcntl.LOCK_UN)
            yield
            return
        try:
            yield
            fh.write("ready\n")
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _experiment(client: Any, name: str, artifact_location: str) -> str:
    """The experiment's id, created if needed (safe when several workers create it)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # noqa: BLE001 - created by another worker meanwhile
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _outcome(attrs: Mapping[str, Any]) -> str | None:
    """The attribute (``screened`` or ``raced_out``) of a PRUNED trial that ended so, else
    None."""
    from jointopt.search.derived import RACED_ATTR, SCREENED_ATTR

    return next((k for k in (SCREENED_ATTR, RACED_ATTR) if attrs.get(k) is not None), None)


_METRICS = ("accuracy", "mean_tokens", "mean_prompt_tokens", "mean_completion_tokens",
            "wall_time_s", "completions_generated", "completions_cached", "tokens_generated",
            "mean_cost", "derived_trials")


def _params(values: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, v) for k, v in _flatten(values).items()]
