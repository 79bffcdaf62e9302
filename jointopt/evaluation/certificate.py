"""Learn-then-Test certification of an accuracy target over candidate policies.

:func:`certify_candidates` takes candidates (a key, a cost and a dev accuracy known
before calibration, and per-example outcomes on a calibration split the search never
saw), orders them from the most to the least accurate on dev (on a Pareto front that is
from the most to the least expensive), and tests ``H0: accuracy < target`` for each in
that fixed order at level ``risk`` (:func:`~jointopt.evaluation.risk.fixed_sequence`),
stopping at the first it cannot reject. Every rejected candidate meets the target and,
with probability >= 1 - risk, none of them is wrong about it (the family-wise error of
fixed-sequence testing needs no multiplicity correction). The cheapest of them is the
certified policy.

Assumption: the calibration examples and the inputs the policy will serve are
exchangeable (see :mod:`jointopt.evaluation.risk`). The order must not depend on the
calibration outcomes, which is why it comes from the dev split.

Per-bin targets (``bin_targets``) add one hypothesis per bin, on the calibration
examples carrying that difficulty label; a candidate is rejected (certified) only when
every one of its hypotheses is (an intersection-union test: its p-value is the largest).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jointopt.errors import ConfigError, DataError
from jointopt.evaluation.risk import accuracy_lower_bound, accuracy_pvalue, fixed_sequence

__all__ = ["CertCandidate", "TestedCandidate", "Certification", "certify_candidates"]


@dataclass(frozen=True)
class CertCandidate:
    """A policy to test.

    Attributes:
        key: its identity (a trial number).
        cost: mean tokens per input on dev (what "cheapest" means).
        dev_accuracy: accuracy on dev, which fixes the order of the tests.
        outcomes: per calibration example, 1 correct / 0 wrong (or an expected accuracy
            in [0, 1] for pooled strategies).
    """

    key: int
    cost: float
    dev_accuracy: float
    outcomes: tuple[float, ...]


@dataclass(frozen=True)
class TestedCandidate:
    """One test of the sequence: the candidate's calibration accuracy, its p-value (the
    largest of its hypotheses), per-bin p-values, and whether it was certified."""

    key: int
    cost: float
    dev_accuracy: float
    calibration_accuracy: float
    p_value: float
    certified: bool
    lower_bound: float
    bin_p_values: Mapping[str, float] = field(default_factory=dict)
    method: str = "binomial"

    def to_dict(self) -> dict[str, Any]:
        """The form stored in a certificate's ``tested`` list."""
        out = {"trial": self.key, "mean_tokens": round(self.cost, 6),
               "dev_accuracy": round(self.dev_accuracy, 6),
               "calibration_accuracy": round(self.calibration_accuracy, 6),
               "p_value": float(f"{self.p_value:.6g}"), "certified": self.certified,
               "lower_bound": round(self.lower_bound, 6), "method": self.method}
        if self.bin_p_values:
            out["bin_p_values"] = {k: float(f"{v:.6g}") for k, v in self.bin_p_values.items()}
        return out


@dataclass(frozen=True)
class Certification:
    """The outcome of :func:`certify_candidates`.

    Attributes:
        target, risk, method: what was tested (None: per-bin targets only), at which
            level, with which p-value
            (the methods used, joined by ``+`` when 0/1 and pooled outcomes mixed).
        n_calibration: calibration examples.
        tested: the tests in the order they ran (the sequence stops at the first failure).
        chosen: key of the cheapest certified candidate, or None when none is.
        bin_targets: the per-bin targets, when given.
    """

    target: float | None
    risk: float
    method: str
    n_calibration: int
    tested: tuple[TestedCandidate, ...]
    chosen: int | None
    bin_targets: Mapping[str, float] = field(default_factory=dict)

    @property
    def certified(self) -> tuple[TestedCandidate, ...]:
        """Certified candidates, from the safest (most accurate on dev) to the cheapest."""
        return tuple(t for t in self.tested if t.certified)

    @property
    def closest(self) -> TestedCandidate | None:
        """When nothing is certified: the tested candidate with the highest lower bound."""
        return max(self.tested, key=lambda t: t.lower_bound, default=None)

    def to_dict(self) -> dict[str, Any]:
        """The certificate's statistical part (the search stage adds the calibration data's
        hash and the provenance)."""
        out: dict[str, Any] = {
            "target": self.target, "risk": self.risk, "method": self.method,
            "procedure": "learn-then-test, fixed sequence by dev accuracy",
            "n_calibration": self.n_calibration, "chosen_trial": self.chosen,
            "tested": [t.to_dict() for t in self.tested]}
        if self.bin_targets:
            out["bin_targets"] = dict(self.bin_targets)
        return out


