"""The Policy: the one object a trial builds, evaluation scores, export writes and the
runtime executes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from jointopt.errors import ConfigError
from jointopt.core.prompts import PromptTemplate
from jointopt.core.thinking import ThinkingSpec

if TYPE_CHECKING:
    from jointopt.difficulty.predictor import DifficultyPredictor
    from jointopt.tasks import Example

__all__ = ["SCHEMA_VERSION", "Allocation", "DifficultySpec", "Policy", "DEFAULT_BIN"]

#: Version of the serialised policy format. Loading refuses other versions.
SCHEMA_VERSION = 1
#: Bin used for every input when the policy does not split by difficulty.
DEFAULT_BIN = "all"


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(sorted((mapping or {}).items())))


@dataclass(frozen=True)
class Allocation:
    """How one difficulty bin is answered.

    Attributes:
        strategy: registered strategy name (``single``, ``majority``, ``best_of_n``, ...).
        temperature: sampling temperature of every generation the strategy makes.
        max_tokens: completion-token cap per generation.
        params: strategy parameters (``n``, ``scorer``, ...), validated by the strategy.
        thinking: the thinking phase of every request the strategy makes (a
            :class:`~jointopt.core.thinking.ThinkingSpec` or its mapping form), or None
            for none; ``budget: 0`` also answers directly.
        model: the model that answers this bin, by its name in the study's ``models:``;
            None (and absent from policy files) is the policy's own ``model``.
    """

    strategy: str
    temperature: float = 0.7
    max_tokens: int = 64
    params: Mapping[str, Any] = field(default_factory=dict)
    thinking: ThinkingSpec | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _frozen(self.params))
        if self.thinking is not None:
            object.__setattr__(self, "thinking", ThinkingSpec.coerce(self.thinking))

    @property
    def thinks(self) -> bool:
        """Whether requests get a thinking phase (a spec with a budget above 0)."""
        return self.thinking is not None and self.thinking.budget > 0

    def describe(self) -> str:
        """Short human form, e.g. ``majority(n=4) T=0.4 max_tokens=12 thinking=256``."""
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        text = f"{self.strategy}({params}) T={self.temperature:g} max_tokens={self.max_tokens}"
        text += f" thinking={self.thinking.budget}" if self.thinking is not None else ""
        return text if self.model is None else f"{text} model={self.model}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "strategy": self.strategy,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "params": dict(self.params),
        }
        if self.thinking is not None:  # absent when unset: older files stay as they were
            out["thinking"] = self.thinking.to_dict()
        if self.model is not None:
            out["model"] = self.model
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Allocation":
        return cls(**dict(data))


@dataclass(frozen=True)
class DifficultySpec:
    """How an input gets its difficulty bin at serve time.

    ``source`` names a :class:`~jointopt.difficulty.base.DifficultySource` in
    :data:`jointopt._registry.DIFFICULTY_SOURCES` (or by its ``"package.module:Class"``
    path); that class checks the fields it uses, writes them to policy files and assigns
    the bins. The fields are the union of what the built-in sources use, so policy files
    keep one schema.

    Attributes:
        source: ``none`` (one bin for everything), ``label`` (the input carries its bin),
            ``probe`` (the policy first draws ``probe_k`` samples; the share of the
            plurality answer, with a likelihood tie-breaker, picks the bin by
            ``thresholds``; the probe's samples are reused by the bin's strategy when it
            samples with the same temperature and max_tokens) or ``predictor`` (a
            :class:`~jointopt.difficulty.predictor.DifficultyPredictor` picks the bin from
            the input's text, generating nothing).
        bins: the bin labels, in order of increasing difficulty.
        default_bin: bin used when an input has no label or its label has no allocation.
        probe_k: samples of the probe (``probe`` only).
        probe_temperature: sampling temperature of the probe.
        probe_max_tokens: completion-token cap of the probe samples.
        thresholds: descending cut points of the probe signal, one fewer than ``bins``
            (fitted on the dev split); a signal >= ``thresholds[0]`` is the easiest bin.
        predictor: the fitted text predictor (``predictor`` only; a mapping from
            :meth:`~jointopt.difficulty.predictor.DifficultyPredictor.to_dict` is accepted).
    """

    source: str = "none"
    bins: tuple[str, ...] = ()
    default_bin: str = DEFAULT_BIN
    probe_k: int = 0
    probe_temperature: float = 0.7
    probe_max_tokens: int = 16
    thresholds: tuple[float, ...] = ()
    predictor: "DifficultyPredictor | None" = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bins", tuple(str(b) for b in self.bins))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        from jointopt._registry import DIFFICULTY_SOURCES

        cls = DIFFICULTY_SOURCES.load(self.source, where="difficulty.source")
        object.__setattr__(self, "_source_class", cls)  # not a field: per-input lookups
        if not cls.servable:
            raise ConfigError(
                f"difficulty source {self.source!r} cannot assign bins to new inputs",
                where="difficulty.source", value=self.source,
                fix="a policy names the source that assigns its bins at serve time "
                    "(studies with this source write policies that split by label)")
        cls.check_spec(self)

    def source_class(self) -> Any:
        """The :class:`~jointopt.difficulty.base.DifficultySource` subclass ``source``
        names (imported on first use)."""
        return self._source_class  # type: ignore[attr-defined]

    def bin_of(self, example: "Example") -> str:
        """The bin of an input known before generating (a probing source picks the real
        one while the policy runs: see ``source_class().probes``)."""
        return self.source_class().bin_of(self, example)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "bins": list(self.bins),
                               "default_bin": self.default_bin}
        out.update(self.source_class().spec_fields(self))
        return out


@dataclass(frozen=True)
class Policy:
    """A complete inference policy: prompt, difficulty spec and per-bin allocations.

    Attributes:
        model: the model the policy was tuned for (alias, folder or hub id).
        prompt: the prompt template.
        bins: allocation per difficulty bin; ``difficulty.default_bin`` must be present.
        difficulty: how inputs are assigned to bins.
        schema_version: serialised format version.
        metadata: free-form provenance (study, trial, measured objectives).
    """

    model: str
    prompt: PromptTemplate
    bins: Mapping[str, Allocation]
    difficulty: DifficultySpec = field(default_factory=DifficultySpec)
    schema_version: int = SCHEMA_VERSION
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bins", MappingProxyType(dict(self.bins)))
        object.__setattr__(self, "metadata", _frozen(self.metadata))
        if self.difficulty.default_bin not in self.bins:
            raise ConfigError(
                "policy has no allocation for its default bin",
                where="policy.bins",
                value=sorted(self.bins),
                fix=f"add an allocation for bin {self.difficulty.default_bin!r}",
            )

    @property
    def strategy_label(self) -> str:
        """The strategy name, or ``per-bin`` when bins use different strategies."""
        names = {a.strategy for a in self.bins.values()}
        return names.pop() if len(names) == 1 else "per-bin"

    def describe(self) -> str:
        """Short human form of the allocations (one per bin)."""
        if len(self.bins) == 1:
            return next(iter(self.bins.values())).describe()
        return "; ".join(f"[{name}] {a.describe()}" for name, a in self.bins.items())

    @property
    def models(self) -> tuple[str, ...]:
        """Every model the policy may call: its own first, then the bins' others."""
        names = [self.model] + [a.model for a in self.bins.values() if a.model]
        return tuple(dict.fromkeys(names))

    def model_of(self, allocation: Allocation) -> str | None:
        """The model a bin's requests name: None for the policy's own model (so
        requests, sample keys and probe reuse are those of a one-model policy)."""
        return None if allocation.model in (None, self.model) else allocation.model

    def allocation_for(self, example: "Example") -> tuple[str, Allocation]:
        """The bin of an example and the allocation that answers it."""
        name = self.difficulty.bin_of(example)
        if name not in self.bins:
            name = self.difficulty.default_bin
        return name, self.bins[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "model": self.model,
            "prompt": self.prompt.to_dict(),
            "difficulty": self.difficulty.to_dict(),
            "bins": {k: v.to_dict() for k, v in self.bins.items()},
            "metadata": json.loads(json.dumps(dict(self.metadata), default=str)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Policy":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ConfigError(
                "unsupported policy schema version",
                where="policy.schema_version",
                value=version,
                fix=f"this jointopt reads version {SCHEMA_VERSION}; re-export the policy",
            )
        return cls(
            model=data["model"],
            prompt=PromptTemplate.from_dict(data["prompt"]),
            bins={k: Allocation.from_dict(v) for k, v in data["bins"].items()},
            difficulty=DifficultySpec(**data.get("difficulty", {})),
            metadata=data.get("metadata", {}),
        )

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
