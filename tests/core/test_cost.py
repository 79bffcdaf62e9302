"""The cost model: per-token costs from parameter counts (FLOPs) or user prices (USD)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from jointopt.backends.model_registry import EMBEDDED_MODELS
from jointopt.core.cost import (
    FLOPS, USD, TokenCost, common_unit, flops_cost, price_cost, token_cost)
from jointopt.errors import ConfigError


def test_default_cost_is_two_flops_per_parameter_per_token():
    cost = flops_cost(1_000)
    assert (cost.prompt, cost.completion, cost.unit) == (2_000.0, 2_000.0, FLOPS)
    assert cost.of(prompt_tokens=10, completion_tokens=5) == 30_000.0
    assert flops_cost(1_000, flops_per_param=6.0).completion == 6_000.0


def test_prices_are_per_million_tokens():
    cost = price_cost(0.15, 0.60)
    assert cost.unit == USD
    assert math.isclose(cost.of(1_000, 500), 0.15e-3 + 0.30e-3)


def test_prices_win_over_the_parameter_count():
    assert token_cost(params=1_000, prices=(1.0, 2.0)) == price_cost(1.0, 2.0)
    assert token_cost(params=1_000) == flops_cost(1_000)


def test_the_larger_embedded_model_costs_more_per_token():
    small, large = (token_cost(params=m.params) for m in
                    (EMBEDDED_MODELS["smollm2-135m-instruct"],
                     EMBEDDED_MODELS["qwen2.5-coder-0.5b-instruct"]))
    assert 3 < large.completion / small.completion < 4
    assert small.of(100, 200) < large.of(100, 200)


def test_token_cost_is_a_frozen_value():
    cost = flops_cost(10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cost.prompt = 0.0  # type: ignore[misc]


@pytest.mark.parametrize("build,field", [
    (lambda: token_cost(), "model"),
    (lambda: flops_cost(0), "model.params"),
    (lambda: flops_cost(True), "model.params"),  # type: ignore[arg-type]
    (lambda: flops_cost(1.5), "model.params"),  # type: ignore[arg-type]
    (lambda: price_cost(-1.0, 1.0), "model.prices.prompt"),
    (lambda: price_cost(1.0, float("nan")), "model.prices.completion"),
    (lambda: token_cost(prices=(1.0,)), "model.prices"),  # type: ignore[arg-type]
    (lambda: TokenCost(1.0, 1.0, unit="EUR"), "model.unit"),
    (lambda: TokenCost(float("inf"), 1.0), "model.prompt"),
])
def test_bad_costs_name_the_field(build, field):
    with pytest.raises(ConfigError) as info:
        build()
    assert info.value.where == field and info.value.fix


def test_models_of_one_study_share_one_unit():
    flops = {"a": flops_cost(10), "b": flops_cost(20)}
    assert common_unit(flops) == FLOPS
    assert common_unit({"a": price_cost(1, 1)}) == USD
    with pytest.raises(ConfigError, match="different units") as info:
        common_unit({**flops, "c": price_cost(1, 1)})
    assert "c: USD" in str(info.value)
    with pytest.raises(ConfigError):
        common_unit({})
