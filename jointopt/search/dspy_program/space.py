"""The search space of :func:`~jointopt.search.dspy_program.optimize_program`: its mapping
(YAML) form, and its normalization and checks before any generation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jointopt.safety.validation import problems
from jointopt.errors import ConfigError, StrategyError
from jointopt.integrations.proposal_spec import ProposalSource, ProposeSpec
from jointopt.search.space import Fixed, Param, SearchSpace
from jointopt.strategies import get_strategy_class

#: Strategies a DSPy program can be run with (rollouts of the whole program).
PROGRAM_STRATEGIES = ("single", "majority", "best_of_n")

# --------------------------------------------------------------------------- search space

ParamValue = Union[str, int, float, bool, None, dict[str, Any]]


class ProgramSpaceConfig(BaseModel):
    """The search space of :func:`optimize_program` in mapping (YAML) form."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    strategies: dict[str, dict[str, ParamValue] | None] = Field(min_length=1)
    """Strategy name (``single``, ``majority``, ``best_of_n``) -> its parameters
    (constants, ``{choices: [...]}`` or ``{low, high, step?, log?}``)."""
    temperature: ParamValue = 0.7
    """Sampling temperature of every LM call."""
    max_tokens: ParamValue = 256
    """Completion-token cap of every LM call (DSPy's field markers cost tokens too)."""
    instructions: list[Union[str, ProposalSource]] = Field(default_factory=list)
    """Extra instruction candidates for every predictor: literal texts, or
    ``{propose: {k, n_examples, seed, ...}}`` entries (proposed per predictor)."""


@dataclass(frozen=True)
class _Space:
    strategies: Mapping[str, Mapping[str, Param]]
    temperature: Param
    max_tokens: Param
    literal: tuple[tuple[str, str], ...]  # (id, text)
    proposals: tuple[ProposeSpec, ...]
    split_by_difficulty: bool = False  # a SearchSpace whose difficulty source splits


def _pydantic_error(exc: ValidationError) -> ConfigError:
    parts = []
    for p in problems(exc, ProgramSpaceConfig):
        if p.kind == "unknown":
            parts.append(f"{p.field}: unknown key ({p.hint}known: {', '.join(p.known)})")
        else:
            parts.append(f"{p.field}: {p.message} (got {p.value!r})")
    return ConfigError("invalid program search space: " + "; ".join(parts), where="search_space",
                       fix="see the mapping form in jointopt.search.dspy_program's docstring")


def _from_search_space(search_space: SearchSpace) -> tuple[Any, Param, Param, list[tuple[str, str]], bool]:
    """Strategies, sampling params, literal instructions and difficulty split of a SearchSpace."""
    literal: list[tuple[str, str]] = []
    split = search_space.bin_source().splits
    strategies = {k: dict(v) for k, v in search_space.strategies.items()}
    temperature, max_tokens = search_space.temperature, search_space.max_tokens
    for template in search_space.prompts:
        if template.system is None or any(template.variables().get("system", ())) \
                or template.shots:
            raise ConfigError(
                "a DSPy program's prompt is its predictors' instructions: a search-space "
                "template must have a `system` text without variables and no shots",
                where=f"{search_space.source}: prompts {template.id!r}",
                value=template.to_dict(),
                fix="give the template a plain `system` instruction, or use the mapping "
                    "form with `instructions:`",
            )
        literal.append((template.id, template._render("system", {})))
    return strategies, temperature, max_tokens, literal, split


def _from_mapping(search_space: Mapping[str, Any]
                  ) -> tuple[Any, Param, Param, list[tuple[str, str]], list[ProposeSpec]]:
    """Strategies, sampling params, literal instructions and proposals of the mapping form."""
    literal: list[tuple[str, str]] = []
    proposals: list[ProposeSpec] = []
    try:
        cfg = ProgramSpaceConfig.model_validate(dict(search_space))
    except ValidationError as exc:
        raise _pydantic_error(exc) from None
    strategies = {
        name: {p: SearchSpace.param_from_spec(spec, f"search_space.strategies.{name}.{p}")
               for p, spec in (params or {}).items()}
        for name, params in cfg.strategies.items()
    }
    temperature = SearchSpace.param_from_spec(cfg.temperature, "search_space.temperature")
    max_tokens = SearchSpace.param_from_spec(cfg.max_tokens, "search_space.max_tokens")
    given = 0
    for entry in cfg.instructions:
        if isinstance(entry, ProposalSource):
            proposals.append(entry.propose)
        else:
            literal.append((f"given_{given}", entry))
            given += 1
    return strategies, temperature, max_tokens, literal, proposals


