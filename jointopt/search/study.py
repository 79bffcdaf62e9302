"""Optuna study orchestration: plan (validate everything), then run trials.

``plan_study`` does every check that can be done without an engine, so ``jointopt
validate`` and the first seconds of ``jointopt run`` fail on bad input before any model
loads. ``run_study`` then runs Optuna's loop in one or more worker processes
(:mod:`jointopt.search.workers`): each trial is built as a frozen Policy, evaluated, told to
Optuna (accuracy up, mean tokens down) and logged to MLflow (a run per trial, opened when
the trial starts). A rerun of the same config continues the same study up to
``n_trials`` complete trials; trials of killed processes are failed and retried.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.backends import Backend, CachedBackend, SampleStore, make_backend
from jointopt.search.config import StudyConfig, load_space_file
from jointopt.errors import BackendError, ConfigError, DataError, JointoptError, relocate
from jointopt.evaluation.evaluate import EvaluationResult, evaluate
from jointopt.core.policy import Policy
from jointopt.search.space import SearchSpace, space_from_dict
from jointopt.tasks import AnswerExtractor, AnswerMatcher, Task, make_dataset_task, make_task
from jointopt.evaluation.stats import Interval, objective_intervals, split_task

if TYPE_CHECKING:
    import optuna

__all__ = ["StudyPlan", "TrialSummary", "StudyResult", "plan_study", "run_study", "join_study",
           "build_task", "build_backend", "check_credentials", "open_study", "open_storage"]

log = logging.getLogger(__name__)

OBJECTIVES = ("accuracy", "mean_tokens")
#: Study user attribute holding the held-out scores of Pareto trials, by trial number.
TEST_ATTR = "test_scores"
#: Study user attribute: how the engine runs (dtype, threads, KV cache, CPU).
ENGINE_ATTR = "engine"
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
    the study has one). ``generated`` / ``cached``: completions the engine produced / the
    sample store served during the trial; ``tokens_generated``: prompt + completion tokens
    the engine processed for it (what the trial really cost to evaluate).
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
        if rel is not None and config.resolve(rel).is_dir():
            raise DataError(
                "the dataset path is a folder, not a file", where=f"task.dataset.{key}",
                value=rel, fix=f"point to the .jsonl, .json or .csv file inside "
                               f"{config.resolve(rel).resolve()}")
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
    from jointopt.backends.models import resolve_model

    if config.model.backend != "vllm":
        return config.model.model  # a name the server or the custom backend understands
    if importlib.util.find_spec("vllm") is None:
        raise BackendError(
            "the vLLM engine is not installed", where="model.backend", value="vllm",
            fix="run `bash scripts/setup.sh` (CPU) or `pip install 'jointopt[vllm]'` (GPU)",
        )
    try:
        return resolve_model(config.model.model)
    except JointoptError as exc:
        raise relocate(exc, "model.") from None


def _check_replay(config: StudyConfig, space: SearchSpace, task: Task,
                  test_task: Task | None) -> str:
    """``backend: replay``: load the bank and check the study can run from it (strategies,
    prompts, temperatures, max_tokens, pool sizes, dataset hashes) before any compute.
    Returns the model name the bank was recorded with (the policies name it)."""
    from jointopt.backends.replay import load_bank
    from jointopt.search.replay_check import check_replayable

    if config.model.bank is None:
        raise ConfigError(
            "backend 'replay' needs a bank file", where="model.bank",
            fix="record one with `jointopt record CONFIG --samples N --out bank.jsonl`, then "
                "set model: {backend: replay, bank: bank.jsonl}")
    bank = load_bank(config.resolve(config.model.bank))
    check_replayable(space, bank, task=task, test_task=test_task, pool_size=(
        config.bank.pool_size if config.bank.enabled and config.cache else None))
    return bank.model_name


def _check_backend(config: StudyConfig) -> None:
    """The backend name resolves, and an ``openai`` backend has valid server URLs and at
    most one source of API key; no credentials inside the config (before any compute)."""
    import difflib
    import re

    from jointopt.backends import BACKENDS
    from jointopt.safety.secrets import check_config_for_secrets

    model = config.model
    name = model.backend
    if name not in BACKENDS:
        if ":" not in name:
            close = difflib.get_close_matches(name, list(BACKENDS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise BackendError("unknown backend", where="model.backend", value=name,
                               fix=f"{hint}choose one of: {', '.join(BACKENDS)}, or "
                                   "'package.module:factory'")
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise BackendError(f"cannot import the backend module: {exc}", where="model.backend",
                               value=name, fix="check the module path (package.module:Name) "
                                               "and that the package is installed") from None
        if not callable(getattr(module, attr, None)):
            raise BackendError(f"module {module_name!r} has no callable {attr!r}",
                               where="model.backend", value=name,
                               fix="name a Backend class or a function returning one")
    check_config_for_secrets(config)
    if model.bank is not None and name != "replay":
        raise ConfigError("`bank` only applies to backend: replay", where="model.bank",
                          value=model.bank, fix="set backend: replay, or remove the key")
    uses_urls = name == "openai"
    if not uses_urls and (model.base_urls or model.api_key_env or model.api_key_file):
        key = "base_urls" if model.base_urls else "api_key_env" if model.api_key_env \
            else "api_key_file"
        raise ConfigError(f"`{key}` only applies to backend: openai", where=f"model.{key}",
                          value=name, fix="set backend: openai, or remove the key")
    if model.api_key_env and model.api_key_file:
        raise ConfigError("give the API key by api_key_env or by api_key_file, not both",
                          where="model.api_key_file", value=model.api_key_file,
                          fix="remove one of the two")
    if model.api_key_env and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", model.api_key_env):
        from jointopt.safety.secrets import register

        register(model.api_key_env)
        raise ConfigError("api_key_env must be the NAME of an environment variable, not the key "
                          "itself (the value is not shown)", where="model.api_key_env",
                          fix="export OPENAI_API_KEY=... and write api_key_env: OPENAI_API_KEY; "
                              "if a real key was written into the config, revoke it")
    if not uses_urls:
        return
    from urllib.parse import urlsplit

    from jointopt.backends.openai import normalize_base_url

    urls = list(model.base_urls)
    where = "model.base_urls"
    if not urls and model.engine.get("base_url"):
        engine_urls = model.engine["base_url"]
        urls = [engine_urls] if isinstance(engine_urls, str) else list(engine_urls)
        where = "model.engine.base_url"
    if not urls:
        raise ConfigError("backend: openai needs the URL of at least one server",
                          where="model.base_urls",
                          fix="e.g. base_urls: [http://127.0.0.1:8000/v1]")
    for i, url in enumerate(urls):
        try:
            normalize_base_url(url)
            userinfo = urlsplit(str(url)).username is not None
        except (JointoptError, ValueError) as exc:
            message = exc.message if isinstance(exc, JointoptError) else str(exc)
            raise ConfigError(message, where=f"{where}[{i}]", value=url,
                              fix="e.g. http://127.0.0.1:8000/v1") from None
        if userinfo:
            raise ConfigError("server URLs must not hold credentials (user@ or user:password@; "
                              "the value is not shown)", where=f"{where}[{i}]",
                              fix="give the key with model.api_key_env or model.api_key_file")


def check_credentials(config: StudyConfig) -> None:
    """The API key of the config can be read (environment variable set, file present).
    Called by ``jointopt run``/``worker``/``validate`` before any compute; not part of
    :func:`plan_study`, so exports work on machines without the key."""
    from jointopt.safety.secrets import read_api_key

    model = config.model
    engine_env = model.engine.get("api_key_env") if model.backend == "openai" else None
    read_api_key(env=model.api_key_env or engine_env, file=model.api_key_file,
                 base_dir=config.base_dir)


def _check_limits(config: StudyConfig, space: SearchSpace, task: Task) -> None:
    """Oversize inputs and budgets above the configured caps are refused, naming the field,
    the value and the fix."""
    import dataclasses
    import itertools

    from jointopt.errors import StrategyError
    from jointopt.strategies import get_strategy_class

    opt = config.optimizer
    for kind, examples in (("example", task.examples), ("demonstration", task.demos)):
        for ex in examples:
            size = sum(len(str(v)) for v in ex.inputs.values())
            if size > opt.max_input_chars:
                big = max(ex.inputs, key=lambda k: len(str(ex.inputs[k])))
                raise DataError(
                    f"{kind} {ex.id!r} has {size} characters of input (field {big!r} alone "
                    f"{len(str(ex.inputs[big]))}), above optimizer.max_input_chars = "
                    f"{opt.max_input_chars}", where=f"task: {kind} {ex.id!r}", value=size,
                    fix="shorten or drop that input, or raise optimizer.max_input_chars")
    for value in space.max_tokens.extremes():
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and value > opt.max_tokens_cap:
            raise ConfigError(
                f"max_tokens {value} is above optimizer.max_tokens_cap = {opt.max_tokens_cap}",
                where=f"{space.source}: max_tokens", value=value,
                fix="lower the largest max_tokens of the search space, or raise "
                    "optimizer.max_tokens_cap")
    for name, params in space.strategies.items():
        cls = get_strategy_class(name, where=f"{space.source}: strategies.{name}")
        names = list(params)
        grids = [list(dict.fromkeys(params[p].extremes())) for p in names]
        worst, worst_params = 0, {}
        for combo in itertools.islice(itertools.product(*grids), 4096):
            chosen = dict(zip(names, combo))
            try:
                budget = cls(**chosen).max_completions()
            except (StrategyError, TypeError, ValueError):
                continue  # a combination the strategy refuses is never run
            if budget > worst:
                worst, worst_params = budget, chosen
        if worst > opt.max_completions_per_input:
            shown = ", ".join(f"{k}={v!r}" for k, v in worst_params.items()) or "defaults"
            field_names = {f.name for f in dataclasses.fields(cls.Params)}
            raise ConfigError(
                f"strategy {name!r} may spend {worst} completions per input ({shown}), above "
                f"optimizer.max_completions_per_input = {opt.max_completions_per_input}",
                where=f"{space.source}: strategies.{name}", value=worst_params or worst,
                fix=f"lower the largest values of {', '.join(sorted(set(names) & field_names)) or 'its parameters'}, "
                    "or raise optimizer.max_completions_per_input")


def _check_tracking(config: StudyConfig) -> None:
    if config.tracking.enabled and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            "MLflow is not installed", where="tracking.enabled", value=True,
            fix="pip install 'jointopt[tracking]', or set tracking: {enabled: false}",
        )


def plan_study(config: StudyConfig) -> StudyPlan:
    """Validate everything a study needs, spending no compute."""
    _check_backend(config)
    space_path = config.resolve(config.search_space)
    space_file = load_space_file(space_path)
    space = space_from_dict(space_file.model_dump(exclude_unset=False), str(space_path))
    full_task = build_task(config)
    if not full_task.examples:
        raise ConfigError("the task has no examples", where="task", fix="add data")
    _check_limits(config, space, full_task)
    split = split_task(full_task, config.validation.test_fraction, config.validation.seed)
    task = split.dev
    space = space.with_task(full_task)
    space.validate(task)
    model_name = config.model.model
    if config.model.backend == "replay":
        model_name = model_path = _check_replay(config, space, task, split.test)
    else:
        model_path = _check_model(config)
    _check_tracking(config)
    out_dir = config.out_dir
    storage = config.optimizer.storage or f"sqlite:///{(out_dir / 'optuna.db').as_posix()}"
    if storage.startswith("journal:"):
        from jointopt.search.workers import journal_path

        journal_path(storage)
    log.debug("model %s resolved to %s", config.model.model, model_path)
    return StudyPlan(config=config, task=task, space=space, model=model_name,
                     storage=storage, study_name=config.optimizer.study_name or config.name,
                     out_dir=out_dir, test_task=split.test)


def _sampler(config: StudyConfig, seed: int | None = None) -> "optuna.samplers.BaseSampler":
    import optuna

    opt = config.optimizer
    seed = opt.seed if seed is None else seed
    constraints = _constraints if opt.max_mean_tokens is not None else None
    if opt.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)
    if opt.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    import warnings

    with warnings.catch_warnings():
        # multivariate/group/constant_liar are marked experimental but are what makes
        # TPE handle conditional (strategy-specific) parameters well.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          n_startup_trials=8, constant_liar=True,
                                          constraints_func=constraints)


def _constraints(trial: "optuna.trial.FrozenTrial") -> list[float]:
    """Optuna constraint: <= 0 is feasible (set per trial from ``max_mean_tokens``)."""
    return list(trial.user_attrs.get("constraint", [0.0]))


def open_storage(plan: StudyPlan) -> Any:
    """The plan's Optuna storage object: RDB (SQLite, PostgreSQL, ...) or journal file,
    with heartbeat and retry of trials whose worker died (see :mod:`jointopt.search.workers`)."""
    from jointopt.search.workers import make_storage

    return make_storage(plan.storage, plan.config.optimizer)


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
    existing = len(study.get_trials(deepcopy=False))
    if worker is None:
        study.sampler = _sampler(plan.config, random.SystemRandom().randrange(2 ** 31))
    elif worker or existing:
        study.sampler = _sampler(plan.config,
                                 plan.config.optimizer.seed + 1_000_003 * worker + existing)
    return study


def _safe(text: str) -> str:
    from jointopt.safety.secrets import redact, safe_url

    return redact(safe_url(text))


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
        tokens_generated=trial.user_attrs.get("tokens_generated"),
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
                             "test_accuracy_ci", "test_mean_tokens", "completions_generated",
                             "completions_cached", "tokens_generated"])
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
                      for v in (t.generated, t.cached, t.tokens_generated)),
                ])
    policy_dir = result_dir / "policies"
    policy_dir.mkdir(exist_ok=True)
    for t in front:
        if t.policy is not None:
            (policy_dir / f"trial_{t.number:04d}.yaml").write_text(t.policy.to_yaml(), "utf-8")
    paths["policies"] = policy_dir
    return paths


TrialCallback = Callable[[TrialSummary, int, int], None]


def build_backend(config: StudyConfig) -> Backend:
    """The engine a study config names (no cache in front).

    ``vllm``: the offline engine. ``openai``: :class:`~jointopt.backends.openai.OpenAIBackend`
    on ``model.base_urls`` with the API key of ``model.api_key_env`` / ``api_key_file``
    (sent as a header, never logged). ``scripted``: :func:`jointopt.testing.scripted_backend`.
    Any other registry name or ``module:factory`` is called with ``model``, ``seed``,
    ``max_model_len`` and ``engine_kwargs``.
    """
    from jointopt.safety.secrets import read_api_key

    m = config.model
    engine = dict(m.engine)
    common: dict[str, Any] = dict(model=m.model, seed=m.seed, max_model_len=m.max_model_len)
    if m.backend == "openai":
        headers = dict(engine.pop("headers", None) or {})
        key = read_api_key(env=m.api_key_env or engine.pop("api_key_env", None),
                           file=m.api_key_file, base_dir=config.base_dir)
        engine.pop("api_key_env", None)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if headers:
            engine["headers"] = headers
        urls = list(m.base_urls) or engine.pop("base_url", None) or "http://127.0.0.1:8000/v1"
        engine.pop("base_url", None)
        return make_backend("openai", base_url=urls, engine_kwargs=engine, **common)
    if m.backend == "scripted":
        from jointopt._registry import import_path

        scripted_backend = import_path("jointopt.testing:scripted_backend")

        return scripted_backend(engine_kwargs=engine, **common)
    if m.backend == "replay":
        return make_backend("replay", bank=config.resolve(m.bank) if m.bank else None,
                            engine_kwargs=engine)
    if m.backend == "vllm":
        common["cpu"] = m.cpu.model_dump(exclude_none=True)
    return make_backend(m.backend, engine_kwargs=engine, **common)


class _Trials:
    """Runs trials of one study in this process: the engine (built on first use, with the
    sample cache in front), the MLflow tracker, and the per-trial bookkeeping."""

    def __init__(self, plan: StudyPlan, study: "optuna.Study", tracker: Any, target: int,
                 backend: Backend | None = None, on_trial: TrialCallback | None = None,
                 on_engine_ready: Callable[[], None] | None = None) -> None:
        self.plan = plan
        self.study = study
        self.tracker = tracker
        self.target = target
        self.backend = backend
        self.on_trial = on_trial
        self.on_engine_ready = on_engine_ready
        self.engine: Backend | None = None
        self._oracle_done = False

    def ready(self) -> Backend:
        if self.engine is None:
            engine = self.backend or build_backend(self.plan.config)
            if self.on_engine_ready:
                self.on_engine_ready()
            if self.plan.config.cache:
                engine = CachedBackend(engine, SampleStore(self.plan.out_dir / "samples.sqlite"))
            self.engine = engine
            self._record_engine(engine.engine_record())
        return self.engine

    def _record_engine(self, record: dict[str, str | int | float]) -> None:
        """Keep how the engine runs in the study's attributes and the MLflow parent run:
        dtype and threads change results slightly, so a resumed study shows each."""
        if not record:
            return
        self.study.set_user_attr(ENGINE_ATTR, record)
        if self.tracker is not None:
            self.tracker.tag_parent({f"engine.{k.removeprefix('engine_')}": v
                                     for k, v in record.items()})

    def _label_by_oracle(self) -> None:
        """``difficulty.source: oracle``: give dev and test examples their oracle bins as
        difficulty labels (deterministic given the sample store)."""
        import dataclasses

        engine, seed = self.ready(), self.plan.config.seed

        def relabel(task: Task) -> Task:
            bins = self.plan.space.oracle_labels(task, engine, seed)
            return task.subset(dataclasses.replace(e, difficulty=bins[e.id])
                               for e in task.examples)

        test = self.plan.test_task
        self.plan = dataclasses.replace(self.plan, task=relabel(self.plan.task),
                                        test_task=relabel(test) if test else None)
        self._oracle_done = True
        counts: dict[str, int] = {}
        for e in self.plan.task.examples:
            counts[str(e.difficulty)] = counts.get(str(e.difficulty), 0) + 1
        log.info("oracle bins on dev: %s", dict(sorted(counts.items())))

    def _fit_probes(self) -> None:
        """Fit the probe's bin thresholds per prompt on the dev split (deterministic given
        the sample store, so every worker and rerun gets the same ones) and write the
        agreement of probe bins with oracle bins to ``difficulty_report.json`` and MLflow."""
        import dataclasses

        space, report = self.plan.space.with_probe_thresholds(
            self.plan.task, self.ready(), seed=self.plan.config.seed)
        self.plan = dataclasses.replace(self.plan, space=space)
        self._publish_difficulty_report(report, {
            f"probe_{{}}.{prompt_id}": item["agreement"]
            for prompt_id, item in report["prompts"].items()})

    def _fit_predictor(self) -> None:
        """Fit the text difficulty predictor on the dev split's oracle bins (deterministic
        given the sample store) and write how its bins agree with oracle bins, on dev and
        on the held-out split, to ``difficulty_report.json`` and MLflow."""
        import dataclasses

        space, report = self.plan.space.with_predictor(
            self.plan.task, self.ready(), seed=self.plan.config.seed,
            test_task=self.plan.test_task)
        self.plan = dataclasses.replace(self.plan, space=space)
        self._publish_difficulty_report(report, {
            f"predictor_{{}}.{split}": report[split]
            for split in ("dev", "test") if split in report})

    def _publish_difficulty_report(self, report: dict[str, Any],
                                   agreements: dict[str, dict[str, Any]]) -> None:
        """``agreements``: metric-name pattern (``{}`` is the measure) -> agreement dict."""
        import json

        path = self.plan.out_dir / "difficulty_report.json"
        path.write_text(json.dumps(report, indent=2), encoding="utf-8")
        for pattern, agree in agreements.items():
            log.info("%s bins vs oracle bins: exact %.2f, within one %.2f, spearman %.2f",
                     pattern.format("*"), agree["exact"], agree["within_one"],
                     agree["spearman"])
        if self.tracker is not None:
            from mlflow.entities import Metric

            metrics = [Metric(pattern.format(key), float(agree[key]), 0, 0)
                       for pattern, agree in agreements.items()
                       for key in ("exact", "within_one", "spearman")]
            try:
                self.tracker.client.log_batch(self.tracker.parent_run_id, metrics=metrics)
                self.tracker.client.log_artifact(self.tracker.parent_run_id, str(path))
            except Exception as exc:  # another worker logged the same report first
                log.debug("difficulty report not logged: %s", exc)

    def _expand_proposals(self) -> None:
        """Turn ``{propose: ...}`` prompt entries into templates with the study's engine
        (cached in ``<output_dir>/proposals.json``: reruns and other workers make no new
        proposal calls) and log new proposals, with the proposer's tokens, to MLflow."""
        import dataclasses

        from jointopt.integrations.proposals import log_proposals_to_mlflow

        collected: list[Any] = []
        space = self.plan.space.with_proposals(self.plan.task, self.ready(),
                                               self.plan.out_dir / "proposals.json", collected)
        self.plan = dataclasses.replace(self.plan, space=space)
        for proposals in collected:
            log.info("proposals %s: %d templates, %d proposer tokens%s", proposals.key[:12],
                     len(proposals.templates), proposals.proposer_tokens,
                     " (cached)" if proposals.cache_hit else "")
            if self.tracker is not None and not proposals.cache_hit:
                log_proposals_to_mlflow(self.tracker.client, self.tracker.parent_run_id,
                                        proposals,
                                        artifact_file=f"proposals/{proposals.key[:12]}.json")

    def close(self) -> None:
        if self.engine is None:
            return
        if self.backend is None:
            self.engine.close()
        elif isinstance(self.engine, CachedBackend):
            self.engine.store.close()
        self.engine = None

    def run(self, trial: "optuna.Trial") -> list[float]:
        from jointopt.safety.secrets import redact
        from jointopt.search.workers import FAIL_ATTR, MLFLOW_ATTR, WORKER_ATTR, worker_identity

        if self.plan.space.proposals:
            self._expand_proposals()
        if self.plan.space.needs_probe_fit:
            self._fit_probes()
        if self.plan.space.needs_predictor_fit:
            self._fit_predictor()
        if self.plan.space.oracle is not None and not self._oracle_done:
            self._label_by_oracle()
        plan = self.plan
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        policy = plan.space.build_policy(trial, plan.model)
        trial.set_user_attr("policy", policy.to_dict())
        run_id = None
        if self.tracker is not None:
            run_id = self.tracker.start_trial(trial.number, trial.params, policy)
            trial.set_user_attr(MLFLOW_ATTR, run_id)
        try:
            engine = self.ready()
            engine_tokens = getattr(engine, "engine_tokens", None)
            result: EvaluationResult = evaluate(policy, plan.task, engine,
                                                seed=plan.config.seed,
                                                pool_size=bank_pool_size(plan))
        except JointoptError as exc:
            trial.set_user_attr(FAIL_ATTR, redact(str(exc)))
            log.warning("trial %d failed: %s", trial.number, exc)
            raise
        except BaseException as exc:
            reason = redact(f"{type(exc).__name__}: {exc}")
            trial.set_user_attr(FAIL_ATTR, reason)
            if run_id is not None:  # Optuna runs no callback after an uncaught error
                self.tracker.end_run(run_id, "FAILED", reason)
            raise
        for key, value in result.metrics().items():
            trial.set_user_attr(key, value)
        # Without a sample store the engine ran everything the evaluation counted.
        trial.set_user_attr("tokens_generated", float(
            engine.engine_tokens - engine_tokens if engine_tokens is not None
            else sum(r.tokens for r in result.records)))
        # Per-example outcomes, in task order, so intervals can be computed later.
        trial.set_user_attr("correct", [round(r.correct, 6) for r in result.records])
        trial.set_user_attr("tokens", [round(r.tokens, 3) for r in result.records])
        trial.set_user_attr("dataset_hash", plan.task_hash)
        trial.set_user_attr("dev_intervals", {
            k: v.to_dict()
            for k, v in objective_intervals(result.records, plan.config.validation).items()})
        limit = plan.config.optimizer.max_mean_tokens
        if limit is not None:
            trial.set_user_attr("constraint", [result.mean_tokens - limit])
        return [result.accuracy, result.mean_tokens]

    def after(self, frozen: "optuna.trial.FrozenTrial", complete: int) -> None:
        if self.tracker is not None:
            self.tracker.end_trial(frozen)
        if self.on_trial:
            self.on_trial(summarize(frozen), complete, self.target)


