"""Optuna study orchestration: plan (validate everything), then run trials.

``plan_study`` does every check that can be done without an engine, so ``jointopt
validate`` and the first seconds of ``jointopt run`` fail on bad input before any model
loads. ``run_study`` then asks Optuna for trials, builds each as a frozen Policy,
evaluates it, tells Optuna (accuracy up, mean tokens down) and logs to MLflow.
A rerun of the same config continues the same study up to ``n_trials`` complete trials.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends import Backend, CachedBackend, SampleStore, make_backend
from .config import StudyConfig, load_space_file
from .errors import BackendError, ConfigError, DataError, JointoptError, relocate
from .evaluation import EvaluationResult, evaluate
from .policy import Policy
from .space import SearchSpace, space_from_dict
from .tasks import AnswerExtractor, AnswerMatcher, Task, make_dataset_task, make_task
from .validation import Interval, bootstrap, split_task

if TYPE_CHECKING:
    import optuna

__all__ = ["StudyPlan", "TrialSummary", "StudyResult", "plan_study", "run_study", "build_task"]

log = logging.getLogger(__name__)

OBJECTIVES = ("accuracy", "mean_tokens")
#: Study user attribute holding the held-out scores of Pareto trials, by trial number.
TEST_ATTR = "test_scores"
DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class StudyPlan:
    """A validated study, ready to run."""

    config: StudyConfig
    task: Task
    space: SearchSpace
    model: str
    storage: str
    study_name: str
    out_dir: Path
    test_task: Task | None = None

    @property
    def task_hash(self) -> str:
        """Content hash of the evaluation examples (provenance of measured numbers)."""
        return task_hash(self.task)


def task_hash(task: Task) -> str:
    """sha256 over the examples' ids, inputs and targets, in order."""
    import hashlib
    import json

    payload = [[e.id, dict(e.inputs), e.target, e.difficulty] for e in task.examples]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class TrialSummary:
    """One finished trial.

    ``dev`` holds bootstrap intervals of accuracy and mean tokens on the examples the
    study searched on; ``test`` the same on the held-out split (Pareto trials only, when
    the study has one).
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
    dev: dict[str, Interval] | None = None
    test: dict[str, Interval] | None = None


@dataclass(frozen=True)
class StudyResult:
    """The outcome of :func:`run_study`.

    Attributes:
        pareto: non-dominated trials (accuracy up, tokens down), by increasing tokens,
            one per distinct objective point.
        trials: every complete trial of the study (including earlier runs).
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
    def pareto_policies(self) -> list[Policy]:
        return [t.policy for t in self.pareto if t.policy is not None]


def build_task(config: StudyConfig) -> Task:
    """The task of a config (data files are read and checked here)."""
    spec = config.task
    if spec.builtin is not None:
        b = spec.builtin
        try:
            return make_task(b.family, levels=tuple(b.levels), n_per_level=b.n_per_level,
                             seed=b.seed, n_demos=b.n_demos)
        except JointoptError as exc:
            raise relocate(exc, "task.builtin.") from None
    d = spec.dataset
    if d is None:
        raise ConfigError("the task needs `builtin` or `dataset`", where="task",
                          fix="see experiments/quickstart.yaml")
    for key, rel in (("path", d.path), ("demos", d.demos)):
        if rel is not None and not config.resolve(rel).is_file():
            raise DataError(
                "dataset file not found", where=f"task.dataset.{key}", value=rel,
                fix=f"relative paths start at the config file's folder; looked for "
                    f"{config.resolve(rel).resolve()}",
            )
    return make_dataset_task(
        config.resolve(d.path),
        name=d.name,
        description=d.description,
        input_fields=d.input_fields,
        target_field=d.target_field,
        id_field=d.id_field,
        difficulty_field=d.difficulty_field,
        extractor=AnswerExtractor(kind=d.extractor.kind, pattern=d.extractor.pattern),
        matcher=AnswerMatcher(kind=d.matcher.kind, tolerance=d.matcher.tolerance),
        demos_path=config.resolve(d.demos) if d.demos else None,
    )


