"""The Optuna sampler of every study jointopt runs (the study runner and DSPy programs)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from jointopt.search.config import OptimizerConfig

if TYPE_CHECKING:
    import optuna

__all__ = ["make_sampler", "constraint_values"]


def constraint_values(trial: "optuna.trial.FrozenTrial") -> list[float]:
    """Optuna constraint: <= 0 is feasible (set per trial from ``max_mean_tokens``)."""
    return list(trial.user_attrs.get("constraint", [0.0]))


def make_sampler(opt: OptimizerConfig, seed: int | None = None, *,
                 n_startup_trials: int = 8) -> "optuna.samplers.BaseSampler":
    """The sampler ``opt`` names, seeded with ``seed`` (default ``opt.seed``), with the
    ``max_mean_tokens`` constraint when the optimizer sets one.

    TPE is multivariate with grouped, conditional parameters and a constant liar for
    parallel workers; ``n_startup_trials`` random trials come first.
    """
    import optuna

    seed = opt.seed if seed is None else seed
    constraints = constraint_values if opt.max_mean_tokens is not None else None
    if opt.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)
    if opt.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        # multivariate/group/constant_liar are marked experimental but are what makes
        # TPE handle conditional (strategy-specific) parameters well.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          n_startup_trials=n_startup_trials,
                                          constant_liar=True, constraints_func=constraints)