def _work(plan: StudyPlan, study: "optuna.Study", tracker: Any, target: int, *,
          backend: Backend | None = None, on_trial: TrialCallback | None = None,
          on_engine_ready: Callable[[], None] | None = None,
          parent_pid: int | None = None) -> tuple[Any, _Trials]:
    from jointopt.search.workers import work_on_study

    trials = _Trials(plan, study, tracker, target, backend, on_trial, on_engine_ready)
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

    from jointopt.search.workers import TooManyFailures, recover_trials, study_counts

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
    tracker = _open_tracker(plan, study)
    done, running, _ = study_counts(study)
    log.info("study %s: %d complete trials, %d running, target %d", plan.study_name, done,
             running, target)

    engine_owner: _Trials | None = None
    failure: TooManyFailures | None = None
    try:
        if n_workers > 1:
            from jointopt.search.workers import launch_workers

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
            owner = engine_owner or _Trials(plan, study, None, target, backend)
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
    return StudyResult(study_name=plan.study_name, storage=plan.storage, out_dir=plan.out_dir,
                       trials=trials, pareto=front, mlflow_run_id=run_id,
                       wall_time=time.perf_counter() - start,
                       extra={"reports_written": finalize})


def _finished_last(study: "optuna.Study") -> bool:
    """This process completed the study's latest complete trial (of the workers that end
    together, that one writes the reports and closes the MLflow parent run)."""
    import optuna

    from jointopt.search.workers import WORKER_ATTR, worker_identity

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return False
    last = max(complete, key=lambda t: (t.datetime_complete or t.datetime_start, t.number))
    return last.user_attrs.get(WORKER_ATTR) == worker_identity()


