"""``jointopt.certify``: certify a finished study and record the certificate in MLflow.

:func:`certify` runs :func:`jointopt.search.certify.certify_study` (the certificate is
kept in the Optuna study, where ``jointopt export --pick certified`` reads it) and, when
the config's tracking is on, logs it as a ``certify`` run nested under the study's parent
run: parameters (target, risk, method, calibration size and dataset hash), metrics (the
chosen trial's p-value, calibration accuracy and lower bound, one step per tested
candidate) and the whole certificate as ``certificate.json``; the parent run gets the tag
``jointopt.certified_trial``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.search.certify import CertifyResult, certify_study
from jointopt.search.plan import as_plan
from jointopt.search.study import load_study
from jointopt.safety.secrets import redact

if TYPE_CHECKING:
    from jointopt.backends.base import Backend
    from jointopt.search.config import StudyConfig
    from jointopt.search.plan import StudyPlan

__all__ = ["certify", "log_certificate"]

log = logging.getLogger(__name__)


def log_certificate(plan: "StudyPlan", certificate: Mapping[str, Any]) -> str:
    """Log ``certificate`` as a run nested under the study's MLflow parent run; its id."""
    from mlflow.entities import Metric, Param, RunTag

    from jointopt.tracking.mlflow import StudyTracker

    study = load_study(plan)
    tracker = StudyTracker.open(plan, study)
    client = tracker.client
    chosen = certificate.get("chosen_trial")
    run = client.create_run(tracker.experiment_id, run_name="certify", tags={
        "mlflow.parentRunId": tracker.parent_run_id, "jointopt.role": "certify",
        "jointopt.certified_trial": str(chosen)})
    run_id = run.info.run_id
    params = {k: certificate.get(k) for k in (
        "target", "risk", "method", "n_calibration", "dataset_hash", "calibration_fraction",
        "candidates", "bin_targets")}
    client.log_batch(run_id, params=[Param(k, redact(str(v))[:500])
                                     for k, v in params.items() if v is not None])
    metrics = []
    for step, test in enumerate(certificate.get("tested", ())):
        metrics += [Metric("p_value", float(test["p_value"]), 0, step),
                    Metric("calibration_accuracy", float(test["calibration_accuracy"]), 0,
                           step),
                    Metric("lower_bound", float(test["lower_bound"]), 0, step)]
        if test["trial"] == chosen:
            metrics += [Metric("certified_p_value", float(test["p_value"]), 0, 0),
                        Metric("certified_mean_tokens", float(test["mean_tokens"]), 0, 0),
                        Metric("certified_lower_bound", float(test["lower_bound"]), 0, 0)]
    metrics.append(Metric("certified", 0.0 if chosen is None else 1.0, 0, 0))
    client.log_batch(run_id, metrics=metrics)
    client.log_text(run_id, json.dumps(dict(certificate), indent=2), "certificate.json")
    client.set_terminated(run_id, status="FINISHED")
    client.log_batch(tracker.parent_run_id,
                     tags=[RunTag("jointopt.certified_trial", str(chosen))])
    # opening the tracker reopened the parent run; the study itself is finished
    client.set_terminated(tracker.parent_run_id, status="FINISHED")
    return run_id


def certify(
    config_or_plan: "StudyConfig | StudyPlan | str | Path",
    *,
    target: float | None,
    risk: float = 0.05,
    method: str = "auto",
    bin_targets: Mapping[str, float] | None = None,
    candidates: str = "front",
    backend: "Backend | None" = None,
    track: bool | None = None,
) -> CertifyResult:
    """Certify the cheapest policy of a finished study that reaches ``target`` accuracy
    with probability >= 1 - ``risk`` (Learn-then-Test on the calibration split; see
    :func:`jointopt.search.certify.certify_study` for the arguments), keep the
    certificate in the study and, when ``track`` (default: the config's
    ``tracking.enabled``), log it to MLflow.

    The guarantee assumes the calibration examples and the future inputs are
    exchangeable (drawn from the same distribution).
    """
    plan = as_plan(config_or_plan)
    result = certify_study(plan, target=target, risk=risk, method=method,
                           bin_targets=bin_targets, candidates=candidates,  # type: ignore[arg-type]
                           backend=backend)
    if track if track is not None else plan.config.tracking.enabled:
        run_id = log_certificate(plan, result.certificate)
        result = CertifyResult(certification=result.certification,
                               certificate={**result.certificate, "mlflow_run_id": run_id},
                               policies=result.policies)
    return result
