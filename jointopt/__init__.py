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

from .config import StudyConfig, load_config
from .errors import (
    BackendError,
    ConfigError,
    DataError,
    JointoptError,
    ModelError,
    StrategyError,
    TemplateError,
)
from .evaluation import EvaluationResult, evaluate
from .policy import Allocation, DifficultySpec, Policy
from .prompts import PromptTemplate
from .scorers import Scorer
from .strategies import Strategy
from .study import StudyResult, plan_study, run_study

__version__ = "0.1.0"

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
