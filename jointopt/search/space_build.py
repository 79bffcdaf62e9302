"""Building a :class:`~jointopt.search.space.SearchSpace` from a checked search-space file
(:mod:`jointopt.search.space_config`): prompt templates, strategy parameters, difficulty."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jointopt._registry import DIFFICULTY_SOURCES
from jointopt.core.prompts import PromptTemplate
from jointopt.errors import ConfigError, JointoptError
from jointopt.search.space import SearchSpace
from jointopt.search.space_thinking import thinking_param
from jointopt.strategies import get_strategy_class

__all__ = ["space_from_dict"]


def space_from_dict(data: Mapping[str, Any], source: str) -> SearchSpace:
    """Build a :class:`SearchSpace` from an already schema-checked mapping."""
    prompts = []
    seen: set[str] = set()
    entries = []
    for i, spec in enumerate(data["prompts"]):
        spec = {k: v for k, v in spec.items() if v is not None or k == "system"}
        entries.append(spec)
        if "propose" in spec:
            from pydantic import ValidationError

            from jointopt.integrations.proposal_spec import ProposalSource, _config_error

            try:
                ProposalSource.model_validate(spec)
            except ValidationError as exc:
                raise _config_error(exc, f"{source}: prompts[{i}]") from None
            continue
        try:
            template = PromptTemplate(**spec)
        except JointoptError as exc:
            raise ConfigError(exc.message, where=f"{source}: prompts[{i}]",
                              value=exc.value if exc.has_value else spec.get("id"),
                              fix=exc.fix) from None
        if template.id in seen:
            raise ConfigError("duplicate prompt id", where=f"{source}: prompts[{i}].id",
                              value=template.id, fix="give every prompt a unique id")
        seen.add(template.id)
        prompts.append(template)
    strategies = {}
    for name, params in data["strategies"].items():
        get_strategy_class(name, where=f"{source}: strategies.{name}")
        strategies[name] = {
            pname: SearchSpace.param_from_spec(spec, f"{source}: strategies.{name}.{pname}")
            for pname, spec in (params or {}).items()
        }
    difficulty = data.get("difficulty") or {}
    key = difficulty.get("source", "none")
    bin_source = DIFFICULTY_SOURCES.load(key, where=f"{source}: difficulty.source")
    bins = tuple(str(b) for b in (difficulty.get("bins") or ()))
    default_bin = difficulty.get("default_bin")
    if default_bin is not None and bins and default_bin not in bins:
        raise ConfigError("`default_bin` must be one of the bins",
                          where=f"{source}: difficulty.default_bin", value=default_bin,
                          fix=f"choose one of: {', '.join(bins)}")
    bin_source = bin_source.from_config(difficulty, key)
    return SearchSpace(
        difficulty_source=bin_source,
        entries=tuple(entries),
        difficulty=bin_source.space_spec(where=f"{source}: difficulty"),
        prompts=tuple(prompts),
        strategies=strategies,
        temperature=SearchSpace.param_from_spec(data.get("temperature", 0.7),
                                                f"{source}: temperature"),
        max_tokens=SearchSpace.param_from_spec(data.get("max_tokens", 64),
                                               f"{source}: max_tokens"),
        source=source,
        thinking=thinking_param(data, source),
    )