def _propose_spec(propose: ProposeSpec | Mapping[str, Any]) -> ProposeSpec:
    try:
        return propose if isinstance(propose, ProposeSpec) else ProposeSpec.model_validate(
            dict(propose))
    except ValidationError as exc:
        raise ConfigError(f"invalid `propose`: {exc.errors()[0]['msg']}", where="propose",
                          value=propose, fix="e.g. propose={'k': 3}") from None


def _check_strategies(strategies: Mapping[str, Mapping[str, Param]]) -> None:
    for name, params in strategies.items():
        if name not in PROGRAM_STRATEGIES:
            raise ConfigError(
                "a DSPy program can run only parallel strategies over its rollouts",
                where=f"search_space.strategies.{name}", value=name,
                fix=f"use some of {list(PROGRAM_STRATEGIES)}",
            )
        cls = get_strategy_class(name, where=f"search_space.strategies.{name}")
        for pname, spec in params.items():
            if pname == "scorer":
                bad = [v for v in spec.extremes() if v not in ("logprob", "auto")]
                if bad:
                    raise ConfigError(
                        f"a DSPy program's {name} ranks rollouts by mean token logprob",
                        where=f"search_space.strategies.{name}.scorer", value=bad[0],
                        fix="use scorer: logprob (or leave it out)")
                continue
            for value in spec.extremes():
                try:
                    cls(**{pname: value})
                except StrategyError as exc:
                    raise ConfigError(exc.message, where=f"search_space.strategies.{name}.{pname}",
                                      value=value, fix=exc.fix) from None


def _check_sampling(temperature: Param, max_tokens: Param) -> None:
    for label, spec, low in (("temperature", temperature, 0.0), ("max_tokens", max_tokens, 1)):
        for value in spec.extremes():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise ConfigError(f"`{label}` must be a number >= {low}",
                                  where=f"search_space.{label}", value=value,
                                  fix=f"use values >= {low}")
            if label == "max_tokens" and not isinstance(value, int):
                raise ConfigError("`max_tokens` must be an integer", where="search_space.max_tokens",
                                  value=value, fix="use whole numbers of tokens")
            if label == "temperature" and value > 2:
                raise ConfigError("`temperature` must be <= 2", where="search_space.temperature",
                                  value=value, fix="use values in [0, 2]")


def _normalize_space(search_space: SearchSpace | Mapping[str, Any],
                     propose: ProposeSpec | Mapping[str, Any] | None) -> _Space:
    proposals: list[ProposeSpec] = []
    split = False
    if isinstance(search_space, SearchSpace):
        strategies, temperature, max_tokens, literal, split = _from_search_space(search_space)
    elif isinstance(search_space, Mapping):
        strategies, temperature, max_tokens, literal, proposals = _from_mapping(search_space)
    else:
        raise ConfigError("search_space must be a SearchSpace or a mapping",
                          where="search_space", value=type(search_space).__name__,
                          fix="pass e.g. {'strategies': {'single': {}, 'majority': {'n': 3}}}")
    if propose is not None:
        proposals.append(_propose_spec(propose))
    _check_strategies(strategies)
    _check_sampling(temperature, max_tokens)
    strategies = _rank_by_logprob(strategies)
    return _Space(strategies, temperature, max_tokens, tuple(literal), tuple(proposals), split)




def _rank_by_logprob(strategies: Mapping[str, Mapping[str, Param]]
                     ) -> dict[str, dict[str, Param]]:
    """Rollouts are ranked by their mean token logprob: every strategy that takes a scorer
    gets ``scorer: logprob``."""
    out = {}
    for name, params in strategies.items():
        takes_scorer = "scorer" in get_strategy_class(name).param_names()
        out[name] = {**params, "scorer": Fixed("logprob")} if takes_scorer else dict(params)
    return out
