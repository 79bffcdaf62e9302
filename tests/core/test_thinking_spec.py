"""Tests of the thinking spec of an allocation and its place in policy files."""

from __future__ import annotations

import pytest
import yaml

from jointopt.core.policy import Allocation, Policy
from jointopt.core.policy_file import load_policy_file, save_policy
from jointopt.core.prompts import PromptTemplate
from jointopt.core.thinking import ThinkingSpec
from jointopt.errors import ConfigError


def _policy(**bins) -> Policy:
    return Policy(model="m", prompt=PromptTemplate(id="p", user="{{ question }}"),
                  bins=bins or {"all": Allocation("single")})


def test_allocation_accepts_a_mapping_and_serialises_it():
    alloc = Allocation("majority", params={"n": 3}, thinking={"budget": 128, "min": 16})
    assert isinstance(alloc.thinking, ThinkingSpec)
    assert alloc.thinks and alloc.thinking.min == 16 and alloc.thinking.engine == "auto"
    assert alloc.to_dict()["thinking"]["budget"] == 128
    assert Allocation.from_dict(alloc.to_dict()) == alloc
    assert "thinking=128" in alloc.describe()


def test_budget_zero_and_no_spec_do_not_think():
    assert not Allocation("single").thinks
    zero = Allocation("single", thinking={"budget": 0})
    assert not zero.thinks and zero.thinking.budget == 0
    assert "thinking" not in Allocation("single").to_dict()  # old files stay as they were


@pytest.mark.parametrize("data, where", [
    ({"budget": -1}, "thinking.budget"),
    ({"budget": 10**9}, "thinking.budget"),
    ({"budget": True}, "thinking.budget"),
    ({"budget": 8, "min": 9}, "thinking.min"),
    ({"budget": 8, "engine": "vlm"}, "thinking.engine"),
    ({"budget": 8, "end": "  "}, "thinking.end"),
    ({"budget": 8, "answer_max_tokens": 0}, "thinking.answer_max_tokens"),
    ({"budget": 8, "min": 2, "continue_cue": ""}, "thinking.continue_cue"),
    ({"budgte": 8}, "thinking"),
    ({"min": 0}, "thinking"),
])
def test_spec_errors_name_the_field(data, where):
    with pytest.raises(ConfigError) as err:
        Allocation("single", thinking=data)
    assert where in str(err.value) and "fix:" in str(err.value)


def test_spec_stop_and_answer_cap():
    spec = ThinkingSpec(budget=4, end="\n</think>\n\n")
    assert spec.stop == "</think>"
    assert spec.answer_cap(32) == 32
    assert ThinkingSpec(budget=4, answer_max_tokens=8).answer_cap(32) == 8


def test_policy_file_round_trip_with_thinking(tmp_path):
    policy = _policy(all=Allocation("single", max_tokens=16,
                                    thinking={"budget": 256, "engine": "forcing",
                                              "answer_max_tokens": 12}))
    path = save_policy(policy, tmp_path / "policy.yaml")
    loaded = load_policy_file(path)
    assert loaded.bins["all"] == policy.bins["all"]
    assert loaded.bins["all"].thinking.answer_max_tokens == 12


def test_policy_file_without_thinking_still_loads(tmp_path):
    path = save_policy(_policy(), tmp_path / "policy.yaml")
    data = yaml.safe_load(path.read_text())
    assert "thinking" not in data["bins"]["all"] and data["schema_version"] == 1
    assert load_policy_file(path).bins["all"].thinking is None


def _write(tmp_path, thinking) -> object:
    data = _policy().to_dict()
    data["bins"]["all"]["thinking"] = thinking
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("thinking, needles", [
    ({"budget": -3}, ["bins.all.thinking.budget", "0 = none"]),
    ({"budget": 8, "engin": "vllm"}, ["unknown key 'engin'", "did you mean 'engine'"]),
    ({"budget": 8, "engine": "native"}, ["bins.all.thinking.engine", "auto, vllm or forcing"]),
    ({"budget": 8, "min": 9}, ["bins.all", "thinking.min", "between 0 and 8"]),
    ({"min": 2}, ["bins.all.thinking.budget", "missing"]),
])
def test_policy_file_errors_name_file_field_and_fix(tmp_path, thinking, needles):
    with pytest.raises(ConfigError) as err:
        load_policy_file(_write(tmp_path, thinking))
    text = str(err.value)
    assert "policy.yaml" in text
    for needle in needles:
        assert needle in text, text
