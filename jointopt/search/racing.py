"""Racing over examples (successive halving of settings).

A new setting is scored on a growing prefix of the dev examples, shuffled and stratified
by difficulty (every prefix holds the bins in their proportions). After each rung, every
free variant of the setting is compared with every trial of the current Pareto front on
the *same* examples: a variant is dominated with confidence when, for some front trial,
the lower bounds of the paired differences (front minus variant in accuracy, variant
minus front in tokens) are both >= 0 at the configured confidence (normal interval of the
mean of per-example differences) and one of the means is > 0. A setting whose every
variant is dominated stops drawing samples; the others go on to the next rung and, past
the last one, to the full dev set.

Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = ["race_order", "rung_sizes", "dominated", "all_dominated", "RaceResult",
           "race_setting"]

#: Per variant: per-example (correct, tokens) arrays on the examples it was scored on.
Rows = Sequence[tuple[np.ndarray, np.ndarray]]


def race_order(strata: Sequence[str], seed: int | str = 0) -> list[int]:
    """Indices of the examples in racing order: shuffled within each stratum (difficulty
    label), and the strata interleaved so that every prefix keeps their proportions."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(strata):
        groups[str(label)].append(i)
    rng = random.Random(f"race-{seed}")
    keyed = []
    for label in sorted(groups):
        members = groups[label]
        rng.shuffle(members)
        size = len(members)
        keyed.extend(((pos + 0.5) / size, label, i) for pos, i in enumerate(members))
    return [i for _, _, i in sorted(keyed)]


def rung_sizes(n: int, fractions: Sequence[float], min_examples: int) -> list[int]:
    """Prefix sizes checked before the full set: ``ceil(f * n)`` raised to
    ``min_examples``, increasing, each below ``n``."""
    sizes = sorted({max(min_examples, math.ceil(f * n)) for f in fractions if 0 < f < 1})
    return [s for s in sizes if s < n]


def _lower(diff: np.ndarray, z: float) -> float:
    m = len(diff)
    if m < 2:
        return -math.inf
    return float(diff.mean() - z * diff.std(ddof=1) / math.sqrt(m))


def dominated(variant: tuple[np.ndarray, np.ndarray], front: Rows, z: float) -> bool:
    """Some front row dominates ``variant`` with confidence (paired, same examples)."""
    correct, tokens = variant
    for f_correct, f_tokens in front:
        d_acc, d_tok = f_correct - correct, tokens - f_tokens
        if (_lower(d_acc, z) >= 0 and _lower(d_tok, z) >= 0
                and (d_acc.mean() > 1e-12 or d_tok.mean() > 1e-9)):
            return True
    return False


def all_dominated(variants: Rows, front: Rows, level: float) -> bool:
    """Every variant is dominated with confidence ``level`` by some front row."""
    if not front or not variants:
        return False
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    return all(dominated(v, front, z) for v in variants)


@dataclass(frozen=True)
class RaceResult:
    """How far a setting went: ``stopped_at`` examples (None: it survived every rung)."""

    stopped_at: int | None
    rungs: tuple[int, ...]


def race_setting(score_prefix: Callable[[Sequence[int]], Rows],
                 front: Callable[[Sequence[int]], Rows], order: Sequence[int],
                 sizes: Sequence[int], level: float) -> RaceResult:
    """Race one setting over the rungs ``sizes`` of ``order``.

    Args:
        score_prefix: scores every variant on the given example indices (drawing their
            pools), returning per-variant rows in that order.
        front: the current front's rows on the given example indices.
    """
    done = []
    for size in sizes:
        prefix = list(order[:size])
        done.append(size)
        if all_dominated(score_prefix(prefix), front(prefix), level):
            return RaceResult(size, tuple(done))
    return RaceResult(None, tuple(done))
