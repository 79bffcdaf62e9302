"""Which setting to complete next: screen every setting, then complete by promise.

A study that races settings (``optimizer.racing``) over a small finite grid first
*screens* every setting: it draws the setting's pools on a short prefix of the shuffled,
stratified dev examples (``racing.screen``; a tenth, at least
``racing.screen_min_examples``) and scores its free variants there. Screening decides
nothing; it orders. Settings are then completed one at a time, always the one whose
optimistic variants would add the most hypervolume to the current front per token still
needed to complete it:

* a variant's optimistic point is (accuracy on the prefix + ``racing.optimism`` standard
  errors, mean cost on the prefix); the standard error is never taken below a quarter
  over the square root of the prefix size, so a variant right (or wrong) on every
  screened example keeps some uncertainty;
* the gain is the hypervolume the optimistic points add to the front of the trials
  completed so far (accuracy up, cost down; reference: accuracy 0 and the largest cost
  known), divided by the estimated tokens to complete the setting;
* the chosen setting is raced over the remaining rungs against the front
  (:mod:`jointopt.search.racing`) before it is completed.

When no screened setting could add anything even optimistically, the sampler proposes
as usual. Expensive settings with accurate variants are so completed early, and the
front they build lets racing stop the dominated settings after their screen.

Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Screen", "screen_size", "screen_points", "hypervolume", "next_setting"]

#: (accuracy, cost) of one policy.
Point = tuple[float, float]


def screen_size(n: int, fraction: float, min_examples: int) -> int:
    """Examples a setting is screened on: ``ceil(fraction * n)``, at least
    ``min_examples``, at most ``n``."""
    return min(n, max(min_examples, math.ceil(fraction * n)))


@dataclass(frozen=True)
class Screen:
    """A screened setting: its variants' (mean accuracy, standard error, mean cost) on the
    screened examples, and the estimated tokens (or cost) to complete it."""

    variants: tuple[tuple[float, float, float], ...]
    remaining: float

    def to_dict(self) -> dict:
        return {"variants": [list(v) for v in self.variants], "remaining": self.remaining}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Screen":
        return cls(tuple(tuple(float(x) for x in v) for v in data["variants"]),
                   float(data["remaining"]))


def screen_points(rows: Sequence[tuple[np.ndarray, np.ndarray]]
                  ) -> tuple[tuple[float, float, float], ...]:
    """Per variant, from its per-example (correct, cost) rows on the screened examples:
    (mean accuracy, standard error with the floor of the module docstring, mean cost)."""
    out = []
    for correct, cost in rows:
        m = len(correct)
        spread = float(np.std(correct, ddof=1)) if m > 1 else 0.5
        se = max(spread, 0.25) / math.sqrt(max(m, 1))
        out.append((float(np.mean(correct)), se, float(np.mean(cost))))
    return tuple(out)


def hypervolume(points: Sequence[Point], ref: float) -> float:
    """Area dominated by ``points`` (accuracy up from 0, cost down to ``ref``)."""
    area = best = 0.0
    for acc, cost in sorted(points, key=lambda p: (p[1], -p[0])):
        if acc > best and cost < ref:
            area += (acc - best) * (ref - cost)
            best = acc
    return area


def next_setting(screens: Mapping[Hashable, Screen], front: Sequence[Point],
                 optimism: float) -> Hashable | None:
    """The screened setting to complete next (see the module docstring), or None when
    none would add hypervolume even optimistically. Ties go to the first key in order."""
    known = [c for _, c in front] + [v[2] for s in screens.values() for v in s.variants]
    if not known:
        return None
    ref = max(known) * 1.05 + 1e-9
    base = hypervolume(front, ref)
    best: tuple[float, Hashable] | None = None
    for key, screen in screens.items():
        hopeful = [(min(1.0, acc + optimism * se), cost) for acc, se, cost in screen.variants]
        gain = hypervolume([*front, *hopeful], ref) - base
        if gain <= 1e-12:
            continue
        rate = gain / max(screen.remaining, 1.0)
        if best is None or rate > best[0]:
            best = (rate, key)
    return None if best is None else best[1]
