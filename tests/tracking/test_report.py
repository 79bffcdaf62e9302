"""The study report: its data, the HTML page, the MLflow artifacts and ``jointopt report``
(a scripted study; tests/tracking/test_browser.py opens the page in a browser)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jointopt.search.config import load_config
from jointopt.search.study import run_study
from jointopt.testing import scripted_backend

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    config = load_config(ROOT / "experiments/quickstart.yaml", {
        "output_dir": str(out), "optimizer": {"n_trials": 10},
        "validation": {"test_fraction": 0.3}})
    result = run_study(config, backend=scripted_backend(
        engine_kwargs={"responder": "reverse_words"}))
    return config, result, out


def _page_data(path: Path) -> dict:
    html = path.read_text(encoding="utf-8")
    found = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html,
                      re.S)
    assert found, "the page embeds its data"
    return json.loads(found.group(1))


def test_report_is_written_with_the_whole_study(study_run):
    config, result, out = study_run
    report = out / "report.html"
    assert report.is_file()
    size = report.stat().st_size
    assert size < 5e6, f"report of {size} bytes"
    html = report.read_text(encoding="utf-8")
    assert not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)=", html), \
        "the page loads nothing from elsewhere"
    data = _page_data(report)
    assert [t["n"] for t in data["trials"]] == sorted(t.number for t in result.trials)
    assert data["front"] == [t.number for t in result.pareto]
    assert {t["n"] for t in data["trials"] if t["front"]} == set(data["front"])
    # every trial's whole policy is there, its prompt text once per distinct prompt
    for t in result.trials:
        policy = data["policies"][str(t.number)]
        assert data["prompts"][policy["prompt"]]["user"] == t.policy.prompt.user
        assert policy["bins"] == {k: v.to_dict() for k, v in t.policy.bins.items()}
    assert len(data["prompts"]) == len({t.policy.prompt.id for t in result.trials})
    # dev intervals for every trial, held-out scores for the front
    by_number = {t["n"]: t for t in data["trials"]}
    for t in result.pareto:
        row = by_number[t.number]
        assert row["dev_acc"]["low"] <= row["acc"] <= row["dev_acc"]["high"]
        assert row["test_acc"]["value"] == pytest.approx(t.test["accuracy"].value)
    totals = data["tokens"]["totals"]
    assert totals["generated"] == sum(t.generated for t in result.proposed)
    assert totals["cached"] == sum(t.cached for t in result.proposed)
    assert totals["engine_tokens"] == sum(t.tokens_generated for t in result.proposed)
    assert totals["trials"] == len(result.proposed) < len(result.trials)  # derived drew nothing
    assert data["settings"]["config"]["optimizer"]["n_trials"] == 10
    assert data["settings"]["test_examples"] > 0


def test_parent_run_has_report_and_front_table(study_run):
    _, result, out = study_run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
    assert {"report.html", "pareto_front.json"} <= artifacts
    table = json.loads((out / "pareto_front.json").read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["trial"] for r in rows] == [t.number for t in result.pareto]
    assert all(r["test_accuracy"] is not None for r in rows)
    tag = json.loads(client.get_run(result.mlflow_run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "pareto_front.json", "type": "table"} in tag


def test_report_command_from_folder_and_from_config(study_run, tmp_path, capsys):
    from jointopt.cli.app import main

    config, result, out = study_run
    first = tmp_path / "from_dir.html"
    assert main(["report", str(out), "--out", str(first)]) == 0
    assert "report:" in capsys.readouterr().out
    assert _page_data(first)["front"] == [t.number for t in result.pareto]
    second = tmp_path / "from_config.html"
    assert main(["report", str(ROOT / "experiments/quickstart.yaml"), "--output-dir", str(out),
                 "--out", str(second)]) == 0
    assert _page_data(second)["study"] == result.study_name


def test_report_command_names_a_missing_folder(tmp_path, capsys):
    from jointopt.cli.app import main

    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no such study folder" in err and "fix:" in err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "--storage" in capsys.readouterr().err


def test_objectives_are_named_for_optuna_dashboard(study_run):
    import optuna

    _, result, out = study_run
    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{out}/optuna.db")
    assert study.metric_names == ["accuracy", "mean_tokens"]
    trial = study.best_trials[0]
    for key, value in trial.user_attrs.items():  # what the dashboard shows, as JSON
        json.dumps(value)


def test_token_budgets_are_round_and_increasing():
    from jointopt.tracking.report_data import best_at_budgets, token_budgets

    assert token_budgets(111) == [50, 100, 200]
    assert token_budgets(21) == [10, 20, 50]
    assert token_budgets(0) == []
    points = [(0.5, 20.0), (0.7, 90.0), (0.9, 150.0)]
    assert best_at_budgets(points, [10, 100, 200]) == [(10, None), (100, 0.7), (200, 0.9)]


def test_report_shows_the_difficulty_report_and_survives_an_empty_study(study_run, tmp_path):
    import optuna

    from jointopt.tracking.report import study_report
    from jointopt.tracking.report_data import collect_report

    _, result, out = study_run
    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{out}/optuna.db")
    (tmp_path / "difficulty_report.json").write_text(json.dumps(
        {"dev": {"n": 12, "exact": 0.5, "within_one": 0.9, "spearman": 0.4}}))
    data = collect_report(study, out_dir=tmp_path)
    assert data["difficulty"]["dev"]["exact"] == 0.5
    assert collect_report(study, out_dir=out)["difficulty"] is None  # no probe/predictor bins

    empty = optuna.create_study(directions=["maximize", "minimize"],
                                storage=f"sqlite:///{tmp_path}/empty.db", study_name="empty")
    page = study_report(empty, tmp_path / "empty")
    data = _page_data(page)
    assert data["trials"] == [] and data["front"] == [] and data["tokens"]["totals"]["trials"] == 0


def test_prompt_text_cannot_break_out_of_the_page(study_run):
    import optuna

    from jointopt.tracking.report import render_report
    from jointopt.tracking.report_data import collect_report

    _, result, out = study_run
    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{out}/optuna.db")
    data = collect_report(study, out_dir=out)
    hostile = "</script><script>alert(1)</script><!-- <script>"
    next(iter(data["prompts"].values()))["user"] = hostile
    html = render_report(data)
    assert html.count("</script>") == 3 and hostile not in html
    found = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html,
                      re.S)
    assert next(iter(json.loads(found.group(1))["prompts"].values()))["user"] == hostile
