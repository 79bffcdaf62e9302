"""Exporting a thinking policy: the policy file carries the spec, vllm_serve.yaml the
reasoning config vLLM's thinking_token_budget needs, the OpenAI presets both request
shapes (the engine's budget and two-phase forcing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jointopt.backends import ScriptedBackend
from jointopt.core.policy import Allocation, Policy
from jointopt.core.policy_file import load_policy_file
from jointopt.core.prompts import PromptTemplate
from jointopt.export.openai_presets import thinking_requests
from jointopt.export.policy import export_policy
from jointopt.export.vllm import reasoning_config
from jointopt.search.config import load_config
from jointopt.search.study import run_study
from jointopt.testing.thinking import thinking_responder

ROOT = Path(__file__).resolve().parents[2]


def _thinking_policy(engine="auto", **extra) -> Policy:
    return Policy(model="m", prompt=PromptTemplate(id="p", user="{{ question }}"),
                  bins={"all": Allocation("single", 0.7, 8,
                                          thinking={"budget": 64, "engine": engine, **extra})})


def test_reasoning_config_follows_the_spec_unless_the_study_gave_one():
    assert reasoning_config(_thinking_policy(), {}) == {
        "reasoning_start_str": "<think>", "reasoning_end_str": "</think>"}
    assert reasoning_config(_thinking_policy("forcing"), {}) is None
    assert reasoning_config(_thinking_policy(), {"reasoning_parser": "qwen3"}) is None
    plain = Policy(model="m", prompt=PromptTemplate(id="p", user="{{ question }}"),
                   bins={"all": Allocation("single")})
    assert reasoning_config(plain, {}) is None


def test_presets_hold_the_engine_request_and_both_forcing_requests():
    request = {"model": "m", "messages": [{"role": "user", "content": "{{question}}"}],
               "n": 3, "max_tokens": 8}
    alloc = _thinking_policy(answer_max_tokens=6).bins["all"]
    out = thinking_requests(alloc, request)
    engine = out["engine"]
    assert engine["extra_body"]["thinking_token_budget"] == 64
    assert engine["messages"][-1] == {"role": "assistant", "content": "<think>"}
    assert engine["max_tokens"] >= 64 + 6
    thought, answer = out["forcing"]["thought"], out["forcing"]["answer"]
    assert thought["max_tokens"] == 64 and thought["stop"] == ["</think>"] and thought["n"] == 3
    assert answer["max_tokens"] == 6 and answer["n"] == 1
    assert answer["messages"][-1]["content"].endswith("{{thought}}\n</think>\n\nFinal answer: ")
    assert all(r["extra_body"]["continue_final_message"] for r in (thought, answer, engine))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("thinking_export")
    data = yaml.safe_load((ROOT / "experiments/thinking_budget_scripted.yaml").read_text())
    data.update(output_dir=str(folder / "run"),
                model={"backend": "vllm", "model": "smollm2-135m-instruct", "seed": 0},
                search_space=str(ROOT / "search_spaces/thinking_budget.yaml"),
                optimizer={"n_trials": 8, "sampler": "random", "seed": 1})
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    run_study(config, backend=ScriptedBackend(thinking_responder))
    return config


def test_export_of_a_thinking_policy(study, tmp_path):
    exported = export_policy(study, pick="max_accuracy", out_dir=tmp_path,
                             register_prompt=False)
    policy = load_policy_file(tmp_path / "policy.yaml")
    thinking = {b: a.thinking for b, a in policy.bins.items()}
    assert set(thinking) == {"1", "2", "3", "4"} and all(thinking.values())
    serve_cfg = yaml.safe_load((tmp_path / "vllm_serve.yaml").read_text())
    largest = max(t.budget for t in thinking.values())
    if any(t.budget for t in thinking.values()):
        assert serve_cfg["reasoning-config"] == {"reasoning_start_str": "<think>",
                                                 "reasoning_end_str": "</think>"}
        assert serve_cfg["override-generation-config"]["max_new_tokens"] >= largest + 8
    presets = json.loads((tmp_path / "openai_presets.json").read_text())
    for name, alloc in policy.bins.items():
        entry = presets["bins"][name]
        assert ("thinking" in entry) == alloc.thinks
    assert exported.policy == policy