def bank_pool_size(plan: StudyPlan) -> int | None:
    """Pool size for scoring parallel strategies from the sample bank (None: run them)."""
    bank = plan.config.bank
    return bank.pool_size if bank.enabled and plan.config.cache else None


def _score_front_on_test(study: "optuna.Study", plan: StudyPlan, trials: _Trials) -> None:
    """Re-score every Pareto policy not yet scored on the held-out split."""
    tests = dict(study.user_attrs.get(TEST_ATTR, {}))
    todo = [t for t in pareto_front(study) if str(t.number) not in tests and t.policy]
    if not todo or plan.test_task is None:
        return
    if trials.plan.space.oracle is not None and not trials._oracle_done:
        trials._label_by_oracle()
    test_task = trials.plan.test_task
    engine = trials.ready()
    for t in todo:
        result = evaluate(t.policy, test_task, engine, seed=plan.config.seed,
                          pool_size=bank_pool_size(plan))
        tests[str(t.number)] = {
            k: v.to_dict()
            for k, v in objective_intervals(result.records, plan.config.validation).items()}
        log.info("trial %d on test: accuracy %.3f", t.number, result.accuracy)
    study.set_user_attr(TEST_ATTR, tests)


def work_in_child(config: StudyConfig, target: int, index: int, parent_pid: int) -> Any:
    """Body of a worker process started by :func:`jointopt.search.workers.launch_workers`."""
    plan = plan_study(config)
    check_credentials(config)
    study = open_study(plan, worker=index)
    tracker = _open_tracker(plan, study)
    report, trials = _work(plan, study, tracker, target, parent_pid=parent_pid)
    trials.close()
    return report
