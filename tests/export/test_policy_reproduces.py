"""A policy loaded from its exported file reproduces the study's held-out accuracy
within the interval recorded in the file."""

from __future__ import annotations

from pathlib import Path

from jointopt.backends import CachedBackend, SampleStore, ScriptedBackend
from jointopt.search.config import load_config
from jointopt.export.policy import export_policy
from jointopt.core.policy_file import load_policy_file
from jointopt.serving.runtime import load_policy
from jointopt.search.plan import plan_study
from jointopt.search.study import run_study

from jointopt.testing import reverse_words_responder as reverse_responder

ROOT = Path(__file__).resolve().parents[2]


def test_exported_policy_reproduces_the_test_accuracy(tmp_path):
    config = load_config(ROOT / "experiments/quickstart.yaml", {
        "output_dir": str(tmp_path / "run"), "optimizer": {"n_trials": 10},
        "tracking": {"enabled": False}, "validation": {"test_fraction": 0.4}})
    run_study(config, backend=ScriptedBackend(reverse_responder))
    exported = export_policy(config, pick="max_accuracy", out_dir=tmp_path / "out",
                             register_prompt=False)
    recorded = load_policy_file(exported.files["policy"]).metadata["metrics"]["test"]
    low, high = recorded["accuracy"]["low"], recorded["accuracy"]["high"]
    assert low <= recorded["accuracy"]["estimate"] <= high

    plan = plan_study(config)
    store = SampleStore(tmp_path / "run" / "samples.sqlite")
    backend = CachedBackend(ScriptedBackend(reverse_responder), store)
    runner = load_policy(exported.files["policy"], backend=backend)
    result = runner.evaluate(plan.test_task)
    assert len(result.records) == recorded["n_examples"]
    assert low <= result.accuracy <= high, (result.accuracy, recorded)
