"""What a token costs: the cost model that lets a study compare models of different size.

A token of a 135M-parameter model and a token of a 70B one are not the same expense. Each
model gets a :class:`TokenCost`: a cost per prompt token and per completion token, in one
unit for the whole study. By default it is compute: a forward pass costs about
``2 x parameters`` floating-point operations per token, prompt or completion alike
(attention over the context is ignored, a small term for short contexts). A user who pays
per token (a remote endpoint) gives prices instead, in dollars per million tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from jointopt.errors import ConfigError

__all__ = ["FLOPS", "USD", "UNITS", "FLOPS_PER_PARAM", "TokenCost", "flops_cost",
           "price_cost", "token_cost", "common_unit"]

#: Unit of the default cost model: floating-point operations.
FLOPS = "FLOPs"
#: Unit of user prices: US dollars.
USD = "USD"
#: The units a :class:`TokenCost` may carry.
UNITS = (FLOPS, USD)
#: Floating-point operations per parameter per token of a forward pass (multiply + add).
FLOPS_PER_PARAM = 2.0


def _non_negative(value: object) -> bool:
    """Whether ``value`` is a finite real number >= 0 (booleans are not numbers here)."""
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and value >= 0)


@dataclass(frozen=True)
class TokenCost:
    """The cost of one prompt token and one completion token of a model.

    Attributes:
        prompt: cost of one prompt (input) token, >= 0.
        completion: cost of one completion (generated) token, >= 0.
        unit: :data:`FLOPS` or :data:`USD`; costs of different units never add up.
        where: the config field the cost came from, named in errors.
    """

    prompt: float
    completion: float
    unit: str = FLOPS
    where: str = "model"

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ConfigError("unknown cost unit", where=f"{self.where}.unit", value=self.unit,
                              fix=f"use one of {', '.join(UNITS)}")
        for name in ("prompt", "completion"):
            value = getattr(self, name)
            if not _non_negative(value):
                raise ConfigError(f"the cost of a {name} token must be a finite number >= 0",
                                  where=f"{self.where}.{name}", value=value,
                                  fix="give a non-negative number")

    def of(self, prompt_tokens: float, completion_tokens: float) -> float:
        """The cost of ``prompt_tokens`` prompt and ``completion_tokens`` completion tokens."""
        return self.prompt * prompt_tokens + self.completion * completion_tokens


def flops_cost(params: int, *, flops_per_param: float = FLOPS_PER_PARAM,
               where: str = "model") -> TokenCost:
    """The default cost: ``flops_per_param x params`` FLOPs for every token.

    Raises:
        ConfigError: ``params`` is not a positive integer.
    """
    if isinstance(params, bool) or not isinstance(params, int) or params <= 0:
        raise ConfigError("a model's parameter count must be a positive integer",
                          where=f"{where}.params", value=params,
                          fix="give the parameter count (e.g. 494032768), or prices per "
                              "million tokens")
    per_token = flops_per_param * params
    return TokenCost(per_token, per_token, FLOPS, where)


def price_cost(prompt_per_million: float, completion_per_million: float,
               *, where: str = "model.prices") -> TokenCost:
    """A cost from prices in US dollars per million prompt and completion tokens."""
    for name, value in (("prompt", prompt_per_million), ("completion", completion_per_million)):
        if not _non_negative(value):
            raise ConfigError(f"the price per million {name} tokens must be a finite "
                              "number >= 0", where=f"{where}.{name}", value=value,
                              fix="give dollars per million tokens, e.g. 0.15")
    return TokenCost(prompt_per_million / 1e6, completion_per_million / 1e6, USD, where)


def token_cost(*, params: int | None = None,
               prices: tuple[float, float] | None = None,
               where: str = "model") -> TokenCost:
    """A model's cost: the user's prices when given, else ~2 x params FLOPs a token.

    Args:
        params: the model's parameter count (embedded models carry it in their registry
            entry).
        prices: (dollars per million prompt tokens, dollars per million completion tokens).
        where: the config field named in errors.

    Raises:
        ConfigError: neither is given, or a value is out of range.
    """
    if prices is not None:
        if len(prices) != 2:
            raise ConfigError("prices are (prompt, completion) dollars per million tokens",
                              where=f"{where}.prices", value=prices,
                              fix="give two numbers, e.g. {prompt: 0.15, completion: 0.6}")
        return price_cost(prices[0], prices[1], where=f"{where}.prices")
    if params is None:
        raise ConfigError("the model's cost is unknown: no parameter count and no prices",
                          where=where, fix="give the model's parameter count (params) or "
                                           "its prices per million tokens (prices)")
    return flops_cost(params, where=where)


def common_unit(costs: Mapping[str, TokenCost]) -> str:
    """The one unit of several models' costs.

    Raises:
        ConfigError: no costs, or costs in different units (FLOPs and dollars do not add).
    """
    units = {cost.unit for cost in costs.values()}
    if len(units) == 1:
        return units.pop()
    if not units:
        raise ConfigError("no model costs given", where="models",
                          fix="give at least one model")
    by_unit = ", ".join(f"{name}: {cost.unit}" for name, cost in sorted(costs.items()))
    raise ConfigError("the models' costs are in different units", where="models",
                      value=by_unit, fix="give every model prices, or none of them "
                                         "(FLOPs from parameter counts)")
