"""Choosing the trial to export: pick rules on the Pareto front.

Pick rules (among feasible complete trials; see :func:`pick_point`):

* ``knee``: the point of the Pareto front (accuracy up, mean tokens down) farthest from
  the straight line joining the front's two extremes, on the side of the ideal point
  (both axes normalised to [0, 1] over the front). With one or two points, or a front
  with no point above that line, there is no knee: the most accurate extreme is taken.
* ``max_accuracy``: the most accurate trial (fewest tokens among ties).
* ``min_tokens``: the cheapest trial (most accurate among ties).
* ``budget``: the most accurate trial whose mean tokens are <= ``budget``.

"Tokens" is the study's second objective: mean tokens, or under ``optimizer.cost: flops |
price`` the mean cost (the caller passes it as ``second`` and names it in ``unit``).
* ``certified``: the trial ``jointopt certify`` certified (read from the study's
  certificate by :func:`jointopt.export.trials.choose_trial`, not from the points).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Literal, Protocol, TypeVar

import numpy as np

from jointopt._registry import did_you_mean
from jointopt.errors import ConfigError
from jointopt.search.results import non_dominated

__all__ = ["PICKS", "Point", "pick_point"]

Pick = Literal["knee", "max_accuracy", "min_tokens", "budget", "certified"]
PICKS: tuple[str, ...] = ("knee", "max_accuracy", "min_tokens", "budget", "certified")

class Point(Protocol):
    """What a pick rule reads of a trial (a :class:`~jointopt.search.results.TrialSummary`)."""

    number: int
    accuracy: float
    mean_tokens: float


P = TypeVar("P", bound=Point)


def _knee(front: list[P], second: Callable[[P], float]) -> P:
    if len(front) <= 2:
        return max(front, key=lambda p: (p.accuracy, -second(p), -p.number))
    acc = np.array([p.accuracy for p in front])
    tok = np.array([second(p) for p in front])
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


def pick_point(points: Sequence[P], pick: str, budget: float | None = None, *,
               second: Callable[[P], float] = attrgetter("mean_tokens"),
               unit: str = "mean tokens") -> P:
    """Choose one point by a pick rule (see the module docstring); ``second`` reads a
    point's second objective, named ``unit`` in messages.

    Raises:
        ConfigError: an unknown rule, no points, a missing budget, or no point within it.
    """
    if pick not in PICKS:
        raise ConfigError("unknown pick rule", where="pick", value=pick,
                          fix=f"{did_you_mean(pick, PICKS)}choose one of: {', '.join(PICKS)}")
    if pick == "certified":
        raise ConfigError("pick 'certified' comes from the study's certificate, not from the "
                          "points", where="pick", value=pick,
                          fix="use jointopt.export.trials.choose_trial, or export_policy")
    if not points:
        raise ConfigError("the study has no complete (feasible) trial to pick from",
                          where="pick", fix="run the study first: jointopt run CONFIG")
    best = lambda p: (p.accuracy, -second(p), -p.number)  # noqa: E731
    if pick == "budget":
        if budget is None or isinstance(budget, bool) or not isinstance(budget, (int, float)) \
                or budget <= 0:
            raise ConfigError(f"pick 'budget' needs a budget > 0 ({unit} per input)",
                              where="budget", value=budget,
                              fix=f"pass --budget B ({unit} per input)")
        within = [p for p in points if second(p) <= budget]
        if not within:
            cheapest = min(points, key=second)
            raise ConfigError(
                f"no trial spends at most {budget:g} {unit}; the cheapest (trial "
                f"{cheapest.number}) spends {second(cheapest):.4g}",
                where="budget", value=budget,
                fix=f"raise --budget to at least {second(cheapest):.4g}, or run "
                    "more trials with cheaper strategies")
        return max(within, key=best)
    if pick == "max_accuracy":
        return max(points, key=best)
    if pick == "min_tokens":
        return min(points, key=lambda p: (second(p), -p.accuracy, p.number))
    return _knee(non_dominated(points, tokens=second), second)
