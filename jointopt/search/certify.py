"""Certify a finished study: the cheapest policy of its front whose accuracy is at least a
target, with a stated risk, on a calibration split the search never saw.

The calibration split is ``validation.calibration_fraction`` of the data, carved
(stratified by difficulty, seeded by ``validation.seed``) before the dev/test split, so
neither the search nor the test scores use it (:func:`jointopt.search.plan.plan_study`).
:func:`certify_study` scores every candidate of the study (the Pareto front, per-bin
policies included, or every feasible trial) on it and runs Learn-then-Test
(:func:`jointopt.evaluation.certificate.certify_candidates`). The certificate is stored
in the study (user attribute ``certificate``), where ``jointopt export --pick certified``
finds it.

Assumption: the calibration examples and the future inputs are exchangeable (drawn from
the same distribution). A certificate says nothing about inputs from another
distribution; the serving monitor (:mod:`jointopt.serving.monitor`) watches for that.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jointopt.backends.base import Backend
from jointopt.errors import ConfigError
from jointopt.evaluation.certificate import CertCandidate, Certification, certify_candidates
from jointopt.evaluation.evaluate import evaluate
from jointopt.evaluation.risk import METHODS
from jointopt.search.config import StudyConfig
from jointopt.search.plan import StudyPlan, as_plan, bank_pool_size, task_hash
from jointopt.search.results import TrialSummary, pareto_front, summarize
from jointopt.search.study import load_study
from jointopt.tasks import Task

if TYPE_CHECKING:
    import optuna

__all__ = ["CERTIFICATE_ATTR", "CertifyResult", "certify_study", "study_certificate"]

log = logging.getLogger(__name__)

#: Study user attribute holding the latest certificate (a dict, see CertifyResult).
CERTIFICATE_ATTR = "certificate"


@dataclass(frozen=True)
class CertifyResult:
    """What :func:`certify_study` found.

    Attributes:
        certification: the tests, in the order they ran, and the chosen trial.
        certificate: the stored record: the certification plus the calibration data's
            size and hash, the study and the time (what a policy file carries).
        policies: trial number -> policy of every tested candidate.
    """

    certification: Certification
    certificate: Mapping[str, Any]
    policies: Mapping[int, Any] = field(default_factory=dict)

    @property
    def chosen(self) -> int | None:
        """The certified trial number, or None when no candidate is certified."""
        return self.certification.chosen


def _check_request(plan: StudyPlan, target: float | None, risk: float, method: str,
                   bin_targets: Mapping[str, float]) -> None:
    for name, value in (("target", target), ("risk", risk), *(
            (f"bin_targets.{k}", v) for k, v in bin_targets.items())):
        if value is None and name == "target" and bin_targets:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 < value < 1:
            raise ConfigError(f"`{name}` must be a number strictly between 0 and 1",
                              where=name, value=value,
                              fix="e.g. --target 0.9 --risk 0.05")
    if method not in METHODS:
        raise ConfigError("unknown p-value method", where="method", value=method,
                          fix=f"use one of: {', '.join(METHODS)}")
    if plan.calibration_task is None:
        raise ConfigError(
            "the study has no calibration split: certification needs examples the search "
            "never saw", where="validation.calibration_fraction",
            value=plan.config.validation.calibration_fraction,
            fix="set validation.calibration_fraction (e.g. 0.3) in the config and rerun the "
                "study into a fresh storage (jointopt run CONFIG); the search must not have "
                "seen the calibration examples")


def _candidates(plan: StudyPlan, study: "optuna.Study", which: str) -> list[TrialSummary]:
    import optuna

    if which == "front":
        chosen = [t for t in pareto_front(study) if t.policy is not None]
    else:
        chosen = [summarize(t) for t in study.get_trials(
                      deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                  if t.user_attrs.get("policy") and t.values
                  and all(c <= 0 for c in t.user_attrs.get("constraint", [0.0]))]
    if not chosen:
        raise ConfigError("the study has no complete trial to certify",
                          where="optimizer.study_name", value=plan.study_name,
                          fix="run the study first: jointopt run CONFIG")
    hashes = {study.trials[t.number].user_attrs.get("dataset_hash") for t in chosen}
    hashes.discard(None)
    if hashes and hashes != {plan.task_hash}:
        raise ConfigError(
            "the study searched on other examples than this config's dev split (was "
            "validation.calibration_fraction changed after the run?); its trials may "
            "have seen calibration examples", where="validation.calibration_fraction",
            value=plan.config.validation.calibration_fraction,
            fix="keep the config the study ran with, or rerun the study into a fresh "
                "storage with the calibration split set")
    return chosen


def _calibration(plan: StudyPlan, engine: Backend) -> Task:
    """The calibration task, labelled with its bins when the space's difficulty source
    cannot run at serve time (``oracle``)."""
    import dataclasses

    task = plan.calibration_task
    if plan.space.bin_source().servable:
        return task
    bins = plan.space.difficulty_labels(task, engine, plan.config.seed)
    return task.subset(dataclasses.replace(e, difficulty=bins[e.id]) for e in task.examples)


def certify_study(
    config_or_plan: StudyConfig | StudyPlan | str | Path,
    *,
    target: float | None,
    risk: float = 0.05,
    method: str = "auto",
    bin_targets: Mapping[str, float] | None = None,
    candidates: Literal["front", "feasible"] = "front",
    backend: Backend | None = None,
    store: bool = True,
) -> CertifyResult:
    """Certify the cheapest candidate of a finished study (see the module docstring).

    Args:
        config_or_plan: the study config (path or :class:`StudyConfig`) or its plan.
        target: accuracy the policy must reach, in (0, 1) (None: per-bin targets only).
        risk: the largest probability that the certified policy misses the target.
        method: p-value: ``auto`` (exact binomial for 0/1 outcomes, Hoeffding-Bentkus
            for the expected accuracies of pool-scored strategies), ``binomial`` or
            ``hoeffding_bentkus``.
        bin_targets: optional accuracy target per difficulty label.
        candidates: ``front`` (the Pareto front) or ``feasible`` (every feasible trial).
        backend: generate with this backend instead of the config's.
        store: keep the certificate in the study (user attribute ``certificate``).

    Raises:
        ConfigError: no calibration split, no study or trial, a target or risk outside
            (0, 1), an unknown method, or a study that searched on other examples.
    """
    from jointopt.search.objective import TrialRunner

    plan = as_plan(config_or_plan)
    bins = {str(k): float(v) for k, v in (bin_targets or {}).items()}
    _check_request(plan, target, risk, method, bins)
    study = load_study(plan)
    chosen = _candidates(plan, study, candidates)
    runner = TrialRunner(plan, study, None, 0, backend)
    try:
        engine = runner.ready()
        task = _calibration(plan, engine)
        cands = []
        for t in chosen:
            result = evaluate(t.policy, task, engine, seed=plan.config.seed,
                              pool_size=bank_pool_size(plan))
            log.info("trial %d on calibration: accuracy %.3f", t.number, result.accuracy)
            cands.append(CertCandidate(key=t.number, cost=float(t.mean_tokens),
                                       dev_accuracy=float(t.accuracy),
                                       outcomes=tuple(r.correct for r in result.records)))
    finally:
        runner.close()
    certification = certify_candidates(
        cands, target, risk, method=method, bin_targets=bins,
        labels=[e.difficulty for e in task.examples])
    certificate = {
        **certification.to_dict(),
        "calibration_fraction": plan.config.validation.calibration_fraction,
        "split_seed": plan.config.validation.seed,
        "dataset_hash": task_hash(plan.calibration_task),
        "study_name": plan.study_name,
        "candidates": candidates,
        "certified_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "assumption": "calibration examples and future inputs are exchangeable",
    }
    if store:
        study.set_user_attr(CERTIFICATE_ATTR, certificate)
    return CertifyResult(certification=certification, certificate=certificate,
                         policies={t.number: t.policy for t in chosen})


def study_certificate(study: "optuna.Study") -> dict[str, Any] | None:
    """The certificate :func:`certify_study` stored in ``study``, or None."""
    data = study.user_attrs.get(CERTIFICATE_ATTR)
    return dict(data) if data else None