def _check_model(config: StudyConfig) -> str:
    from .models import resolve_model

    if config.model.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise BackendError(
            "the vLLM engine is not installed", where="model.backend", value="vllm",
            fix="run `bash scripts/setup.sh` (CPU) or `pip install 'jointopt[vllm]'` (GPU)",
        )
    try:
        return resolve_model(config.model.model)
    except JointoptError as exc:
        raise relocate(exc, "model.") from None


def _check_tracking(config: StudyConfig) -> None:
    if config.tracking.enabled and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            "MLflow is not installed", where="tracking.enabled", value=True,
            fix="pip install 'jointopt[tracking]', or set tracking: {enabled: false}",
        )


def plan_study(config: StudyConfig) -> StudyPlan:
    """Validate everything a study needs, spending no compute."""
    space_path = config.resolve(config.search_space)
    space_file = load_space_file(space_path)
    space = space_from_dict(space_file.model_dump(exclude_unset=False), str(space_path))
    full_task = build_task(config)
    if not full_task.examples:
        raise ConfigError("the task has no examples", where="task", fix="add data")
    split = split_task(full_task, config.validation.test_fraction, config.validation.seed)
    task = split.dev
    space = space.with_task(full_task)
    space.validate(task)
    model_path = _check_model(config)
    _check_tracking(config)
    out_dir = config.out_dir
    storage = config.optimizer.storage or f"sqlite:///{(out_dir / 'optuna.db').as_posix()}"
    log.debug("model %s resolved to %s", config.model.model, model_path)
    return StudyPlan(config=config, task=task, space=space, model=config.model.model,
                     storage=storage, study_name=config.optimizer.study_name or config.name,
                     out_dir=out_dir, test_task=split.test)


def _sampler(config: StudyConfig) -> "optuna.samplers.BaseSampler":
    import optuna

    opt = config.optimizer
    constraints = _constraints if opt.max_mean_tokens is not None else None
    if opt.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=opt.seed, constraints_func=constraints)
    if opt.sampler == "random":
        return optuna.samplers.RandomSampler(seed=opt.seed)
    import warnings

    with warnings.catch_warnings():
        # multivariate/group/constant_liar are marked experimental but are what makes
        # TPE handle conditional (strategy-specific) parameters well.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=opt.seed, multivariate=True, group=True,
                                          n_startup_trials=8, constant_liar=True,
                                          constraints_func=constraints)


def _constraints(trial: "optuna.trial.FrozenTrial") -> list[float]:
    """Optuna constraint: <= 0 is feasible (set per trial from ``max_mean_tokens``)."""
    return list(trial.user_attrs.get("constraint", [0.0]))


