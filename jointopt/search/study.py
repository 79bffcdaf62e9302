"""Optuna study orchestration: plan (validate everything), then run trials.

:func:`~jointopt.search.plan.plan_study` does every check that can be done without an engine, so ``jointopt
validate`` and the first seconds of ``jointopt run`` fail on bad input before any model
loads. ``run_study`` then runs Optuna's loop in one or more worker processes
(:mod:`jointopt.search.workers`): each trial is built as a frozen Policy, evaluated, told to
Optuna (accuracy up, mean tokens down) and logged to MLflow (a run per trial, opened when
the trial starts). A rerun of the same config continues the same study up to
``n_trials`` complete trials; trials of killed processes are failed and retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.backends import Backend
from jointopt.errors import ConfigError
from jointopt.evaluation.evaluate import evaluate
from jointopt.evaluation.stats import objective_intervals
from jointopt.search.config import StudyConfig
from jointopt.search.objective import TrialRunner
from jointopt.search.plan import StudyPlan, bank_pool_size, plan_study
from jointopt.search.plan_checks import check_credentials
from jointopt.search.sampler import make_sampler
from jointopt.search.results import (
    OBJECTIVES, TEST_ATTR, StudyResult, TrialCallback, pareto_front, summarize, write_reports)

if TYPE_CHECKING:
    import optuna

__all__ = ["run_study", "join_study", "load_study", "open_study", "open_storage",
           "name_objectives"]

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")


def _sampler(config: StudyConfig, seed: int | None = None) -> "optuna.samplers.BaseSampler":
    return make_sampler(config.optimizer, seed)


def open_storage(plan: StudyPlan) -> Any:
    """The plan's Optuna storage object: RDB (SQLite, PostgreSQL, ...) or journal file,
    with heartbeat and retry of trials whose worker died (see :mod:`jointopt.search.storage`)."""
    from jointopt.search.storage import make_storage

    return make_storage(plan.storage, plan.config.optimizer)


def load_study(plan: StudyPlan) -> "optuna.Study":
    """The plan's existing Optuna study (what export and certify read).

    Raises:
        ConfigError: no storage yet, or no study of that name in it.
    """
    import optuna

    storage = plan.storage
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        raise ConfigError("the study storage does not exist yet", where="optimizer.storage",
                          value=storage[len("sqlite:///"):],
                          fix="run the study first: jointopt run CONFIG")
    try:
        return optuna.load_study(study_name=plan.study_name, storage=open_storage(plan))
    except KeyError:
        raise ConfigError(f"no study named {plan.study_name!r} in the storage",
                          where="optimizer.study_name", value=plan.study_name,
                          fix="run the study first (jointopt run CONFIG), or check "
                              "optimizer.study_name / --storage") from None


def open_study(plan: StudyPlan, *, worker: int | None = 0) -> "optuna.Study":
    """Create or load the plan's Optuna study (storage directories are created).

    Args:
        worker: index of the worker process; the sampler seed is ``optimizer.seed`` for the
            first worker of a fresh study and is shifted by the worker index and by the
            number of trials the study already holds otherwise (so parallel workers and
            resumed runs do not repeat the same suggestions). None: a random seed.
    """
    import random

    import optuna

    storage = open_storage(plan)
    for attempt in range(5):
        try:
            study = optuna.create_study(
                study_name=plan.study_name, storage=storage, load_if_exists=True,
                directions=list(DIRECTIONS), sampler=_sampler(plan.config),
            )
            break
        except ValueError as exc:
            raise ConfigError(f"cannot open the Optuna study: {exc}",
                              where="optimizer.storage", value=_safe(plan.storage),
                              fix="use a fresh study_name or storage") from None
        except Exception as exc:  # noqa: BLE001 - concurrent creation by several workers
            if attempt == 4:
                raise ConfigError(f"cannot open the Optuna study: {type(exc).__name__}: "
                                  f"{_safe(str(exc))[:300]}", where="optimizer.storage",
                                  value=_safe(plan.storage),
                                  fix="check the storage; rerun the same command") from None
            time.sleep(0.2 * (attempt + 1) * (0.5 + random.random()))
    name_objectives(study, plan.config.optimizer.cost)
    existing = len(study.get_trials(deepcopy=False))
    if worker is None:
        study.sampler = _sampler(plan.config, random.SystemRandom().randrange(2 ** 31))
    elif worker or existing:
        study.sampler = _sampler(plan.config,
                                 plan.config.optimizer.seed + 1_000_003 * worker + existing)
    return study


def name_objectives(study: "optuna.Study", cost: str = "tokens") -> None:
    """Give the study's objectives their names (``accuracy``, ``mean_tokens``; with an
    ``optimizer.cost`` of ``flops`` or ``price``: ``mean_cost``), as optuna-dashboard and
    ``study.trials_dataframe()`` show them."""
    import warnings

    import optuna

    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(OBJECTIVES) if cost == "tokens"
                                   else [OBJECTIVES[0], "mean_cost"])


def _safe(text: str) -> str:
    from jointopt.safety.secrets import redact, safe_url

    return redact(safe_url(text))


def _work(plan: StudyPlan, study: "optuna.Study", tracker: Any, target: int, *,
          backend: Backend | None = None, on_trial: TrialCallback | None = None,
          on_engine_ready: Callable[[], None] | None = None,
          parent_pid: int | None = None) -> tuple[Any, TrialRunner]:
    from jointopt.search.workers import work_on_study

    trials = TrialRunner(plan, study, tracker, target, backend, on_trial, on_engine_ready)
    try:
        report = work_on_study(study, plan.config.optimizer, target, trials.run,
                               after_trial=trials.after, get_ready=trials.ready,
                               parent_pid=parent_pid)
    except BaseException:
        trials.close()
        raise
    return report, trials


def _open_tracker(plan: StudyPlan, study: "optuna.Study") -> Any:
    if not plan.config.tracking.enabled:
        return None
    from jointopt._registry import OBSERVERS

    StudyTracker = OBSERVERS.load("mlflow", "tracking")  # an observer, named not imported

    return StudyTracker.open(plan, study)


def run_study(
    config: StudyConfig,
    *,
    backend: Backend | None = None,
    n_trials: int | None = None,
    on_trial: TrialCallback | None = None,
    on_engine_ready: Callable[[], None] | None = None,
    workers: int | None = None,
) -> StudyResult:
    """Run (or continue) a study until it holds ``n_trials`` complete trials.

    Trials of processes that died (killed, machine lost) are failed and retried first;
    several processes can work on one study at once (``workers``, or ``jointopt worker``
    on other machines against the same storage; see :mod:`jointopt.search.workers`).

    Args:
        config: a validated study config (see :func:`jointopt.load_config`).
        backend: use this backend instead of building the configured engine (tests,
            notebooks that keep one engine alive across studies). Only with one worker.
        n_trials: override ``config.optimizer.n_trials``.
        on_trial: called after each finished trial (complete or failed) with (summary,
            complete trials of the study, n_trials).
        on_engine_ready: called once the engine is loaded (the workers are started).
        workers: worker processes on this machine (default ``optimizer.workers``); more
            than one starts them with ``multiprocessing`` (spawn), each with its own engine.

    Raises:
        JointoptError: bad input (before any compute), or
            :class:`~jointopt.search.workers.TooManyFailures` when trials keep failing.
    """
    return _run(config, backend=backend, n_trials=n_trials, on_trial=on_trial,
                on_engine_ready=on_engine_ready, workers=workers, role="run")


def join_study(
    config: StudyConfig,
    *,
    n_trials: int | None = None,
    on_trial: TrialCallback | None = None,
    on_engine_ready: Callable[[], None] | None = None,
) -> StudyResult:
    """Work on a study that other processes (here or on other machines) work on too
    (``jointopt worker``). Like :func:`run_study` with one worker, but with a random sampler
    seed, and the reports and the MLflow parent run are finished only by the worker that
    sees the study complete with no trial running."""
    return _run(config, n_trials=n_trials, on_trial=on_trial, on_engine_ready=on_engine_ready,
                workers=1, role="worker")


def _run(config: StudyConfig, *, backend: Backend | None = None, n_trials: int | None = None,
         on_trial: TrialCallback | None = None,
         on_engine_ready: Callable[[], None] | None = None, workers: int | None = None,
         role: str = "run") -> StudyResult:
    import optuna

    from jointopt.search.workers import TooManyFailures
    from jointopt.search.recovery import recover_trials, study_counts

    start = time.perf_counter()
    plan = plan_study(config)
    target = n_trials if n_trials is not None else config.optimizer.n_trials
    n_workers = workers if workers is not None else config.optimizer.workers
    if n_workers > 1 and backend is not None:
        raise ConfigError("several workers build their own engines; a Backend object cannot "
                          "be shared across processes", where="workers", value=n_workers,
                          fix="name the backend in the config (model.backend, e.g. "
                              "'package.module:factory'), or run one worker")
    if backend is None:
        check_credentials(config)
    from jointopt.search.preflight import preflight

    preflight(plan, model=backend is None)  # before storage, MLflow DB or engine exist
    study = open_study(plan, worker=None if role == "worker" else 0)
    recover_trials(study, config.optimizer)
    _seed_settings(study, plan)
    tracker = _open_tracker(plan, study)
    done, running, _ = study_counts(study)
    log.info("study %s: %d complete trials, %d running, target %d", plan.study_name, done,
             running, target)

    engine_owner: TrialRunner | None = None
    failure: TooManyFailures | None = None
    try:
        if n_workers > 1:
            from jointopt.search.launcher import launch_workers

            failure = launch_workers(plan, study, n_workers, target, on_trial=on_trial,
                                     on_started=on_engine_ready)
        else:
            try:
                _, engine_owner = _work(plan, study, tracker, target, backend=backend,
                                        on_trial=on_trial, on_engine_ready=on_engine_ready)
            except TooManyFailures as exc:
                failure = exc
        complete, running, _ = study_counts(study)
        finalize = role == "run" or (complete >= target and running == 0
                                     and _finished_last(study))
        if finalize and failure is None and plan.test_task is not None:
            owner = engine_owner or TrialRunner(plan, study, None, target, backend)
            engine_owner = owner
            _score_front_on_test(study, plan, owner)
    finally:
        if engine_owner is not None:
            engine_owner.close()

    trials = tuple(summarize(t) for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    front = pareto_front(study)
    run_id = None
    if finalize or failure is not None:
        paths = write_reports(plan.out_dir, trials, front)
        if tracker is not None:
            run_id = (tracker.finish(trials, front, paths) if failure is None
                      else tracker.abort(str(failure)))
    elif tracker is not None:
        run_id = tracker.parent_run_id
    if failure is not None:
        raise failure
    from jointopt.search.budget import spent_tokens
    from jointopt.search.expansion import samples_saved

    extra = {"reports_written": finalize, "tokens_generated": spent_tokens(study),
             "samples_saved": samples_saved(study)}
    log.info("study %s: %d tokens generated, %d samples saved by racing", plan.study_name,
             extra["tokens_generated"], extra["samples_saved"])
    return StudyResult(study_name=plan.study_name, storage=plan.storage, out_dir=plan.out_dir,
                       trials=trials, pareto=front, mlflow_run_id=run_id,
                       wall_time=time.perf_counter() - start, extra=extra)


def _seed_settings(study: "optuna.Study", plan: StudyPlan) -> None:
    """A fresh study with free-variant expansion that races settings or has a generation
    budget queues its settings cheapest first (:func:`jointopt.search.budget.seed_settings`)."""
    from jointopt.search.budget import seed_settings
    from jointopt.search.expansion import SettingExpansion

    expansion = SettingExpansion.for_plan(plan)
    opt = plan.config.optimizer
    if expansion is not None and (opt.racing.enabled or opt.max_generated_tokens is not None):
        seed_settings(study, plan, expansion.variants,
                      expansion.pool_size(bank_pool_size(plan) or 0),
                      screen=opt.racing.enabled and opt.racing.screen > 0)


def _finished_last(study: "optuna.Study") -> bool:
    """This process completed the study's latest complete trial (of the workers that end
    together, that one writes the reports and closes the MLflow parent run)."""
    import optuna

    from jointopt.search.storage import WORKER_ATTR
    from jointopt.search.recovery import worker_identity

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return False
    last = max(complete, key=lambda t: (t.datetime_complete or t.datetime_start, t.number))
    return last.user_attrs.get(WORKER_ATTR) == worker_identity()


def _score_front_on_test(study: "optuna.Study", plan: StudyPlan, trials: TrialRunner) -> None:
    """Re-score every Pareto policy not yet scored on the held-out split."""
    tests = dict(study.user_attrs.get(TEST_ATTR, {}))
    todo = [t for t in pareto_front(study) if str(t.number) not in tests and t.policy]
    if not todo or plan.test_task is None:
        return
    trials.label_examples()
    test_task = trials.plan.test_task
    engine = trials.ready()
    for t in todo:
        result = evaluate(t.policy, test_task, engine, seed=plan.config.seed,
                          pool_size=bank_pool_size(plan), costs=trials.costs)
        tests[str(t.number)] = {
            k: v.to_dict()
            for k, v in objective_intervals(result.records, plan.config.validation).items()}
        log.info("trial %d on test: accuracy %.3f", t.number, result.accuracy)
    study.set_user_attr(TEST_ATTR, tests)


def work_in_child(config: StudyConfig, target: int, index: int, parent_pid: int) -> Any:
    """Body of a worker process started by :func:`jointopt.search.launcher.launch_workers`."""
    plan = plan_study(config)
    check_credentials(config)
    study = open_study(plan, worker=index)
    tracker = _open_tracker(plan, study)
    report, trials = _work(plan, study, tracker, target, parent_pid=parent_pid)
    trials.close()
    return report
