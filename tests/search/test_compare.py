"""Strategy curves (jointopt compare) on the scripted backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from jointopt.backends import ScriptedBackend
from jointopt.search.compare import compare_strategies
from jointopt.search.config import load_config
from jointopt.errors import ConfigError

from jointopt.testing import reverse_words_responder as reverse_responder

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path, **compare):
    section = {"prompt": "fewshot_nearest", "temperature": 0.7, "max_tokens": 16,
               "curves": {"single": [{}], "majority": [{"n": 2}, {"n": 4}],
                          "revision": [{"rounds": 2}]}}
    section.update(compare)
    return load_config(ROOT / "experiments/strategies_cpu.yaml", {
        "output_dir": str(tmp_path / "run"), "compare": section,
        "task": {"builtin": {"family": "reverse_words", "n_per_level": 2}}})


def test_curves_are_scored_logged_and_plotted(tmp_path):
    result = compare_strategies(_config(tmp_path), backend=ScriptedBackend(reverse_responder))
    assert [p.strategy for p in result.points] == ["single", "majority", "majority", "revision"]
    majority = result.curve("majority")
    assert majority[0].mean_tokens.value < majority[1].mean_tokens.value
    for p in result.points:
        assert p.accuracy.low <= p.accuracy.value <= p.accuracy.high
    out = tmp_path / "run" / "compare"
    assert (out / "strategy_curves.png").stat().st_size > 1000
    assert len((out / "curves.csv").read_text().splitlines()) == 5

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("strategies_cpu")
    runs = client.search_runs([exp.experiment_id])
    curves = {r.data.params["strategy"]: r for r in runs
              if r.data.tags.get("jointopt.role") == "curve"}
    assert set(curves) == {"single", "majority", "revision"}
    history = client.get_metric_history(curves["majority"].info.run_id, "mean_tokens")
    assert [m.step for m in history] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
    assert "strategy_curves.png" in artifacts


def test_bad_curve_parameters_fail_before_compute(tmp_path):
    backend = ScriptedBackend(reverse_responder)
    with pytest.raises(ConfigError, match=r"compare.curves.mcts\[0\]"):
        compare_strategies(_config(tmp_path, curves={"mcts": [{"branching": 0}]}),
                           backend=backend)
    with pytest.raises(ConfigError, match="compare.prompt"):
        compare_strategies(_config(tmp_path, prompt="nope"), backend=backend)
    assert backend.calls == 0
