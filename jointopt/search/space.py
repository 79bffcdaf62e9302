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
    #: ``difficulty.source: probe`` settings (None otherwise) and, once fitted on the dev
    #: split by :meth:`with_probe_thresholds`, the signal thresholds per prompt id.
    probe: Mapping[str, Any] | None = None
    thresholds: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)

    #: ``difficulty.source: oracle`` settings (None otherwise).
    oracle: Mapping[str, Any] | None = None
    #: ``difficulty.source: predictor`` settings (None otherwise); once
    #: :meth:`with_predictor` has fitted the predictor, ``difficulty`` holds it.
    predictor_settings: Mapping[str, Any] | None = None

    @property
    def needs_probe_fit(self) -> bool:
        return self.probe is not None and not self.thresholds

    @property
    def needs_predictor_fit(self) -> bool:
        return self.predictor_settings is not None and self.difficulty.source != "predictor"

    def oracle_labels(self, task: Task, backend: Any, seed: int = 0,
                      settings: Mapping[str, Any] | None = None) -> dict[str, str]:
        """Oracle bins: each example's pass rate over ``oracle_samples`` samples with the
        space's first prompt, cut into ``n_bins`` quantile bins (``"1"`` = easiest).
        ``settings`` defaults to the space's ``oracle`` settings."""
        from jointopt.difficulty.sources import oracle_bins, pass_rates_from_pools
        from jointopt.evaluation.evaluate import pool_samples

        p = settings or self.oracle or {}
        contexts = _settings_contexts(self.prompts[0], task, p, seed)
        results = backend.generate([c.request(n=int(p["oracle_samples"])) for c in contexts])
        pools = {ctx.example.id: pool_samples(ctx, result.completions)
                 for ctx, result in zip(contexts, results)}
        return oracle_bins(pass_rates_from_pools(pools), int(p["n_bins"]))

    def with_probe_thresholds(self, task: Task, backend: Any, seed: int = 0
                              ) -> tuple["SearchSpace", dict[str, Any]]:
        """Fit the probe's bin thresholds per prompt on the dev examples, and report how
        the probe's (serve-time) bins agree with oracle bins from the pass rate over
        ``oracle_samples`` samples. The probe samples are the first samples of the oracle
        pools, so with a sample store the report costs the oracle samples only once."""
        from jointopt.difficulty.sources import agreement, fit_thresholds, oracle_bins, pass_rates_from_pools
        from jointopt.evaluation.evaluate import pool_samples, probe_signal_of

        p = self.probe or {}
        n_bins, k = int(p["n_bins"]), int(p["probe_k"])
        thresholds: dict[str, tuple[float, ...]] = {}
        report: dict[str, Any] = {"probe_k": k, "n_bins": n_bins,
                                  "oracle_samples": int(p["oracle_samples"]), "prompts": {}}
        for template in self.prompts:
            contexts = _settings_contexts(template, task, p, seed)
            n = max(k, int(p["oracle_samples"]))
            results = backend.generate([c.request(n=n) for c in contexts])
            signals, pools = {}, {}
            for ctx, result in zip(contexts, results):
                probe = dataclasses.replace(result, completions=result.completions[:k])
                signals[ctx.example.id] = probe_signal_of(ctx, probe)
                pools[ctx.example.id] = pool_samples(ctx, result.completions)
            cuts = fit_thresholds(list(signals.values()), n_bins)
            thresholds[template.id] = cuts
            spec = self._probe_spec(cuts)
            predicted = {i: spec.probe_bin(s) for i, s in signals.items()}
            oracle = oracle_bins(pass_rates_from_pools(pools), n_bins)
            report["prompts"][template.id] = {
                "thresholds": list(cuts),
                "agreement": agreement(predicted, oracle).to_dict(),
            }
        return dataclasses.replace(self, thresholds=thresholds), report

    def with_predictor(self, task: Task, backend: Any, seed: int = 0,
                       test_task: Task | None = None) -> tuple["SearchSpace", dict[str, Any]]:
        """Fit the text difficulty predictor on the dev examples' oracle bins, and report
        how its bins agree with oracle bins on dev (the fit) and, when ``test_task`` is
        given, on the held-out examples (what serving can expect)."""
        from jointopt.difficulty.sources import FEATURES, DifficultyPredictor, agreement

        p = self.predictor_settings or {}
        dev_bins = self.oracle_labels(task, backend, seed, settings=p)
        predictor = DifficultyPredictor.fit(task.examples, dev_bins)
        bins = tuple(str(i) for i in range(1, int(p["n_bins"]) + 1))
        spec = DifficultySpec(source="predictor", bins=bins, default_bin=bins[-1],
                              predictor=predictor)
        report: dict[str, Any] = {
            "source": "predictor", "n_bins": len(bins), "features": list(FEATURES),
            "oracle_prompt": self.prompts[0].id, "oracle_samples": int(p["oracle_samples"]),
            "dev": agreement({e.id: spec.bin_of(e) for e in task.examples}, dev_bins).to_dict(),
        }
        if test_task is not None and test_task.examples:
            test_bins = self.oracle_labels(test_task, backend, seed, settings=p)
            report["test"] = agreement({e.id: spec.bin_of(e) for e in test_task.examples},
                                       test_bins).to_dict()
        return dataclasses.replace(self, difficulty=spec), report

    def _probe_spec(self, thresholds: tuple[float, ...]) -> DifficultySpec:
        p = self.probe or {}
        bins = tuple(str(i) for i in range(1, int(p["n_bins"]) + 1))
        return DifficultySpec(source="probe", bins=bins, default_bin=bins[-1],
                              probe_k=int(p["probe_k"]),
                              probe_temperature=float(p["probe_temperature"]),
                              probe_max_tokens=int(p["probe_max_tokens"]),
                              thresholds=tuple(thresholds))

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
            defaults = {f.name for f in dataclasses.fields(cls.Params)}
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
        if self.probe is not None:
            if prompt_id not in self.thresholds:
                raise ConfigError("probe thresholds are not fitted for this prompt",
                                  where=f"{self.source}: difficulty", value=prompt_id,
                                  fix="fit them with SearchSpace.with_probe_thresholds first")
            spec = self._probe_spec(self.thresholds[prompt_id])
            bins = {b: self._allocation(trial, f"{b}.") for b in spec.bins}
            return Policy(model=model, prompt=self.prompt(prompt_id), bins=bins,
                          difficulty=spec)
        if self.needs_predictor_fit:
            raise ConfigError("the difficulty predictor is not fitted",
                              where=f"{self.source}: difficulty", value="predictor",
                              fix="fit it with SearchSpace.with_predictor first")
        if self.difficulty.source == "none":
            bins = {self.difficulty.default_bin: self._allocation(trial, "")}
        else:
            bins = {b: self._allocation(trial, f"{b}.") for b in self.difficulty.bins}
        return Policy(model=model, prompt=self.prompt(prompt_id), bins=bins,
                      difficulty=self.difficulty)

    def _allocation(self, trial: Any, prefix: str) -> Allocation:
        return suggest_allocation(trial, self.strategies, self.temperature, self.max_tokens,
                                  prefix, self.thinking)

    def with_task(self, task: Task) -> "SearchSpace":
        """Fill in difficulty bins from the task's labels when the space does not list them."""
        spec = self.difficulty
        if spec.source != "label" or self.oracle is not None:
            return self
        labels = sorted({e.difficulty for e in task.examples if e.difficulty is not None})
        bins = spec.bins or tuple(labels)
        if not bins:
            raise ConfigError(
                "difficulty source 'label' but the task's examples carry no difficulty labels",
                where=f"{self.source}: difficulty.source", value="label",
                fix="add a difficulty column to the data, or use source: none",
            )
        unknown = sorted(set(labels) - set(bins))
        if unknown:
            raise ConfigError(
                "the data has difficulty labels that are not bins of the space",
                where=f"{self.source}: difficulty.bins", value=unknown,
                fix=f"list every label in difficulty.bins (found: {', '.join(labels)})",
            )
        default = spec.default_bin if spec.default_bin in bins else bins[-1]
        return dataclasses.replace(self, difficulty=DifficultySpec(
            source="label", bins=tuple(bins), default_bin=default))

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


def _settings_contexts(template: PromptTemplate, task: Task, settings: Mapping[str, Any],
                       seed: int) -> list[Any]:
    """Contexts of every example at the probe/oracle sampling settings."""
    from jointopt.evaluation.evaluate import example_context

    return [example_context(template, task, e, temperature=float(settings["probe_temperature"]),
                            max_tokens=int(settings["probe_max_tokens"]), seed=seed)
            for e in task.examples]
