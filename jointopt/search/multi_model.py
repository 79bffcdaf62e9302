"""Several models in one study: their names, costs, engines and checks.

A study config's ``models:`` lists model entries (each a ``model:`` section with an
optional ``name``, ``params`` and ``prices``). The first is every policy's own model; the
search picks a model per difficulty bin (``<bin>.model``) and a cascade escalates to the
model its ``escalate_to`` names. The engines sit behind a
:class:`~jointopt.backends.router.ModelRouter`, built lazily, one per model, each with the
study's sample store in front (keyed by the engine's model id, as in a one-model study).

The study's cost objective (``optimizer.cost``) prices each token at the rate of the
model that ran it (:mod:`jointopt.core.cost`): ``flops`` (2 x params per token) or
``price`` (the entry's dollars per million tokens); ``tokens`` keeps mean tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from jointopt.backends.models import model_params
from jointopt.core.cost import TokenCost, common_unit, token_cost
from jointopt.errors import ConfigError, JointoptError
from jointopt.search.config import ModelEntry, StudyConfig

if TYPE_CHECKING:
    from jointopt.backends import Backend, SampleStore
    from jointopt.search.space import SearchSpace

__all__ = ["model_labels", "study_costs", "entry_config", "for_each_model",
           "engine_factories", "check_cascades"]


def model_labels(config: StudyConfig) -> tuple[str, ...]:
    """The names policies use for the study's models, the policies' own model first."""
    return tuple(entry.label for entry in config.model_entries())


def entry_config(config: StudyConfig, entry: ModelEntry) -> StudyConfig:
    """``config`` with ``model:`` set to ``entry`` (to check or build that engine)."""
    return config.model_copy(update={"model": entry.engine_config(), "models": []})


def _entry_cost(config: StudyConfig, entry: ModelEntry, where: str) -> TokenCost:
    if config.optimizer.cost == "price":
        if entry.prices is None:
            raise ConfigError("optimizer.cost: price needs every model's prices",
                              where=f"{where}.prices", value=entry.label,
                              fix="give prices: {prompt: <$ per 1M>, completion: <$ per 1M>}, "
                                  "or use optimizer.cost: flops")
        return token_cost(prices=(entry.prices.prompt, entry.prices.completion), where=where)
    params = entry.params or model_params(entry.model)
    if params is None:
        raise ConfigError("optimizer.cost: flops needs the model's parameter count",
                          where=f"{where}.params", value=entry.model,
                          fix="give params: <count> (it is known for embedded models and "
                              "local folders), or use optimizer.cost: tokens")
    return token_cost(params=params, where=where)


def study_costs(config: StudyConfig) -> dict[str, TokenCost] | None:
    """Model name -> :class:`~jointopt.core.cost.TokenCost` under ``optimizer.cost``;
    None for ``tokens`` (the objective is mean tokens, as with no cost model).

    Raises:
        ConfigError: a model without the parameter count or prices the cost needs.
    """
    if config.optimizer.cost == "tokens":
        return None
    where = "models[{}]" if config.models else "model"
    costs = {entry.label: _entry_cost(config, entry, where.format(i))
             for i, entry in enumerate(config.model_entries())}
    common_unit(costs)
    return costs


def for_each_model(config: StudyConfig, check: Callable[[StudyConfig], object]) -> None:
    """Run a one-model ``check`` on every entry of ``models:``; its errors name the entry
    (``models[1].backend``)."""
    for i, entry in enumerate(config.models):
        try:
            check(entry_config(config, entry))
        except JointoptError as exc:
            where = exc.where or "model"
            if where.startswith("model"):
                where = f"models[{i}]" + where[len("model"):]
            kwargs = {"where": where, "fix": exc.fix}
            if exc.has_value:
                kwargs["value"] = exc.value
            raise type(exc)(exc.message, **kwargs) from None


def engine_factories(config: StudyConfig, build: Callable[[StudyConfig], "Backend"],
                     store: "SampleStore | None", *, draw_max_tokens: int | None = None
                     ) -> dict[str, Callable[[], "Backend"]]:
    """Model name -> a function building its engine with ``build`` (a one-model config),
    with ``store`` in front when given (pools drawn at ``draw_max_tokens`` and cut, see
    :class:`~jointopt.backends.CachedBackend`)."""
    from jointopt.backends import CachedBackend

    def factory(entry: ModelEntry) -> Callable[[], "Backend"]:
        def make() -> "Backend":
            engine = build(entry_config(config, entry))
            return (CachedBackend(engine, store, draw_max_tokens=draw_max_tokens)
                    if store is not None else engine)
        return make

    return {entry.label: factory(entry) for entry in config.model_entries()}


def check_cascades(space: "SearchSpace", labels: tuple[str, ...]) -> None:
    """Every model a cascade of the space escalates to is one of the study's models."""
    for name, params in space.strategies.items():
        spec = params.get("escalate_to")
        if spec is None:
            continue
        for value in spec.extremes() if not hasattr(spec, "choices") else spec.choices:
            if value not in labels:
                raise ConfigError("a cascade escalates to a model the study does not have",
                                  where=f"{space.source}: strategies.{name}.escalate_to",
                                  value=value, fix=f"use one of {list(labels)} (the names "
                                                   "of models: in the study config)")


def with_models(space: "SearchSpace", config: StudyConfig) -> "SearchSpace":
    """The space searching a model per bin when the study has several."""
    labels = model_labels(config)
    check_cascades(space, labels)
    return dataclasses.replace(space, models=labels) if len(labels) > 1 else space
