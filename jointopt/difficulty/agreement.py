"""How well one source's bins match oracle bins: exact, within one bin, Spearman rank
correlation and a confusion matrix (the ``difficulty_report.json`` of a study)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from jointopt.difficulty.base import bin_label_key
from jointopt.errors import ConfigError

__all__ = ["Agreement", "agreement"]


def _bin_number(label: Any, where: str) -> int:
    if isinstance(label, str) and label.isascii() and label.isdigit() and int(label) >= 1:
        return int(label)
    raise ConfigError("a difficulty bin must be a positive integer label such as '1'",
                      where=where, value=label,
                      fix="use the labels of oracle_bins / bin_of ('1' = easiest)")


@dataclass(frozen=True)
class Agreement:
    """How well predicted bins match oracle bins.

    Attributes:
        n: number of examples compared.
        exact: share with the same bin.
        within_one: share whose bin numbers differ by at most 1.
        spearman: Spearman rank correlation of the bin numbers (average ranks for ties);
            0.0 when either side is constant.
        labels: bin labels indexing the confusion matrix, numerically sorted (the union
            of both sides).
        confusion: ``confusion[i][j]`` = examples with oracle bin ``labels[i]`` and
            predicted bin ``labels[j]``.
    """

    n: int
    exact: float
    within_one: float
    spearman: float
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {"n": self.n, "exact": self.exact, "within_one": self.within_one,
                "spearman": self.spearman, "labels": list(self.labels),
                "confusion": [list(row) for row in self.confusion]}

    def __str__(self) -> str:
        head = (f"n={self.n} exact={self.exact:.3f} within_one={self.within_one:.3f} "
                f"spearman={self.spearman:.3f}")
        width = max([len(lab) for lab in self.labels]
                    + [len(str(c)) for row in self.confusion for c in row] + [4])
        lines = [head, "oracle\\pred " + " ".join(lab.rjust(width) for lab in self.labels)]
        for lab, row in zip(self.labels, self.confusion):
            lines.append(lab.rjust(11) + " " + " ".join(str(c).rjust(width) for c in row))
        return "\n".join(lines)


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def agreement(predicted: Mapping[str, str], oracle: Mapping[str, str]) -> Agreement:
    """Compare predicted bins with oracle bins over the same example ids.

    Args:
        predicted: ``{example id: predicted bin}``.
        oracle: ``{example id: oracle bin}``, with exactly the same ids.

    Raises:
        ConfigError: empty inputs, different ids, or a label that is not a positive
            integer string.
    """
    for name, m in (("predicted", predicted), ("oracle", oracle)):
        if not isinstance(m, Mapping) or not m:
            raise ConfigError(f"`{name}` must be a non-empty mapping of example id to bin",
                              where=name, value=m, fix="compare at least one example")
    if set(predicted) != set(oracle):
        only_p = sorted(set(predicted) - set(oracle))
        only_o = sorted(set(oracle) - set(predicted))
        raise ConfigError("`predicted` and `oracle` cover different example ids",
                          where="predicted", value={"only_predicted": only_p[:5],
                                                    "only_oracle": only_o[:5]},
                          fix="predict bins for exactly the examples with oracle bins")
    ids = list(oracle)
    o = np.array([_bin_number(oracle[i], f"oracle[{i!r}]") for i in ids], dtype=float)
    p = np.array([_bin_number(predicted[i], f"predicted[{i!r}]") for i in ids], dtype=float)
    n = len(ids)
    ro, rp = _ranks(o), _ranks(p)
    ro, rp = ro - ro.mean(), rp - rp.mean()
    denom = math.sqrt(float(ro @ ro) * float(rp @ rp))
    rho = float(ro @ rp) / denom if denom > 0 else 0.0
    labels = tuple(sorted({oracle[i] for i in ids} | {predicted[i] for i in ids},
                          key=bin_label_key))
    index = {lab: k for k, lab in enumerate(labels)}
    conf = [[0] * len(labels) for _ in labels]
    for i in ids:
        conf[index[oracle[i]]][index[predicted[i]]] += 1
    return Agreement(
        n=n,
        exact=float(np.mean(o == p)),
        within_one=float(np.mean(np.abs(o - p) <= 1)),
        spearman=max(-1.0, min(1.0, rho)),
        labels=labels,
        confusion=tuple(tuple(row) for row in conf),
    )
