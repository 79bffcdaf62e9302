"""Proposal requests in a search space (``{propose: {k, n_examples, seed, ...}}``) and
the proposals an LM made: templates, cost and cache key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jointopt.safety.validation import problems
from jointopt.errors import ConfigError
from jointopt.core.prompts import PromptTemplate
from jointopt.integrations.token_meter import TokenCounts

__all__ = ["ProposeSpec", "ProposalSource", "Proposals"]


class ProposeSpec(BaseModel):
    """What to propose: ``{propose: {k, n_examples, seed, model, ...}}`` in ``prompts:``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    k: int = Field(ge=1, le=64)
    """Number of instructions to propose; each becomes one candidate template."""
    n_examples: int = Field(3, ge=0)
    """Solved examples from the task's demo pool shown to the proposer (0: description only)."""
    seed: int = 0
    """Seed of the example choice and of the proposal samples (part of the cache key)."""
    model: str | None = None
    """Model that proposes (an alias, folder or hub id); default: the study's model."""
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    """Sampling temperature of the proposer (diverse proposals need > 0)."""
    max_tokens: int = Field(160, ge=8)
    """Completion-token cap of one proposal."""
    id_prefix: str = Field("proposed", pattern=r"^[A-Za-z0-9_-]+$")
    """Template ids are ``<id_prefix>_0 .. <id_prefix>_<k-1>``; change it when a space has
    two proposal entries."""


class ProposalSource(BaseModel):
    """An entry of a search space's ``prompts:`` list that asks for proposed templates."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    propose: ProposeSpec
    """The proposal request: ``{k: int >= 1, n_examples: int >= 0, seed: int, model: alias?}``."""


def _config_error(exc: ValidationError, where: str) -> ConfigError:
    lines = []
    for p in problems(exc, ProposalSource):
        if p.kind == "unknown":
            lines.append(f"{p.field}: unknown key {p.key!r} ({p.hint}known keys: "
                         f"{', '.join(p.known)})")
        elif p.kind == "missing":
            lines.append(f"{p.field}: required key is missing")
        else:
            lines.append(f"{p.field}: {p.message} (got {p.value!r})")
    return ConfigError("invalid proposal source: " + "; ".join(lines), where=where,
                       fix="write e.g. {propose: {k: 4, n_examples: 3, seed: 0}}")


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Proposals:
    """Proposed prompt candidates and what proposing them cost.

    Attributes:
        templates: one template per accepted instruction, ids ``<prefix>_0..``.
        proposer_tokens: total tokens (prompt + completion) the proposer spent producing
            these proposals; on a cache hit, what the original proposal run spent.
        cache_hit: True when the proposals came from the cache (no proposal calls now).
        instructions: the raw instruction texts, in template order.
        usage: calls / prompt / completion tokens of the proposal run.
        model: model id of the proposer.
        key: the cache key (content hash of the proposal inputs).
        requested: ``k``; fewer templates than this means draws were rejected.
        rejected: draws rejected (empty, duplicate, too long, unparsable ...).
        example_ids: ids of the demos shown to the proposer.
    """

    templates: tuple[PromptTemplate, ...]
    proposer_tokens: int
    cache_hit: bool
    instructions: tuple[str, ...] = ()
    usage: TokenCounts = TokenCounts()
    model: str = ""
    key: str = ""
    requested: int = 0
    rejected: int = 0
    example_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "model": self.model,
            "cache_hit": self.cache_hit,
            "requested": self.requested,
            "rejected": self.rejected,
            "example_ids": list(self.example_ids),
            "usage": self.usage.to_dict(),
            "proposer_tokens": self.proposer_tokens,
            "templates": [t.to_dict() for t in self.templates],
        }
