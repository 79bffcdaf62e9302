"""Pre-flight of thinking budgets against the model's context (jointopt.search.thinking_fit):
refused before any compute, naming the bin, the budget, max_model_len and the fix."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from jointopt.cli.app import main
from jointopt.core.policy import Allocation, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.core.thinking import ThinkingSpec
from jointopt.errors import ConfigError
from jointopt.search.config import load_config
from jointopt.search.plan import plan_study
from jointopt.search.thinking_fit import (
    CHARS_PER_TOKEN, TEMPLATE_TOKENS, check_policy_fits, context_limit, longest_prompt,
    token_counter)
from jointopt.tasks import make_task

ROOT = Path(__file__).resolve().parents[2]
SPACE = {
    "prompts": [{"id": "direct", "system": "Reply with the final number only.",
                 "user": "{{ question }}"}],
    "strategies": {"single": {}},
    "max_tokens": {"choices": [8, 16]},
    "thinking_budget": {"choices": [0, 64, 512]},
    "thinking": {"engine": "forcing", "answer_cue": "Final answer: "},
    "difficulty": {"source": "label"},
}


def _config(tmp_path: Path, model: dict, space: dict | None = None) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space or SPACE))
    config = {
        "name": "t", "output_dir": str(tmp_path / "out"),
        "model": {"backend": "scripted", "model": "scripted", **model},
        "task": {"builtin": {"family": "word_problems", "levels": [1, 2],
                             "n_per_level": 4, "seed": 0}},
        "search_space": "space.yaml", "tracking": {"enabled": False},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _estimate(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def test_a_budget_that_overflows_the_context_is_refused_before_any_compute(tmp_path):
    config = load_config(_config(tmp_path, {"max_model_len": 300}))
    with pytest.raises(ConfigError) as info:
        plan_study(config)
    error = info.value
    text = str(error)
    assert error.where == "space.yaml: thinking_budget" or error.where.endswith(
        "space.yaml: thinking_budget")
    assert error.value == 512
    assert "bin '1' (and every other bin)" in text and "model.max_model_len = 300" in text
    assert "max_tokens 16" in text and "characters/4" in text
    task = make_task("word_problems", levels=[1, 2], n_per_level=4, seed=0)
    template = PromptTemplate(id="direct", system="Reply with the final number only.",
                              user="{{ question }}")
    prompt, _ = longest_prompt([template], task, _estimate)
    spec = ThinkingSpec(budget=512, engine="forcing", answer_cue="Final answer: ")
    need = spec.context_tokens(prompt, 16, _estimate)
    assert f"= {need} tokens" in text
    assert f"lower the thinking budget to at most {300 - (need - 512)}" in error.fix
    assert f"raise model.max_model_len to at least {need}" in error.fix
    assert not (tmp_path / "out").exists()


def test_budgets_that_fit_pass_and_the_largest_is_the_one_checked(tmp_path):
    space = {**SPACE, "thinking_budget": {"choices": [0, 64, 128]}}
    plan_study(load_config(_config(tmp_path, {"max_model_len": 300}, space)))
    ranged = {**SPACE, "thinking_budget": {"low": 0, "high": 400}}
    with pytest.raises(ConfigError, match="thinking budget 400 "):
        plan_study(load_config(_config(tmp_path, {"max_model_len": 300}, ranged)))


def test_a_minimum_thinking_length_counts_its_continue_cues(tmp_path):
    task = make_task("word_problems", levels=[1], n_per_level=2, seed=0)
    plain = ThinkingSpec(budget=64)
    extended = ThinkingSpec(budget=64, min=32, continue_cue="\nWait, let me check,")
    assert (extended.context_tokens(10, 8, _estimate, extensions=4)
            == plain.context_tokens(10, 8, _estimate) + 4 * _estimate(extended.continue_cue))
    assert ThinkingSpec(budget=0).context_tokens(10, 8, _estimate) == 18
    policy = Policy(model="m", prompt=PromptTemplate(id="p", user="{{ question }}"),
                    bins={"all": Allocation("single", max_tokens=8,
                                            thinking=extended.to_dict())})
    need = extended.context_tokens(longest_prompt([policy.prompt], task, _estimate)[0], 8,
                                   _estimate, extensions=4)
    check_policy_fits(policy, task, need)
    with pytest.raises(ConfigError) as info:
        check_policy_fits(policy, task, need - 1, source="policy.yaml")
    assert info.value.where == "policy.yaml: bins.all.thinking.budget"
    assert "bin 'all'" in str(info.value)


def test_a_server_without_a_stated_context_is_not_checked(tmp_path):
    plan_study(load_config(_config(tmp_path, {})))  # scripted, no max_model_len given


def test_the_models_own_context_and_tokenizer_are_used_when_at_hand(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    assert context_limit(2048, folder) == (2048, "model.max_model_len = 2048")
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    limit, text = context_limit(2048, folder)
    assert limit == 512 and "max_position_embeddings = 512" in text
    assert context_limit(256, folder)[0] == 256

    count, how = token_counter(folder)
    assert how == f"estimated as characters/{CHARS_PER_TOKEN}" and count("abcdefgh") == 2
    tokenizers = pytest.importorskip("tokenizers")  # comes with transformers (vllm extra)
    Tokenizer, models, pre_tokenizers = (tokenizers.Tokenizer, tokenizers.models,
                                         tokenizers.pre_tokenizers)
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "seven": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    count, how = token_counter(folder)
    assert how == "counted with tokenizer.json"
    assert count("six times seven is") == 4 and count("") == 0
    task = make_task("word_problems", levels=[1], n_per_level=2, seed=0)
    template = PromptTemplate(id="p", user="{{ question }}")
    tokens, _ = longest_prompt([template], task, count)
    longest = max(len(str(ex.inputs["question"]).split()) for ex in task.examples)
    assert tokens >= longest + TEMPLATE_TOKENS


def test_validate_shows_it_before_any_engine_starts(tmp_path, capsys):
    path = _config(tmp_path, {"max_model_len": 300})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "thinking budget 512" in err and "model.max_model_len" in err
    assert "Traceback" not in err


def test_a_served_policy_is_checked_before_its_engine_starts():
    from jointopt.serving.runtime import load_policy

    task = make_task("word_problems", levels=[1], n_per_level=2, seed=0)
    served = dataclasses.replace(task, examples=())  # a served policy: inputs come later
    policy = Policy(model="smollm2-135m-instruct",
                    prompt=PromptTemplate(id="p", user="{{ question }}"),
                    bins={"all": Allocation("single", max_tokens=8,
                                            thinking={"budget": 256})})
    with pytest.raises(ConfigError) as info:
        load_policy(policy, backend="vllm", task=served, backend_kwargs={"max_model_len": 128})
    assert info.value.where == "policy: bins.all.thinking.budget"
    assert "model.max_model_len = 128" in str(info.value)
    assert "prompt (not known here)" in str(info.value)