def _hypotheses(outcomes: np.ndarray, target: float | None, bin_targets: Mapping[str, float],
                labels: Sequence[str | None], method: str
                ) -> tuple[float, dict[str, float], str]:
    """The candidate's p-value (largest over its hypotheses), per-bin p-values, method."""
    p, used = 0.0, method
    if target is not None:
        p, used = accuracy_pvalue(outcomes, target, method)
    per_bin: dict[str, float] = {}
    for name, bin_target in bin_targets.items():
        idx = [i for i, label in enumerate(labels) if label == name]
        per_bin[name], used = accuracy_pvalue(outcomes[idx], bin_target, method)
        p = max(p, per_bin[name])
    return p, per_bin, used


def _check_inputs(candidates: Sequence[CertCandidate], bin_targets: Mapping[str, float],
                  labels: Sequence[str | None] | None) -> int:
    if not candidates:
        raise ConfigError("there is no candidate policy to certify", where="candidates",
                          fix="run the study first (jointopt run CONFIG)")
    sizes = {len(c.outcomes) for c in candidates}
    if len(sizes) != 1 or 0 in sizes:
        raise DataError("every candidate needs one outcome per calibration example",
                        where="candidates.outcomes", value=sorted(sizes),
                        fix="score every candidate on the same calibration examples")
    n = sizes.pop()
    if bin_targets:
        if labels is None or len(labels) != n:
            raise DataError("per-bin targets need a difficulty label per calibration example",
                            where="bin_targets", fix="label the calibration examples")
        missing = sorted(set(bin_targets) - {str(x) for x in labels if x is not None})
        if missing:
            raise ConfigError("a per-bin target names a bin no calibration example has",
                              where="bin_targets", value=missing,
                              fix=f"use the labels present: {sorted({str(x) for x in labels})}")
    return n


def certify_candidates(
    candidates: Sequence[CertCandidate],
    target: float | None,
    risk: float,
    *,
    method: str = "auto",
    bin_targets: Mapping[str, float] | None = None,
    labels: Sequence[str | None] | None = None,
    lower_bounds: bool = True,
) -> Certification:
    """Certify the cheapest candidate whose accuracy is >= ``target`` at ``risk``.

    Args:
        candidates: the policies to test (see :class:`CertCandidate`).
        target: overall accuracy target in (0, 1), or None with ``bin_targets`` only.
        risk: the probability, at most, that a certified candidate misses its target.
        method: ``auto``, ``binomial`` or ``hoeffding_bentkus``.
        bin_targets: optional accuracy target per difficulty label.
        labels: the difficulty label of each calibration example (for ``bin_targets``).
        lower_bounds: compute each tested candidate's lower confidence bound on its
            accuracy (reported as how close it came; off saves time in simulations).

    Raises:
        ConfigError: no candidates, no target at all, a bad target, risk or method.
        DataError: outcomes of different lengths or outside [0, 1].
    """
    bins = {str(k): float(v) for k, v in (bin_targets or {}).items()}
    if target is None and not bins:
        raise ConfigError("nothing to certify: give a target and/or per-bin targets",
                          where="target", fix="e.g. target=0.9")
    n = _check_inputs(candidates, bins, labels)
    fixed_risk = float(risk)
    order = sorted(candidates, key=lambda c: (-c.dev_accuracy, c.cost, c.key))
    label_list = [None if x is None else str(x) for x in (labels or [None] * n)]
    pvalues: list[float] = []
    details: list[tuple[CertCandidate, np.ndarray, dict[str, float], str]] = []
    for cand in order:
        arr = np.asarray(cand.outcomes, dtype=float)
        p, per_bin, used = _hypotheses(arr, target, bins, label_list, method)
        pvalues.append(p)
        details.append((cand, arr, per_bin, used))
        if p > fixed_risk:  # the sequence stops here; later candidates are not tested
            break
    passed = fixed_sequence(pvalues, fixed_risk)
    tested = []
    for i, (cand, arr, per_bin, used) in enumerate(details):
        bound = (accuracy_lower_bound(arr, fixed_risk, used)
                 if target is not None and lower_bounds else 0.0)
        tested.append(TestedCandidate(
            key=cand.key, cost=float(cand.cost), dev_accuracy=float(cand.dev_accuracy),
            calibration_accuracy=float(arr.mean()), p_value=pvalues[i], certified=i < passed,
            lower_bound=bound, bin_p_values=per_bin, method=used))
    certified = [t for t in tested if t.certified]
    chosen = min(certified, key=lambda t: (t.cost, t.key)).key if certified else None
    used_methods = sorted({t.method for t in tested})
    return Certification(target=float(target) if target is not None else None,
                         risk=fixed_risk, method="+".join(used_methods), n_calibration=n,
                         tested=tuple(tested), chosen=chosen, bin_targets=bins)
