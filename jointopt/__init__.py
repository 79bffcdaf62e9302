"""jointopt: tune how a language model is used.

Searches prompt templates, inference strategies and compute budgets jointly, scores
every candidate policy with real generations, and reports the Pareto front of accuracy
against tokens.

The public API::

    import jointopt
    config = jointopt.load_config("experiments/quickstart.yaml")
    result = jointopt.run_study(config)
    for point in result.pareto:
        print(point.accuracy, point.mean_tokens, point.policy.prompt.id)
"""

from __future__ import annotations

from jointopt.search.config import StudyConfig, load_config
from jointopt.errors import (
    BackendError,
    ConfigError,
    DataError,
    JointoptError,
    ModelError,
    StrategyError,
    TemplateError,
)
from jointopt.evaluation.evaluate import EvaluationResult, evaluate
from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.strategies.scorers import Scorer
from jointopt.strategies import Strategy
from jointopt.search.results import StudyResult
from jointopt.search.plan import plan_study
from jointopt.search.study import run_study
from jointopt.backends.base import Backend

from jointopt._version import __version__  # noqa: F401 - the package version

#: Verbs whose stages import more (the proxy's web stack, export targets): loaded on use.
_LAZY = {
    "join_study": "jointopt.search.study:join_study",
    "export_policy": "jointopt.export.policy:export_policy",
    "load_policy": "jointopt.serving.runtime:load_policy",
    "certify": "jointopt.tracking.certificate:certify",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from jointopt._registry import import_path

        return import_path(_LAZY[name])
    raise AttributeError(f"module 'jointopt' has no attribute {name!r}")


__all__ = [
    "Allocation",
    "Backend",
    "BackendError",
    "ConfigError",
    "DataError",
    "DifficultySpec",
    "EvaluationResult",
    "JointoptError",
    "ModelError",
    "Policy",
    "PromptTemplate",
    "Scorer",
    "Strategy",
    "StrategyError",
    "StudyConfig",
    "StudyResult",
    "TemplateError",
    "certify",
    "evaluate",
    "export_policy",
    "join_study",
    "load_config",
    "load_policy",
    "plan_study",
    "run_study",
]
