"""Risk control for an accuracy target: p-values, fixed-sequence testing and an
anytime-valid confidence sequence for a success rate.

Everything here tests the claim "accuracy >= target" for a policy from outcomes
``x_1..x_n`` in [0, 1] (1 = correct; a pooled expected accuracy may lie between). The
null hypothesis is ``H0: accuracy < target``; a small p-value rejects it, i.e. supports
the claim.

**Assumption (exchangeability).** The guarantees hold when the outcomes used here and the
inputs the policy will answer later are exchangeable: drawn from the same distribution,
in no particular order. A calibration split carved at random from the same data as the
future traffic satisfies it; traffic that drifts (harder inputs, another language) does
not, which is what :class:`BernoulliConfidenceSequence` at serve time detects.

* :func:`binomial_pvalue`: exact, for 0/1 outcomes: ``P(Binomial(n, target) >= k)``.
* :func:`hoeffding_bentkus_pvalue`: for any outcomes in [0, 1] (Bates et al. 2021):
  ``min(exp(-n h(min(r, a), a)), e * P(Binomial(n, a) <= ceil(n r)))`` with the error
  rate ``r = 1 - mean``, ``a = 1 - target`` and ``h`` the Bernoulli relative entropy.
* :func:`fixed_sequence` (Learn-then-Test): test hypotheses in an order fixed before
  seeing the calibration data, each at level ``risk``, stop at the first that is not
  rejected; the family-wise error rate is at most ``risk`` with no correction.
* :class:`BernoulliConfidenceSequence`: Robbins' beta-binomial mixture; with probability
  >= 1 - risk the true rate lies in every interval it reports, at every sample size,
  however often it is looked at (Ville's inequality).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jointopt.errors import ConfigError, DataError

__all__ = [
    "METHODS",
    "BernoulliConfidenceSequence",
    "binomial_pvalue",
    "binomial_tail",
    "hoeffding_bentkus_pvalue",
    "accuracy_pvalue",
    "accuracy_lower_bound",
    "fixed_sequence",
]

#: p-value methods: ``auto`` takes ``binomial`` for 0/1 outcomes, else ``hoeffding_bentkus``.
METHODS = ("auto", "binomial", "hoeffding_bentkus")


def _check_rate(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f"`{name}` must be a number strictly between 0 and 1", where=name,
                          value=value, fix=f"e.g. {name}=0.9" if name == "target"
                          else f"e.g. {name}=0.05")


def _log_pmf(n: int, p: float) -> np.ndarray:
    """log P(Binomial(n, p) = k) for k = 0..n (log binomial coefficients by cumsum)."""
    k = np.arange(1, n + 1, dtype=float)
    log_choose = np.concatenate(([0.0], np.cumsum(np.log((n - k + 1) / k))))
    ks = np.arange(n + 1, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = ks * math.log(p) if p > 0 else np.where(ks == 0, 0.0, -np.inf)
        log_q = (n - ks) * math.log1p(-p) if p < 1 else np.where(ks == n, 0.0, -np.inf)
    return log_choose + log_p + log_q


def binomial_tail(k: int, n: int, p: float, *, upper: bool = True) -> float:
    """``P(Binomial(n, p) >= k)`` (``upper``) or ``P(Binomial(n, p) <= k)``, exactly
    (summed in log space, so far tails keep their relative precision)."""
    if n < 0:
        raise DataError("n must be >= 0", where="n", value=n, fix="count the outcomes")
    if upper and k <= 0 or not upper and k >= n:
        return 1.0
    if upper and k > n or not upper and k < 0:
        return 0.0
    logs = _log_pmf(n, p)
    part = logs[k:] if upper else logs[:k + 1]
    top = float(np.max(part))
    if top == -math.inf:
        return 0.0
    return float(min(1.0, math.exp(top) * float(np.sum(np.exp(part - top)))))


def binomial_pvalue(successes: int, n: int, target: float) -> float:
    """Exact p-value of ``H0: accuracy < target`` after ``successes`` of ``n`` 0/1
    outcomes: ``P(Binomial(n, target) >= successes)`` (the boundary is the worst case)."""
    _check_rate(target, "target")
    return binomial_tail(int(successes), int(n), float(target), upper=True)


def _kl(a: float, b: float) -> float:
    """Bernoulli relative entropy KL(a || b)."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def hoeffding_bentkus_pvalue(mean: float, n: int, target: float) -> float:
    """Hoeffding-Bentkus p-value of ``H0: accuracy < target`` from the mean of ``n``
    outcomes in [0, 1] (valid for any bounded outcomes, not only 0/1)."""
    _check_rate(target, "target")
    if n <= 0:
        return 1.0
    risk_hat, alpha = 1.0 - float(mean), 1.0 - float(target)
    hoeffding = math.exp(-n * _kl(min(risk_hat, alpha), alpha))
    # ceil of n * risk_hat, with a guard against float noise just above an integer
    errors = math.ceil(n * risk_hat - 1e-9)
    bentkus = math.e * binomial_tail(errors, n, alpha, upper=False)
    return min(1.0, hoeffding, bentkus)


