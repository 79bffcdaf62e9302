"""One lazy registry for every extension point.

An implementation is named by a short key (``"majority"``) or by its
``"package.module:Class"`` path, imported on first use, and checked against the
extension point's base class. Because entries are strings, any stage can name an
implementation that lives in a later stage (a policy file names its strategies, a
study config its backend) without importing it, so imports keep flowing one way.

The tables below are the built-in entries; :meth:`Registry.names` lists them for docs
and "did you mean" hints.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jointopt.errors import BackendError, ConfigError, JointoptError, StrategyError

__all__ = ["BACKENDS", "DIFFICULTY_SOURCES", "EXPORTERS", "OBSERVERS", "Registry", "SCORERS",
           "STRATEGIES", "did_you_mean", "import_path"]


def did_you_mean(value: object, choices: list[str] | tuple[str, ...]) -> str:
    """``"did you mean 'x'? "`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def import_path(path: str) -> Any:
    """The object a ``"package.module:attribute"`` path names (``ImportError`` /
    ``AttributeError`` when it does not exist)."""
    module_name, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Registry:
    """Named implementations of one extension point, imported on first use.

    Args:
        kind: what is registered, for messages (``"strategy"``).
        base: ``"module:Class"`` of the base class every entry must subclass.
        entries: built-in names -> ``"module:Class"`` paths.
        error: the error type raised for a bad name.
        factories: whether an entry may also be a function returning an instance
            (backends: ``"package.module:factory"``).
    """

    kind: str
    base: str
    entries: Mapping[str, str]
    error: type[JointoptError] = ConfigError
    factories: bool = False

    def names(self) -> list[str]:
        """The built-in names, in registration order."""
        return list(self.entries)

    def path(self, name: str, where: str) -> str:
        """The ``"module:Class"`` path for ``name`` (a built-in name or a path itself)."""
        target = self.entries.get(name, name if isinstance(name, str) and ":" in name else None)
        if target is None:
            raise self.error(f"unknown {self.kind}", where=where, value=name,
                             fix=f"{did_you_mean(name, self.names())}choose one of: "
                                 f"{', '.join(self.names())}, or a 'package.module:Class' path")
        return target

    def load(self, name: str, where: str | None = None) -> Any:
        """The class (or factory) registered as ``name``, checked against the base class."""
        where = where or self.kind
        target = self.path(name, where)
        try:
            obj = import_path(target)
        except (ImportError, AttributeError) as exc:
            raise self.error(f"cannot import {self.kind} {target!r}: {exc}", where=where,
                             value=name, fix="check the 'package.module:Class' path") from None
        base = import_path(self.base)
        if isinstance(obj, type) and issubclass(obj, base):
            return obj
        if self.factories and callable(obj) and not isinstance(obj, type):
            return obj
        raise self.error(f"not a {base.__name__} subclass", where=where, value=name,
                         fix=f"point at a subclass of {self.base.replace(':', '.')}")

    def create(self, name: str, *args: Any, where: str | None = None, **kwargs: Any) -> Any:
        """An instance of ``name`` built with ``args`` / ``kwargs`` (a factory's result is
        checked against the base class too)."""
        obj = self.load(name, where)(*args, **kwargs)
        base = import_path(self.base)
        if not isinstance(obj, base):
            raise self.error(f"the factory did not return a {base.__name__}",
                             where=where or self.kind, value=name,
                             fix=f"return an instance of {self.base.replace(':', '.')}")
        return obj


STRATEGIES = Registry("strategy", "jointopt.strategies.base:Strategy", {
    "single": "jointopt.strategies.parallel:SingleSample",
    "majority": "jointopt.strategies.parallel:MajorityVote",
    "best_of_n": "jointopt.strategies.parallel:BestOfN",
    "weighted_vote": "jointopt.strategies.weighted:WeightedVote",
    "adaptive_majority": "jointopt.strategies.adaptive:AdaptiveVote",
    "revision": "jointopt.strategies.sequential:RevisionChain",
    "parallel_revision": "jointopt.strategies.hybrid:ParallelRevision",
    "mcts": "jointopt.strategies.mcts:MCTS",
    "cascade": "jointopt.strategies.cascade:Cascade",
}, error=StrategyError)

SCORERS = Registry("scorer", "jointopt.strategies.scorers:Scorer", {
    "logprob": "jointopt.strategies.scorers:LogprobScorer",
    "verifier": "jointopt.strategies.scorers:VerifierScorer",
    "auto": "jointopt.strategies.scorers:AutoScorer",
}, error=StrategyError)

BACKENDS = Registry("backend", "jointopt.backends.base:Backend", {
    "vllm": "jointopt.backends.vllm:VLLMBackend",
    "openai": "jointopt.backends.openai:OpenAIBackend",
    "replay": "jointopt.backends.replay:ReplayBackend",
    "scripted": "jointopt.backends.scripted:ScriptedBackend",
}, error=BackendError, factories=True)

#: Where difficulty bins come from (a search space's and a policy's ``difficulty.source``).
DIFFICULTY_SOURCES = Registry("difficulty source", "jointopt.difficulty.base:DifficultySource", {
    "none": "jointopt.difficulty.none:NoDifficulty",
    "label": "jointopt.difficulty.label:LabelSource",
    "probe": "jointopt.difficulty.probe:ProbeSource",
    "predictor": "jointopt.difficulty.predictor:PredictorSource",
    "oracle": "jointopt.difficulty.oracle:OracleSource",
})
#: Export targets, run by ``export_policy`` in this order (EXPORT.md lists their files so).
EXPORTERS = Registry("export target", "jointopt.export.base:Exporter", {
    "policy": "jointopt.export.policy_file:PolicyFileExporter",
    "vllm": "jointopt.export.vllm:VllmExporter",
    "openai_presets": "jointopt.export.openai_presets:OpenAIPresetsExporter",
    "dspy": "jointopt.export.dspy_program:DSPyExporter",
})
#: Study observers (MLflow today): the study calls them; they never drive it.
OBSERVERS = Registry("observer", "jointopt.tracking.mlflow:StudyTracker", {
    "mlflow": "jointopt.tracking.mlflow:StudyTracker",
})
