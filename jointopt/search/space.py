"""Search spaces: which policies a study may try, and how a trial becomes a Policy.

A search space lists prompt templates, strategies with their parameters, and the sampling
budget (temperature, max_tokens). Strategy parameters are *conditional*: the trial
parameter ``majority.n`` exists only in trials whose ``strategy`` is ``majority``.
A file is turned into one by :func:`jointopt.search.space_build.space_from_dict`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from jointopt._registry import DIFFICULTY_SOURCES
from jointopt.difficulty.base import DifficultySource, StudyFit
from jointopt.errors import ConfigError, JointoptError, StrategyError, relocate
from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.core.prompts import PromptTemplate, validate_template
from jointopt.strategies import get_strategy_class
from jointopt.tasks import Task

__all__ = ["Fixed", "Choice", "IntRange", "FloatRange", "Param", "SearchSpace"]

Scalar = Union[str, int, float, bool, None]


@dataclass(frozen=True)
class Fixed:
    """A parameter that is not searched."""

    value: Scalar

    def suggest(self, trial: Any, name: str) -> Scalar:
        return self.value

    def extremes(self) -> list[Scalar]:
        return [self.value]


@dataclass(frozen=True)
class Choice:
    """One of a list of values."""

    choices: tuple[Scalar, ...]

    def suggest(self, trial: Any, name: str) -> Scalar:
        return trial.suggest_categorical(name, list(self.choices))

    def extremes(self) -> list[Scalar]:
        return list(self.choices)


@dataclass(frozen=True)
class IntRange:
    """An integer in [low, high]."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[Scalar]:
        return [self.low, self.high]


@dataclass(frozen=True)
class FloatRange:
    """A real number in [low, high]."""

    low: float
    high: float
    step: float | None = None
    log: bool = False

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[Scalar]:
        return [self.low, self.high]


Param = Union[Fixed, Choice, IntRange, FloatRange]


def suggest_allocation(trial: Any, strategies: Mapping[str, Mapping[str, Param]],
                       temperature: Param, max_tokens: Param, prefix: str = "",
                       thinking: Any = None) -> Allocation:
    """One bin's allocation suggested on ``trial``: the strategy, its parameters
    (``<prefix><strategy>.<param>``), ``<prefix>temperature``, ``<prefix>max_tokens`` and,
    with a :class:`~jointopt.search.space_thinking.ThinkingParam`, ``<prefix>thinking_budget``."""
    strategy = trial.suggest_categorical(f"{prefix}strategy", list(strategies))
    params = {pname: spec.suggest(trial, f"{prefix}{strategy}.{pname}")
              for pname, spec in strategies[strategy].items()}
    return Allocation(strategy=strategy,
                      temperature=float(temperature.suggest(trial, f"{prefix}temperature")),
                      max_tokens=int(max_tokens.suggest(trial, f"{prefix}max_tokens")),
                      params=params,
                      thinking=thinking.suggest(trial, prefix) if thinking else None)


