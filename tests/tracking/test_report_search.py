"""The report and MLflow show how a racing study's trials came about: derived trials
(free variants), screened and raced-out settings (a scripted study)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest

from jointopt.search.config import load_config
from jointopt.search.study import run_study
from jointopt.testing import scripted_backend

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def racing_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("racing_report") / "run"
    config = load_config(ROOT / "experiments/quickstart.yaml", {
        "output_dir": str(out), "optimizer": {"n_trials": 4, "racing": {"enabled": True}}})
    result = run_study(config, backend=scripted_backend(
        engine_kwargs={"responder": "reverse_words"}))
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    return result, study, out


def _page_data(path: Path) -> dict:
    html = path.read_text(encoding="utf-8")
    found = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html,
                      re.S)
    return json.loads(found.group(1))


def test_the_report_counts_and_marks_derived_screened_and_raced_trials(racing_run):
    result, study, out = racing_run
    data = _page_data(out / "report.html")
    trials = study.get_trials(deepcopy=False)
    screened = [t for t in trials if "screened" in t.user_attrs]
    derived = [t for t in result.trials if t.derived_from is not None]
    assert screened and derived
    search = data["search"]
    assert search["screened"] == len(screened)
    assert search["derived"] == len(derived)
    assert search["proposed"] == len(result.proposed)
    assert search["raced_out"] == sum("raced_out" in t.user_attrs for t in trials)
    rows = {t["n"]: t for t in data["trials"]}
    for t in derived:
        assert rows[t.number]["derived_from"] == t.derived_from
        assert rows[t.derived_from]["derived_from"] is None  # its parent was proposed
    assert "derived from trial" in (ROOT / "jointopt/tracking/report_page.js").read_text()


def test_mlflow_shows_derived_counts_and_screened_runs_as_finished(racing_run):
    result, study, out = racing_run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    screened = [t for t in by_number.values() if "screened" in t.user_attrs]
    for t in screened[:3]:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["jointopt.outcome"] == "screened"
        assert run.data.metrics["examples"] == t.user_attrs["screened"]["examples"]
    parents = [t for t in result.proposed if by_number[t.number].user_attrs.get("derived_trials")]
    assert parents
    run = client.get_run(by_number[parents[0].number].user_attrs["mlflow_run_id"])
    assert run.data.metrics["derived_trials"] == by_number[parents[0].number].user_attrs[
        "derived_trials"]
    table = json.loads((out / "pareto_front.json").read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["derived_from"] for r in rows] == [t.derived_from for t in result.pareto]
