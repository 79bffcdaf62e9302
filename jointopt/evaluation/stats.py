"""Held-out validation: dev/test splits and bootstrap confidence intervals.

The study searches on the dev split only; the policies of its Pareto front are then
re-scored on the test split, so the reported accuracy is not inflated by the search.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jointopt.errors import ConfigError, DataError
from jointopt.tasks import Task

__all__ = ["Interval", "Split", "split_task", "bootstrap", "objective_intervals"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile-bootstrap confidence interval."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def to_dict(self) -> dict[str, float]:
        """The form stored in a study's trial attributes (``Interval(**d)`` reads it back)."""
        return {"value": self.value, "low": self.low, "high": self.high, "level": self.level}

    def to_metric(self, digits: int = 6) -> dict[str, float]:
        """The form of a policy file's ``metadata.metrics`` (``estimate``, ``low``, ``high``,
        rounded to ``digits``)."""
        return {"estimate": round(self.value, digits), "low": round(self.low, digits),
                "high": round(self.high, digits)}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class Split:
    """The examples the study searches on (dev) and those it reports on (test)."""

    dev: Task
    test: Task | None


def split_task(task: Task, test_fraction: float, seed: int | str = 0, *,
               where: str = "validation.test_fraction") -> Split:
    """Split examples into dev and test, stratified by difficulty label.

    Every label keeps at least one dev example; ``test_fraction=0`` means no test split.
    ``where`` names the config field of the fraction in errors.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"`{where.rpartition('.')[2]}` must be in [0, 1)", where=where,
                          value=test_fraction, fix="use e.g. 0.3, or 0 for none")
    if test_fraction == 0.0:
        return Split(task, None)
    rng = random.Random(f"jointopt-split-{seed}")
    dev_ids: set[str] = set()
    test_ids: set[str] = set()
    for _, group in sorted(task.by_difficulty().items(), key=lambda kv: str(kv[0])):
        ids = [e.id for e in group]
        rng.shuffle(ids)
        n_test = min(int(round(len(ids) * test_fraction)), len(ids) - 1)
        test_ids.update(ids[:n_test])
        dev_ids.update(ids[n_test:])
    if not test_ids:
        raise ConfigError("the held-out split is empty", where=where, value=test_fraction,
                          fix=f"raise {where.rpartition('.')[2]} or add examples")
    return Split(
        dev=task.subset(e for e in task.examples if e.id in dev_ids),
        test=task.subset(e for e in task.examples if e.id in test_ids),
    )


def bootstrap(values: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
              seed: int = 0) -> Interval:
    """Mean of ``values`` with a percentile bootstrap interval over examples.

    Resamples with ``numpy.random.default_rng(seed)`` in chunks, so large inputs need
    little memory and the interval is reproducible.

    Raises:
        DataError: no values, or ``level`` not in (0, 1).
    """
    data = np.asarray(list(values), dtype=float)
    if data.size == 0:
        raise DataError("cannot compute an interval from no values", where="bootstrap",
                        fix="evaluate on at least one example")
    if not 0 < level < 1:
        raise DataError("the confidence level must be in (0, 1)", where="level", value=level,
                        fix="e.g. 0.95")
    rng = np.random.default_rng(seed)
    n = data.size
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        means[start:stop] = data[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(float(data.mean()), float(low), float(high), level)


def objective_intervals(records: Sequence, settings: object) -> dict[str, Interval]:
    """Bootstrap intervals of both objectives (accuracy, mean tokens) over per-example
    records (``.correct``, ``.tokens``), with a :class:`~jointopt.search.config.ValidationConfig`'s
    ``resamples``, ``level`` and ``seed``."""
    options = dict(resamples=settings.resamples, level=settings.level, seed=settings.seed)
    out = {"accuracy": bootstrap([r.correct for r in records], **options),
           "mean_tokens": bootstrap([r.tokens for r in records], **options)}
    costs = [getattr(r, "cost", None) for r in records]
    if records and None not in costs:  # a cost model priced every example: its mean too
        out["mean_cost"] = bootstrap(costs, **options)
    return out