def open_study(plan: StudyPlan) -> "optuna.Study":
    """Create or load the plan's Optuna study (storage directories are created)."""
    import optuna

    if plan.storage.startswith("sqlite:///"):
        Path(plan.storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.create_study(
            study_name=plan.study_name, storage=plan.storage, load_if_exists=True,
            directions=list(DIRECTIONS), sampler=_sampler(plan.config),
        )
    except ValueError as exc:
        raise ConfigError(f"cannot open the Optuna study: {exc}", where="optimizer.storage",
                          value=plan.storage, fix="use a fresh study_name or storage") from None


def _intervals(data: dict[str, Any] | None) -> dict[str, Interval] | None:
    if not data:
        return None
    return {k: Interval(**v) for k, v in data.items()}


def summarize(trial: "optuna.trial.FrozenTrial",
              tests: dict[str, Any] | None = None) -> TrialSummary:
    policy_data = trial.user_attrs.get("policy")
    values = trial.values or [None, None]
    return TrialSummary(
        dev=_intervals(trial.user_attrs.get("dev_intervals")),
        test=_intervals((tests or {}).get(str(trial.number))),
        number=trial.number,
        state=trial.state.name,
        accuracy=values[0],
        mean_tokens=values[1],
        params=dict(trial.params),
        policy=Policy.from_dict(policy_data) if policy_data else None,
        wall_time=trial.user_attrs.get("wall_time_s"),
        generated=trial.user_attrs.get("completions_generated"),
        cached=trial.user_attrs.get("completions_cached"),
    )


def pareto_front(study: "optuna.Study") -> tuple[TrialSummary, ...]:
    """Distinct non-dominated points of ``study.best_trials``, by increasing tokens
    (with their held-out scores when the study has a test split)."""
    tests = study.user_attrs.get(TEST_ATTR, {})
    seen: set[tuple[float, float]] = set()
    front = []
    feasible = [t for t in study.best_trials
                if all(c <= 0 for c in t.user_attrs.get("constraint", [0.0]))]
    for trial in sorted(feasible, key=lambda t: (t.values[1], -t.values[0], t.number)):
        point = (round(trial.values[0], 9), round(trial.values[1], 6))
        if point not in seen:
            seen.add(point)
            front.append(summarize(trial, tests))
    return tuple(front)


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
                             "test_accuracy_ci", "test_mean_tokens"])
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
                ])
    policy_dir = result_dir / "policies"
    policy_dir.mkdir(exist_ok=True)
    for t in front:
        if t.policy is not None:
            (policy_dir / f"trial_{t.number:04d}.yaml").write_text(t.policy.to_yaml(), "utf-8")
    paths["policies"] = policy_dir
    return paths


TrialCallback = Callable[[TrialSummary, int, int], None]


