"""Every built-in export target passes the Exporter contract (offline: a planned study, no run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jointopt._registry import EXPORTERS
from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.core.task_spec import task_spec
from jointopt.export.base import ExportContext
from jointopt.search.config import load_config
from jointopt.search.plan import plan_study
from jointopt.testing import ExporterContract

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan")
    config = {
        "name": "contract", "output_dir": str(folder / "run"),
        "model": {"backend": "vllm", "model": "smollm2-135m-instruct", "seed": 0},
        "task": {"builtin": {"family": "reverse_words", "levels": [1, 2], "n_per_level": 3,
                             "seed": 0, "n_demos": 4}},
        "search_space": str(ROOT / "search_spaces" / "quickstart.yaml"),
        "optimizer": {"n_trials": 1, "sampler": "random", "seed": 1},
        "tracking": {"enabled": False},
    }
    path = folder / "contract.yaml"
    path.write_text(yaml.safe_dump(config))
    return plan_study(load_config(path))


class TestBuiltinExporters(ExporterContract):
    @pytest.fixture(params=EXPORTERS.names())
    def exporter(self, request):
        return EXPORTERS.create(request.param)

    @pytest.fixture(params=[False, True], ids=["gpu", "cpu"])
    def context(self, request, plan, tmp_path):
        prompt = PromptTemplate(id="q", user="Reverse: {{ question }}", system="Be brief.",
                                shots=2)
        policy = Policy(
            model="smollm2-135m-instruct", prompt=prompt,
            difficulty=DifficultySpec(source="label", bins=("1", "2"), default_bin="1"),
            bins={"1": Allocation("single", temperature=0.0, max_tokens=16),
                  "2": Allocation("majority", temperature=0.7, max_tokens=32,
                                  params={"n": 3})},
            metadata={"task": task_spec(plan.task, prompt),
                      "serving": {"served_model_name": "smollm2-135m-instruct"}})
        return ExportContext(policy=policy, plan=plan, task=plan.task,
                             out_dir=tmp_path / "out", served_model_name="smollm2-135m-instruct",
                             model_path="/models/smollm2", on_cpu=request.param)


def test_registry_names_every_built_in_target():
    assert EXPORTERS.names() == ["policy", "vllm", "openai_presets", "dspy"]
    for name in EXPORTERS.names():
        assert EXPORTERS.load(name).name == name
