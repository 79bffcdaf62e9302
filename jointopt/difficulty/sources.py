"""The functions and values of the built-in difficulty sources, in one namespace.

Each source lives in its own module (:mod:`~jointopt.difficulty.oracle`,
:mod:`~jointopt.difficulty.probe`, :mod:`~jointopt.difficulty.predictor`,
:mod:`~jointopt.difficulty.label`, :mod:`~jointopt.difficulty.none`) with the
:class:`~jointopt.difficulty.base.DifficultySource` subclass that uses them; this module
re-exports the pure functions for analysis code. Bin labels follow one convention: ``"1"``
is the *easiest* bin and ``str(n_bins)`` the *hardest*.
"""

from __future__ import annotations

from jointopt.difficulty.agreement import Agreement, agreement
from jointopt.difficulty.oracle import oracle_bins, pass_rates_from_pools
from jointopt.difficulty.predictor import FEATURES, DifficultyPredictor, text_features
from jointopt.difficulty.probe import bin_of, fit_thresholds, probe_signal

__all__ = [
    "FEATURES",
    "oracle_bins",
    "pass_rates_from_pools",
    "probe_signal",
    "fit_thresholds",
    "bin_of",
    "text_features",
    "DifficultyPredictor",
    "Agreement",
    "agreement",
]