@dataclass(frozen=True)
class SearchSpace:
    """The joint space: prompt x strategy (x its parameters) x temperature x max_tokens.

    Attributes:
        prompts: candidate templates (ids unique).
        strategies: strategy name -> parameter name -> :data:`Param`.
        temperature: sampling temperature.
        max_tokens: completion-token cap per generation.
        source: where the space was defined (for error messages).
    """

    prompts: tuple[PromptTemplate, ...]
    strategies: Mapping[str, Mapping[str, Param]]
    temperature: Param = Fixed(0.7)
    max_tokens: Param = Fixed(64)
    source: str = "search space"
    difficulty: DifficultySpec = DifficultySpec()
    #: The searched thinking budget (a ``ThinkingParam``), or None: no thinking phase.
    thinking: Any = None
    #: The ``prompts:`` entries as written, including ``{propose: ...}`` ones that
    #: :meth:`with_proposals` turns into templates once an engine is available.
    entries: tuple[Mapping[str, Any], ...] = ()
    #: The ``difficulty.source`` with its settings (None: the source ``difficulty``
    #: names, with default settings).
    difficulty_source: DifficultySource | None = None
    #: Once a source that needs a fit is fitted (:meth:`fit_difficulty`), the spec of
    #: each prompt id.
    fitted: Mapping[str, DifficultySpec] = dataclasses.field(default_factory=dict)
    #: The study's model names when it has several: each bin's ``model`` is searched
    #: (``<bin>.model``); empty: the policy's own model answers every bin.
    models: tuple[str, ...] = ()

    def bin_source(self) -> DifficultySource:
        """The :class:`~jointopt.difficulty.base.DifficultySource` of this space."""
        if self.difficulty_source is not None:
            return self.difficulty_source
        return DIFFICULTY_SOURCES.create(self.difficulty.source,
                                         where=f"{self.source}: difficulty.source")

    @property
    def needs_fit(self) -> bool:
        """Trials need :meth:`fit_difficulty` first."""
        return self.bin_source().needs_fit and not self.fitted

    def fit_difficulty(self, task: Task, backend: Any, seed: int = 0,
                       test_task: Task | None = None) -> tuple["SearchSpace", StudyFit]:
        """Fit the difficulty source on the dev examples (``task``); returns the fitted
        space and the :class:`~jointopt.difficulty.base.StudyFit` (specs and report)."""
        fit = self.bin_source().fit_study(task, backend, prompts=self.prompts, seed=seed,
                                          test_task=test_task)
        return dataclasses.replace(self, fitted=dict(fit.specs),
                                   difficulty=fit.specs[self.prompts[0].id]), fit

    def difficulty_labels(self, task: Task, backend: Any, seed: int = 0) -> dict[str, str]:
        """The bins of ``task``'s examples from a source that is not servable (with the
        space's first prompt)."""
        return self.bin_source().label_examples(task, backend, prompt=self.prompts[0],
                                                seed=seed)

    @property
    def proposals(self) -> tuple[Mapping[str, Any], ...]:
        """The ``{propose: ...}`` entries not yet expanded."""
        return tuple(e for e in self.entries if "propose" in e)

    def with_proposals(self, task: Task, backend: Any, cache_path: Any,
                       collected: list | None = None) -> "SearchSpace":
        """The space with proposal entries replaced by proposed templates (cached: the same
        inputs make no new proposal calls)."""
        if not self.proposals:
            return self
        from jointopt.integrations.proposals import expand_prompts

        prompts = expand_prompts(list(self.entries), task, backend, cache_path,
                                 source=self.source, collected=collected)
        space = dataclasses.replace(self, prompts=tuple(prompts),
                                    entries=tuple(p.to_dict() for p in prompts))
        space.validate(task)
        return space

    def prompt(self, prompt_id: str) -> PromptTemplate:
        return next(p for p in self.prompts if p.id == prompt_id)

    def validate(self, task: Task) -> None:
        """Check every template against the task and every parameter value the space can
        produce against its strategy, before any compute."""
        for template in self.prompts:
            try:
                validate_template(template, task)
            except JointoptError as exc:
                raise relocate(exc, f"{self.source}: ") from None
        for name, params in self.strategies.items():
            cls = get_strategy_class(name, where=f"{self.source}: strategies.{name}")
            defaults = set(cls.param_names())
            # Every extreme value of each parameter, with the others at their first value
            # (parameters can depend on each other, e.g. chain_share needs budget).
            base = {pname: spec.extremes()[0] for pname, spec in params.items()}
            for pname, spec in params.items():
                for value in spec.extremes():
                    try:
                        strategy = cls(**{**base, pname: value})
                        strategy.check_task(task)
                    except StrategyError as exc:
                        # The strategy names the parameter it rejected (``mcts.c``).
                        where = exc.where if exc.where and "." in exc.where else f"{name}.{pname}"
                        raise ConfigError(
                            exc.message, where=f"{self.source}: strategies.{where}",
                            value=exc.value if exc.has_value else value, fix=exc.fix,
                        ) from None
            if not params and defaults:
                cls().check_task(task)
        for label, spec, low in (("temperature", self.temperature, 0.0),
                                 ("max_tokens", self.max_tokens, 1)):
            for value in spec.extremes():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                    raise ConfigError(
                        f"`{label}` must be a number >= {low}",
                        where=f"{self.source}: {label}", value=value,
                        fix=f"use values >= {low}",
                    )
                if label == "max_tokens" and not isinstance(value, int):
                    raise ConfigError("`max_tokens` must be an integer",
                                      where=f"{self.source}: max_tokens", value=value,
                                      fix="use whole numbers of tokens")

    def build_policy(self, trial: Any, model: str) -> Policy:
        """Suggest every parameter on an Optuna trial (or anything with its ``suggest_*``
        methods) and return the resulting frozen Policy.

        Parameter names: ``prompt``, ``strategy``, ``<strategy>.<param>``, ``temperature``,
        ``max_tokens``; with difficulty bins each but ``prompt`` is prefixed ``<bin>.``.
        """
        prompt_id = trial.suggest_categorical("prompt", [p.id for p in self.prompts])
        source = self.bin_source()
        spec = self.difficulty
        if source.needs_fit:
            if prompt_id not in self.fitted:
                raise ConfigError(f"the difficulty {source.key} is not fitted for this prompt",
                                  where=f"{self.source}: difficulty", value=prompt_id,
                                  fix="fit it with SearchSpace.fit_difficulty first")
            spec = self.fitted[prompt_id]
        if source.splits:
            bins = {b: self._allocation(trial, f"{b}.") for b in spec.bins}
        else:
            bins = {spec.default_bin: self._allocation(trial, "")}
        return Policy(model=model, prompt=self.prompt(prompt_id), bins=bins, difficulty=spec)

    def _allocation(self, trial: Any, prefix: str) -> Allocation:
        allocation = suggest_allocation(trial, self.strategies, self.temperature,
                                        self.max_tokens, prefix, self.thinking)
        if len(self.models) < 2:
            return allocation
        model = trial.suggest_categorical(f"{prefix}model", list(self.models))
        return dataclasses.replace(allocation, model=model)

    def with_task(self, task: Task) -> "SearchSpace":
        """The space with the difficulty spec its source gives for the task's examples
        (a ``label`` source takes its bins from the examples' labels)."""
        if self.fitted:
            return self
        spec = self.bin_source().space_spec(task, where=f"{self.source}: difficulty")
        return dataclasses.replace(self, difficulty=spec)

    @staticmethod
    def param_from_spec(spec: Any, where: str) -> Param:
        """Turn a YAML value (scalar, ``{choices: [...]}`` or ``{low, high, ...}``) into a Param."""
        if not isinstance(spec, Mapping):
            return Fixed(spec)
        keys = set(spec)
        if keys == {"choices"}:
            choices = spec["choices"]
            if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
                raise ConfigError("`choices` must be a non-empty list", where=where,
                                  value=choices, fix="write choices: [a, b, c]")
            return Choice(tuple(choices))
        allowed = {"low", "high", "step", "log"}
        if not keys or not keys <= allowed or not {"low", "high"} <= keys:
            unknown = sorted(keys - allowed)
            raise ConfigError(
                "a searched parameter is {choices: [...]} or {low: .., high: .., step?, log?}"
                + (f"; unknown key(s) {unknown}" if unknown else ""),
                where=where, value=dict(spec), fix="e.g. n: {low: 2, high: 8}",
            )
        low, high = spec["low"], spec["high"]
        for label, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"`{label}` must be a number", where=f"{where}.{label}",
                                  value=value, fix="use a number")
        if low > high:
            raise ConfigError("`low` must be <= `high`", where=where, value=(low, high),
                              fix="swap them")
        log_scale = bool(spec.get("log", False))
        if log_scale and low <= 0:
            raise ConfigError("a log-scale range needs `low` > 0", where=f"{where}.low",
                              value=low, fix="raise low or drop log")
        step = spec.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float))
                                 or step <= 0):
            raise ConfigError("`step` must be a number > 0", where=f"{where}.step",
                              value=step, fix="use a positive step")
        if isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int)):
            return IntRange(low, high, step or 1, log_scale)
        return FloatRange(float(low), float(high), None if step is None else float(step),
                          log_scale)
