"""Difficulty bins: oracle bins from sample pools, a cheap probe, and a text predictor.

Per-difficulty budgets need a difficulty label for every example. This module gives three
ways to get one, all with the same label convention: ``"1"`` is the *easiest* bin and
``str(n_bins)`` the *hardest*.

* :func:`oracle_bins` -- quantile bins of the per-example pass rate over a pool of ``N``
  samples (Snell et al., 2024: pass rate over N samples, 5 bins). Needs the targets, so
  it is for dev data only; :func:`pass_rates_from_pools` turns pools into pass rates.
* :func:`probe_signal`, :func:`fit_thresholds`, :func:`bin_of` -- a serve-time probe: the
  agreement of ``k`` cheap samples (plurality share plus a small logprob tie-breaker),
  cut into bins at quantiles of the dev signals.
* :class:`DifficultyPredictor` -- a tiny multinomial logistic regression on text features
  of the inputs, trained on dev examples labelled with oracle bins; no generation at all.

:func:`agreement` compares predicted bins with oracle bins (exact, within one bin,
Spearman rank correlation and a confusion matrix).

Everything is a pure, deterministic function of its arguments; values are frozen
dataclasses; invalid arguments raise :class:`jointopt.errors.ConfigError` naming the
parameter, the value and the fix.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jointopt.strategies.pool import PoolSample, expected_pass_at
from jointopt.errors import ConfigError
from jointopt.core.predictor import (  # the serve-time half, part of every Policy
    FEATURES,
    DifficultyPredictor,
    check_number,
    bin_label_key,
    text_features,
)

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


#: Weight of the logprob tie-breaker in :func:`probe_signal`.
_LOGPROB_WEIGHT = 0.01


# --------------------------------------------------------------------------- checks


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ConfigError("`n_bins` must be an integer >= 2", where="n_bins", value=n_bins,
                          fix="use e.g. n_bins=5 (Snell et al.) or 3")
    return int(n_bins)




def _bin_number(label: Any, where: str) -> int:
    if isinstance(label, str) and label.isascii() and label.isdigit() and int(label) >= 1:
        return int(label)
    raise ConfigError("a difficulty bin must be a positive integer label such as '1'",
                      where=where, value=label,
                      fix="use the labels of oracle_bins / bin_of ('1' = easiest)")




def oracle_bins(pass_rates: Mapping[str, float], n_bins: int) -> dict[str, str]:
    """Quantile bins of per-example pass rate: ``"1"`` = easiest ... ``str(n_bins)`` = hardest.

    Examples are ranked by pass rate, highest first. An example's bin is
    ``floor(n_bins * h / n) + 1`` where ``h`` is the number of examples with a *strictly
    higher* pass rate and ``n`` the number of examples; without ties this splits the
    examples into ``n_bins`` bins of (nearly) equal size. Equal pass rates always share a
    bin (the bin of the first position of their group), so the easiest group is always
    ``"1"``. With ties, or fewer distinct pass rates than bins, fewer bins are used and
    some labels stay empty -- labels keep their quantile meaning rather than being
    renumbered (e.g. with 5 bins and 40% of examples at pass rate 0, those examples all
    land in ``"4"`` and ``"5"`` is unused).

    Args:
        pass_rates: ``{example id: pass rate in [0, 1]}``, non-empty.
        n_bins: number of bins, at least 2.

    Returns:
        ``{example id: bin label}`` in the order of ``pass_rates``.

    Raises:
        ConfigError: empty ``pass_rates``, a rate outside [0, 1], or ``n_bins < 2``.
    """
    n_bins = _check_n_bins(n_bins)
    if not isinstance(pass_rates, Mapping) or not pass_rates:
        raise ConfigError("`pass_rates` must be a non-empty mapping of example id to rate",
                          where="pass_rates", value=pass_rates,
                          fix="score at least one example (see pass_rates_from_pools)")
    rates = {}
    for key, r in pass_rates.items():
        v = check_number(r, f"pass_rates[{key!r}]")
        if not 0.0 <= v <= 1.0:
            raise ConfigError("a pass rate must lie in [0, 1]", where=f"pass_rates[{key!r}]",
                              value=r, fix="pass the share of correct samples")
        rates[key] = v
    n = len(rates)
    values = np.array(sorted(rates.values(), reverse=True))
    # number of strictly higher values = position of the first occurrence in descending order
    neg = -values  # ascending
    out = {}
    for key, v in rates.items():
        higher = int(np.searchsorted(neg, -v, side="left"))
        out[key] = str(min(n_bins, n_bins * higher // n + 1))
    return out


def pass_rates_from_pools(pools: Mapping[str, Sequence[PoolSample]]) -> dict[str, float]:
    """Per-example pass rate (expected pass@1, the share of correct samples) of each pool.

    Args:
        pools: ``{example id: samples}``, non-empty, every pool non-empty.

    Returns:
        ``{example id: pass rate in [0, 1]}`` in the order of ``pools``.

    Raises:
        ConfigError: no pools, or an empty pool.
    """
    if not isinstance(pools, Mapping) or not pools:
        raise ConfigError("`pools` must be a non-empty mapping of example id to samples",
                          where="pools", value=pools, fix="draw a pool for at least one example")
    out = {}
    for key, pool in pools.items():
        pool = tuple(pool)
        if not pool:
            raise ConfigError("a pool is empty", where=f"pools[{key!r}]", value=[],
                              fix="draw at least one sample per example")
        out[key] = expected_pass_at(pool, 1)
    return out


# --------------------------------------------------------------------------- probe


def probe_signal(answers: Sequence[str | None],
                 mean_logprobs: Sequence[float | None]) -> float:
    """Ease signal of ``k`` probe samples of one example; higher means easier.

    The signal is the share of the plurality answer among the ``k`` samples (``None``
    answers never form the plurality but count in ``k``; all ``None`` gives 0) plus
    ``0.01`` times the mean of ``exp(mean_logprob)`` over samples that have a logprob
    (capped at 1 per sample; 0 when none has one), a tie-breaker in ``[0, 0.01]``. The
    result lies in ``[0, 1.01]``.

    Args:
        answers: canonical answers of the ``k >= 1`` samples.
        mean_logprobs: mean token logprob of each sample (same length), or ``None``.

    Raises:
        ConfigError: no samples, lengths differ, or a logprob is NaN or ``+inf``.
    """
    answers = list(answers)
    mean_logprobs = list(mean_logprobs)
    if not answers:
        raise ConfigError("a probe needs at least one sample", where="answers", value=answers,
                          fix="draw k >= 1 probe samples")
    if len(mean_logprobs) != len(answers):
        raise ConfigError(f"`mean_logprobs` must have one entry per answer ({len(answers)})",
                          where="mean_logprobs", value=len(mean_logprobs),
                          fix="pass None for samples without a logprob")
    counts = Counter(a for a in answers if a is not None)
    share = max(counts.values()) / len(answers) if counts else 0.0
    conf = [min(1.0, math.exp(check_number(lp, f"mean_logprobs[{i}]", allow_neg_inf=True)))
            for i, lp in enumerate(mean_logprobs) if lp is not None]
    bonus = sum(conf) / len(conf) if conf else 0.0
    return share + _LOGPROB_WEIGHT * bonus


def fit_thresholds(signals: Sequence[float], n_bins: int) -> tuple[float, ...]:
    """``n_bins - 1`` descending cut points at the quantiles of the dev signals.

    Cut ``j`` (0-based) is the ``1 - (j + 1) / n_bins`` quantile (linear interpolation),
    so :func:`bin_of` splits the dev signals into ``n_bins`` bins of roughly equal size,
    ``"1"`` holding the highest (easiest) signals. Many equal signals give equal cut
    points; the bins between them stay empty.

    Raises:
        ConfigError: no signals, a non-finite signal, or ``n_bins < 2``.
    """
    n_bins = _check_n_bins(n_bins)
    signals = list(signals)
    if not signals:
        raise ConfigError("`signals` must not be empty", where="signals", value=signals,
                          fix="probe at least one dev example")
    data = np.array([check_number(s, f"signals[{i}]") for i, s in enumerate(signals)])
    qs = [1.0 - (j + 1) / n_bins for j in range(n_bins - 1)]
    return tuple(float(x) for x in np.quantile(data, qs))


def bin_of(signal: float, thresholds: Sequence[float]) -> str:
    """The bin of a probe signal: ``"1"`` if ``signal >= thresholds[0]``, ``"2"`` if
    ``>= thresholds[1]``, ..., else ``str(len(thresholds) + 1)`` (the hardest).

    Raises:
        ConfigError: non-finite ``signal``, empty or not descending ``thresholds``.
    """
    s = check_number(signal, "signal")
    th = [check_number(t, f"thresholds[{i}]") for i, t in enumerate(thresholds)]
    if not th:
        raise ConfigError("`thresholds` must not be empty", where="thresholds", value=th,
                          fix="use fit_thresholds(dev_signals, n_bins)")
    if any(a < b for a, b in zip(th, th[1:])):
        raise ConfigError("`thresholds` must be descending", where="thresholds", value=th,
                          fix="use fit_thresholds(dev_signals, n_bins)")
    for j, t in enumerate(th):
        if s >= t:
            return str(j + 1)
    return str(len(th) + 1)

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