def _binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))


def accuracy_pvalue(values: Sequence[float], target: float, method: str = "auto"
                    ) -> tuple[float, str]:
    """p-value of ``H0: accuracy < target`` from per-example outcomes, and the method used.

    Raises:
        DataError: no outcomes, outcomes outside [0, 1], or ``binomial`` on outcomes that
            are not 0/1.
        ConfigError: an unknown method or a target outside (0, 1).
    """
    arr = _outcomes(values)
    if method not in METHODS:
        raise ConfigError("unknown p-value method", where="method", value=method,
                          fix=f"use one of: {', '.join(METHODS)}")
    binary = _binary(arr)
    if method == "binomial" and not binary:
        raise DataError("the exact binomial p-value needs 0/1 outcomes; these include "
                        "expected accuracies of pooled strategies", where="method",
                        value=method, fix="use method 'hoeffding_bentkus' (or 'auto')")
    if method == "auto":
        method = "binomial" if binary else "hoeffding_bentkus"
    if method == "binomial":
        return binomial_pvalue(int(arr.sum()), arr.size, target), method
    return hoeffding_bentkus_pvalue(float(arr.mean()), arr.size, target), method


def _outcomes(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        raise DataError("no outcomes to test", where="calibration",
                        fix="score the policy on at least one calibration example")
    if np.any(~np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 1):
        raise DataError("outcomes must lie in [0, 1]", where="outcomes",
                        value=float(arr[(arr < 0) | (arr > 1) | ~np.isfinite(arr)][0]),
                        fix="pass 1 for correct and 0 for wrong")
    return arr


def accuracy_lower_bound(values: Sequence[float], risk: float, method: str = "auto") -> float:
    """The largest target the outcomes certify at ``risk``: ``sup {t : p(t) <= risk}``
    (for 0/1 outcomes and ``binomial``, the one-sided Clopper-Pearson lower bound).
    0 when no target is certified."""
    _check_rate(risk, "risk")
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        if mid <= 0 or accuracy_pvalue(values, mid, method)[0] <= risk:
            low = mid
        else:
            high = mid
    return low


def fixed_sequence(pvalues: Sequence[float], risk: float) -> int:
    """Fixed-sequence testing: how many of the hypotheses, in the given order, are
    rejected at level ``risk`` before the first that is not (the order must not depend
    on the data the p-values come from)."""
    _check_rate(risk, "risk")
    count = 0
    for p in pvalues:
        if p > risk:
            break
        count += 1
    return count


@dataclass(frozen=True)
class BernoulliConfidenceSequence:
    """An anytime-valid confidence sequence for a success rate (beta-binomial mixture).

    For every candidate rate ``p`` the mixture martingale
    ``M_t(p) = B(a + S, b + F) / B(a, b) / (p^S (1 - p)^F)`` (``S`` successes and ``F``
    failures after ``t`` outcomes) has expectation 1 when ``p`` is the true rate, so by
    Ville's inequality the set ``{p : M_t(p) < 1 / risk}`` contains the true rate at every
    ``t`` simultaneously with probability >= 1 - risk. It is an interval around
    ``S / t``. Outcomes must be 0/1 and exchangeable (conditionally on the past, each
    is correct with the same rate).

    Attributes:
        risk: the probability that the sequence ever misses the true rate.
        prior_a, prior_b: the Beta prior of the mixture (Jeffreys' by default).
    """

    risk: float = 0.05
    prior_a: float = 0.5
    prior_b: float = 0.5

    def __post_init__(self) -> None:
        _check_rate(self.risk, "risk")
        for name in ("prior_a", "prior_b"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"`{name}` must be > 0", where=name, value=value,
                                  fix="e.g. 0.5")

    def _log_mixture(self, p: float, successes: int, failures: int) -> float:
        a, b = self.prior_a, self.prior_b
        log_beta = (math.lgamma(a + successes) + math.lgamma(b + failures)
                    - math.lgamma(a + b + successes + failures))
        log_prior = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
        if p <= 0 or p >= 1:
            return math.inf
        return log_beta - log_prior - successes * math.log(p) - failures * math.log1p(-p)

    def interval(self, successes: int, n: int) -> tuple[float, float]:
        """The interval after ``successes`` correct of ``n`` outcomes (``(0, 1)`` at 0)."""
        if n <= 0:
            return 0.0, 1.0
        failures = n - successes
        level = math.log(1.0 / self.risk)
        centre = successes / n

        def inside(p: float) -> bool:
            return self._log_mixture(p, successes, failures) < level

        def edge(outside: float, inner: float) -> float:
            for _ in range(60):
                mid = (outside + inner) / 2
                if inside(mid):
                    inner = mid
                else:
                    outside = mid
            return outside

        low = 0.0 if successes == 0 else edge(0.0, centre)
        high = 1.0 if failures == 0 else edge(1.0, centre)
        return low, high

    def violates(self, successes: int, n: int, target: float) -> bool:
        """The rate is below ``target`` with confidence (the whole interval is below)."""
        return self.interval(successes, n)[1] < target