def run_study(
    config: StudyConfig,
    *,
    backend: Backend | None = None,
    n_trials: int | None = None,
    on_trial: TrialCallback | None = None,
    on_engine_ready: Callable[[], None] | None = None,
) -> StudyResult:
    """Run (or continue) a study until it holds ``n_trials`` complete trials.

    Args:
        config: a validated study config (see :func:`jointopt.load_config`).
        backend: use this backend instead of building the configured engine (tests,
            notebooks that keep one engine alive across studies).
        n_trials: override ``config.optimizer.n_trials``.
        on_trial: called after each trial with (summary, done, total).
        on_engine_ready: called once the engine is loaded.
    """
    import optuna

    start = time.perf_counter()
    plan = plan_study(config)
    target = n_trials if n_trials is not None else config.optimizer.n_trials
    study = open_study(plan)
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    remaining = max(target - done, 0)
    log.info("study %s: %d complete trials, %d to run", plan.study_name, done, remaining)

    tracker = None
    if config.tracking.enabled:
        from .tracking import StudyTracker

        tracker = StudyTracker.open(plan)

    owned = backend is None
    engine: Backend | None = None
    try:
        if remaining:
            engine = backend or make_backend(
                config.model.backend, model=config.model.model, seed=config.model.seed,
                max_model_len=config.model.max_model_len, engine_kwargs=dict(config.model.engine),
            )
            if on_engine_ready:
                on_engine_ready()
            if config.cache:
                engine = CachedBackend(engine, SampleStore(plan.out_dir / "samples.sqlite"))
        for _ in range(remaining):
            summary = _run_trial(study, plan, engine, tracker)  # type: ignore[arg-type]
            done += summary.state == "COMPLETE"
            if on_trial:
                on_trial(summary, done, target)
        if plan.test_task is not None:
            engine = _score_front_on_test(study, plan, engine, backend)
    finally:
        if engine is not None and owned:
            engine.close()
        elif isinstance(engine, CachedBackend):
            engine.store.close()

    trials = tuple(summarize(t) for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    front = pareto_front(study)
    paths = write_reports(plan.out_dir, trials, front)
    run_id = None
    if tracker is not None:
        run_id = tracker.finish(trials, front, paths)
    return StudyResult(study_name=plan.study_name, storage=plan.storage, out_dir=plan.out_dir,
                       trials=trials, pareto=front, mlflow_run_id=run_id,
                       wall_time=time.perf_counter() - start)


def _pool_size(plan: StudyPlan) -> int | None:
    bank = plan.config.bank
    return bank.pool_size if bank.enabled and plan.config.cache else None


def _score_front_on_test(study: "optuna.Study", plan: StudyPlan, engine: Backend | None,
                         backend: Backend | None) -> Backend | None:
    """Re-score every Pareto policy not yet scored on the held-out split."""
    tests = dict(study.user_attrs.get(TEST_ATTR, {}))
    todo = [t for t in pareto_front(study) if str(t.number) not in tests and t.policy]
    if not todo:
        return engine
    if engine is None:
        engine = backend or make_backend(
            plan.config.model.backend, model=plan.config.model.model,
            seed=plan.config.model.seed, max_model_len=plan.config.model.max_model_len,
            engine_kwargs=dict(plan.config.model.engine))
        if plan.config.cache:
            engine = CachedBackend(engine, SampleStore(plan.out_dir / "samples.sqlite"))
    val = plan.config.validation
    test_task = plan.test_task
    if test_task is None:
        return engine
    for t in todo:
        result = evaluate(t.policy, test_task, engine, seed=plan.config.seed,
                          pool_size=_pool_size(plan))
        tests[str(t.number)] = {
            "accuracy": bootstrap([r.correct for r in result.records], resamples=val.resamples,
                                  level=val.level, seed=val.seed).to_dict(),
            "mean_tokens": bootstrap([r.tokens for r in result.records],
                                     resamples=val.resamples, level=val.level,
                                     seed=val.seed).to_dict(),
        }
        log.info("trial %d on test: accuracy %.3f", t.number, result.accuracy)
    study.set_user_attr(TEST_ATTR, tests)
    return engine


def _run_trial(study: "optuna.Study", plan: StudyPlan, backend: Backend,
               tracker: Any) -> TrialSummary:
    import optuna

    trial = study.ask()
    policy = plan.space.build_policy(trial, plan.model)
    policy_dict = policy.to_dict()
    trial.set_user_attr("policy", policy_dict)
    try:
        result: EvaluationResult = evaluate(policy, plan.task, backend, seed=plan.config.seed,
                                            pool_size=_pool_size(plan))
    except BaseException as exc:
        trial.set_user_attr("fail_reason", str(exc) or type(exc).__name__)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if not isinstance(exc, JointoptError):
            raise
        if tracker is not None:
            tracker.log_trial(trial.number, trial.params, {}, policy, failed=str(exc))
        log.warning("trial %d failed: %s", trial.number, exc)
        return TrialSummary(trial.number, "FAIL", None, None, dict(trial.params), policy)
    for key, value in result.metrics().items():
        trial.set_user_attr(key, value)
    # Per-example outcomes, in task order, so intervals can be computed later.
    trial.set_user_attr("correct", [round(r.correct, 6) for r in result.records])
    trial.set_user_attr("tokens", [round(r.tokens, 3) for r in result.records])
    trial.set_user_attr("dataset_hash", plan.task_hash)
    val = plan.config.validation
    trial.set_user_attr("dev_intervals", {
        "accuracy": bootstrap([r.correct for r in result.records], resamples=val.resamples,
                              level=val.level, seed=val.seed).to_dict(),
        "mean_tokens": bootstrap([r.tokens for r in result.records], resamples=val.resamples,
                                 level=val.level, seed=val.seed).to_dict(),
    })
    limit = plan.config.optimizer.max_mean_tokens
    if limit is not None:
        trial.set_user_attr("constraint", [result.mean_tokens - limit])
    study.tell(trial, [result.accuracy, result.mean_tokens])
    if tracker is not None:
        tracker.log_trial(trial.number, trial.params, result.metrics(), policy)
    return TrialSummary(trial.number, "COMPLETE", result.accuracy, result.mean_tokens,
                        dict(trial.params), policy, result.wall_time, result.generated,
                        result.cached)
