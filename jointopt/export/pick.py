"""Choosing the trial to export: pick rules on the Pareto front and bootstrap intervals.

Pick rules (among feasible complete trials; see :func:`pick_point`):

* ``knee``: the point of the Pareto front (accuracy up, mean tokens down) farthest from
  the straight line joining the front's two extremes, on the side of the ideal point
  (both axes normalised to [0, 1] over the front). With one or two points, or a front
  with no point above that line, there is no knee: the most accurate extreme is taken.
* ``max_accuracy``: the most accurate trial (fewest tokens among ties).
* ``min_tokens``: the cheapest trial (most accurate among ties).
* ``budget``: the most accurate trial whose mean tokens are <= ``budget``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from jointopt.errors import ConfigError, DataError

__all__ = ["PICKS", "Interval", "TrialPoint", "bootstrap_mean", "pareto_points", "pick_point"]

Pick = Literal["knee", "max_accuracy", "min_tokens", "budget"]
PICKS: tuple[str, ...] = ("knee", "max_accuracy", "min_tokens", "budget")

# ------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval."""

    estimate: float
    low: float
    high: float

    def to_dict(self, digits: int = 6) -> dict[str, float]:
        return {"estimate": round(self.estimate, digits), "low": round(self.low, digits),
                "high": round(self.high, digits)}

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


def bootstrap_mean(values: Sequence[float], *, n_resamples: int = 2000,
                   confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile-bootstrap confidence interval of the mean of ``values``.

    Examples are resampled with replacement ``n_resamples`` times with
    ``numpy.random.default_rng(seed)``, so the interval is reproducible.

    Raises:
        DataError: no values, or ``confidence`` not in (0, 1).
    """
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        raise DataError("cannot compute an interval from no values", where="bootstrap",
                        fix="the trial has no per-example records")
    if not 0 < confidence < 1:
        raise DataError("confidence must be in (0, 1)", where="confidence", value=confidence,
                        fix="e.g. 0.95")
    from jointopt.evaluation.stats import bootstrap

    ci = bootstrap(arr, resamples=n_resamples, level=confidence, seed=seed)
    return Interval(ci.value, ci.low, ci.high)


# ------------------------------------------------------------------------------ pick rules


@dataclass(frozen=True)
class TrialPoint:
    """One complete trial as a point of the objective plane."""

    number: int
    accuracy: float
    mean_tokens: float


def pareto_points(points: Sequence[TrialPoint]) -> list[TrialPoint]:
    """Non-dominated points (accuracy up, tokens down), one per distinct objective pair,
    by increasing tokens (lowest trial number kept among equal points)."""
    ordered = sorted(points, key=lambda p: (p.mean_tokens, -p.accuracy, p.number))
    front: list[TrialPoint] = []
    best = -math.inf
    for p in ordered:
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front


def _knee(front: list[TrialPoint]) -> TrialPoint:
    if len(front) <= 2:
        return max(front, key=lambda p: (p.accuracy, -p.mean_tokens, -p.number))
    acc = np.array([p.accuracy for p in front])
    tok = np.array([p.mean_tokens for p in front])
    acc_n = (acc - acc.min()) / (acc.max() - acc.min() or 1.0)
    tok_n = (tok - tok.min()) / (tok.max() - tok.min() or 1.0)
    # Signed distance from the line joining the cheapest point (first) and the most
    # accurate one (last), positive on the side of the ideal point (few tokens, high
    # accuracy). The extremes are at 0, so a front without a bulge gives an extreme.
    x0, y0, x1, y1 = tok_n[0], acc_n[0], tok_n[-1], acc_n[-1]
    norm = math.hypot(x1 - x0, y1 - y0) or 1.0
    dist = ((x1 - x0) * (acc_n - y0) - (y1 - y0) * (tok_n - x0)) / norm
    best = max(range(len(front)), key=lambda i: (round(float(dist[i]), 12), acc[i]))
    return front[best]


def pick_point(points: Sequence[TrialPoint], pick: str, budget: float | None = None
               ) -> TrialPoint:
    """Choose one point by a pick rule (see the module docstring).

    Raises:
        ConfigError: an unknown rule, no points, a missing budget, or no point within it.
    """
    if pick not in PICKS:
        import difflib

        close = difflib.get_close_matches(str(pick), PICKS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError("unknown pick rule", where="pick", value=pick,
                          fix=f"{hint}choose one of: {', '.join(PICKS)}")
    if not points:
        raise ConfigError("the study has no complete (feasible) trial to pick from",
                          where="pick", fix="run the study first: jointopt run CONFIG")
    if pick == "budget":
        if budget is None or isinstance(budget, bool) or not isinstance(budget, (int, float)) \
                or budget <= 0:
            raise ConfigError("pick 'budget' needs a token budget > 0", where="budget",
                              value=budget, fix="pass --budget T (mean tokens per input)")
        within = [p for p in points if p.mean_tokens <= budget]
        if not within:
            cheapest = min(points, key=lambda p: p.mean_tokens)
            raise ConfigError(
                f"no trial spends at most {budget:g} mean tokens; the cheapest (trial "
                f"{cheapest.number}) spends {cheapest.mean_tokens:.1f}",
                where="budget", value=budget,
                fix=f"raise --budget to at least {math.ceil(cheapest.mean_tokens)}, or run "
                    "more trials with cheaper strategies")
        return max(within, key=lambda p: (p.accuracy, -p.mean_tokens, -p.number))
    if pick == "max_accuracy":
        return max(points, key=lambda p: (p.accuracy, -p.mean_tokens, -p.number))
    if pick == "min_tokens":
        return min(points, key=lambda p: (p.mean_tokens, -p.accuracy, p.number))
    return _knee(pareto_points(points))
