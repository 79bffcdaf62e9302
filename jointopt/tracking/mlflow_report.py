"""The study's report and Pareto front on its MLflow parent run: ``report.html`` (the
interactive report of :mod:`jointopt.tracking.report`) and ``pareto_front.json``, an MLflow
table artifact (shown as a table in the run's artifact view and readable with
``MlflowClient.load_table``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.safety.secrets import redact

if TYPE_CHECKING:
    import optuna

    from jointopt.search.plan import StudyPlan
    from jointopt.search.results import TrialSummary

__all__ = ["front_table", "log_report_and_front", "FRONT_TABLE"]

log = logging.getLogger(__name__)

#: Artifact file of the Pareto front table on the parent run.
FRONT_TABLE = "pareto_front.json"


def front_table(front: Sequence["TrialSummary"]) -> dict[str, list[Any]]:
    """The Pareto front as columns (one row per front policy), for ``log_table``."""
    columns: dict[str, list[Any]] = {k: [] for k in (
        "trial", "accuracy", "accuracy_low", "accuracy_high", "mean_tokens",
        "test_accuracy", "test_accuracy_low", "test_accuracy_high", "test_mean_tokens",
        "prompt", "strategy", "allocation", "model", "derived_from")}
    for t in front:
        dev = (t.dev or {}).get("accuracy")
        test = t.test or {}
        values = {
            "trial": t.number, "accuracy": t.accuracy, "mean_tokens": t.mean_tokens,
            "accuracy_low": dev.low if dev else None, "accuracy_high": dev.high if dev else None,
            "test_accuracy": test["accuracy"].value if test else None,
            "test_accuracy_low": test["accuracy"].low if test else None,
            "test_accuracy_high": test["accuracy"].high if test else None,
            "test_mean_tokens": test["mean_tokens"].value if test else None,
            "prompt": t.policy.prompt.id if t.policy else "",
            "strategy": t.policy.strategy_label if t.policy else "",
            "allocation": redact(t.policy.describe()) if t.policy else "",
            "model": t.policy.model if t.policy else "",
            "derived_from": t.derived_from,
        }
        for key, value in values.items():
            columns[key].append(round(value, 4) if isinstance(value, float) else value)
    return columns


def _log_table(client: Any, run_id: str, columns: dict[str, list[Any]], path: Path) -> None:
    """Log ``columns`` as an MLflow table artifact, replacing an earlier one (MLflow's own
    ``log_table`` appends rows to a table of the same name, which a rerun would repeat)."""
    import json

    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    names = list(columns)
    rows = [list(row) for row in zip(*columns.values())]
    path.write_text(json.dumps({"columns": names, "data": rows}), encoding="utf-8")
    client.log_artifact(run_id, str(path))
    tags = client.get_run(run_id).data.tags
    logged = json.loads(tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": path.name, "type": "table"}
    if entry not in logged:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, entry]))


def log_report_and_front(client: Any, run_id: str, plan: "StudyPlan | None",
                         study: "optuna.Study | None",
                         front: Sequence["TrialSummary"]) -> Path | None:
    """Log the front table, write the study report and log it; return the report's path
    (None when there is no study to report on). A report that cannot be written (plotly
    missing) is a warning: the study's results are kept either way."""
    if plan is not None:
        try:
            _log_table(client, run_id, front_table(front), plan.out_dir / FRONT_TABLE)
        except Exception as exc:  # noqa: BLE001 - the table is an extra view of pareto.csv
            log.warning("the Pareto front table was not logged to MLflow: %s", exc)
    if plan is None or study is None:
        return None
    from jointopt.errors import JointoptError
    from jointopt.tracking.report import study_report
    from jointopt.tracking.report_data import plan_settings

    try:
        path = study_report(study, plan.out_dir, settings=plan_settings(plan))
    except JointoptError as exc:
        log.warning("no study report: %s", exc)
        return None
    client.log_artifact(run_id, str(path))
    return path
