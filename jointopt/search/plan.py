"""The study plan: a config checked against its task, search space, model and limits
before any compute (``jointopt validate`` and the first seconds of ``jointopt run``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from jointopt.backends import backend_class
from jointopt.errors import ConfigError, DataError, JointoptError, relocate
from jointopt.evaluation.stats import split_task
from jointopt.search.config import StudyConfig
from jointopt.search.space_config import load_space_file
from jointopt.search.plan_checks import (
    check_backend, check_limits, check_model, check_replay, check_tracking)
from jointopt.search.space import SearchSpace
from jointopt.search.multi_model import for_each_model, study_costs, with_models
from jointopt.search.space_build import space_from_dict
from jointopt.search.thinking_fit import check_space_fits
from jointopt.tasks import AnswerExtractor, AnswerMatcher, Task, make_dataset_task, make_task

__all__ = ["StudyPlan", "as_plan", "plan_study", "build_task", "task_hash", "bank_pool_size"]

log = logging.getLogger(__name__)


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
    #: Samples per sampled pool of a replayed bank (None: not replayed).
    recorded_pool_size: int | None = None
    #: ``validation.calibration_fraction``: examples only ``jointopt certify`` scores.
    calibration_task: Task | None = None

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


def plan_study(config: StudyConfig) -> StudyPlan:
    """Validate everything a study needs, spending no compute."""
    check_backend(config)
    for_each_model(config, check_backend)
    space_path = config.resolve(config.search_space)
    space_file = load_space_file(space_path)
    space = space_from_dict(space_file.model_dump(exclude_unset=False), str(space_path))
    full_task = build_task(config)
    if not full_task.examples:
        raise ConfigError("the task has no examples", where="task", fix="add data")
    check_limits(config, space, full_task)
    validation = config.validation
    # The calibration split is carved first, so the search and the test scores never see it.
    carved = split_task(full_task, validation.calibration_fraction,
                        f"calibration-{validation.seed}",
                        where="validation.calibration_fraction")
    split = split_task(carved.dev, validation.test_fraction, validation.seed)
    task = split.dev
    space = space.with_task(full_task)
    space.validate(task)
    model_name = config.model.model
    recorded = None
    if "bank" in backend_class(config.model.backend).settings_keys:
        model_name, recorded = check_replay(config, space, task, split.test, carved.test)
        model_path = model_name
    else:
        model_path = check_model(config)
        if not config.models:  # each entry of models: is checked below
            check_space_fits(config, space, full_task, model_path)
    if config.models:
        model_name = config.models[0].label
        for_each_model(config, lambda c: check_space_fits(c, space, full_task, check_model(c)))
    space = with_models(space, config)
    study_costs(config)
    check_tracking(config)
    out_dir = config.out_dir
    storage = config.optimizer.storage or f"sqlite:///{(out_dir / 'optuna.db').as_posix()}"
    if storage.startswith("journal:"):
        from jointopt.search.storage import journal_path

        journal_path(storage)
    log.debug("model %s resolved to %s", config.model.model, model_path)
    return StudyPlan(config=config, task=task, space=space, model=model_name,
                     storage=storage, study_name=config.optimizer.study_name or config.name,
                     out_dir=out_dir, test_task=split.test, calibration_task=carved.test,
                     recorded_pool_size=recorded)


def bank_pool_size(plan: StudyPlan) -> int | None:
    """Pool size for scoring parallel strategies from the sample bank (None: run them):
    ``bank.pool_size``, by default every recorded sample of a replayed bank, else 8."""
    from jointopt.search.config import DEFAULT_POOL_SIZE

    bank = plan.config.bank
    if not (bank.enabled and plan.config.cache):
        return None
    if bank.pool_size is not None:
        return bank.pool_size
    return plan.recorded_pool_size or DEFAULT_POOL_SIZE


def as_plan(config_or_plan: "StudyConfig | StudyPlan | str | Path") -> StudyPlan:
    """The plan of a study config (a path or :class:`StudyConfig`), or the plan itself.

    Raises:
        ConfigError: anything else.
    """
    from jointopt.search.config import load_config

    if isinstance(config_or_plan, StudyPlan):
        return config_or_plan
    if isinstance(config_or_plan, StudyConfig):
        return plan_study(config_or_plan)
    if isinstance(config_or_plan, (str, Path)):
        return plan_study(load_config(config_or_plan))
    raise ConfigError("this needs a study config (path or StudyConfig) or a StudyPlan",
                      where="config_or_plan", value=type(config_or_plan).__name__,
                      fix="pass the study YAML path")
