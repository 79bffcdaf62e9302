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
from jointopt.search.study import StudyResult, plan_study, run_study

from jointopt._version import __version__

__all__ = [
    "Allocation",
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
    "evaluate",
    "load_config",
    "plan_study",
    "run_study",
]
