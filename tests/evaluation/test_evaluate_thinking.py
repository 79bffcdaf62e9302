"""Evaluation of policies whose bins think: accounting, pools, the engine choice."""

from __future__ import annotations

import pytest

from jointopt.backends import ScriptedBackend
from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.errors import StrategyError
from jointopt.evaluation.evaluate import evaluate
from jointopt.testing import RecordingBackend, noisy_responder, toy_task

PROMPT = PromptTemplate(id="p", user="{{ question }}")


def _policy(thinking) -> Policy:
    return Policy(model="scripted", prompt=PROMPT, difficulty=DifficultySpec(source="label"),
                  bins={"all": Allocation("majority", params={"n": 3}),
                        "3": Allocation("majority", params={"n": 3}, thinking=thinking)})


def test_thinking_bins_count_every_phase_and_report_thinking_tokens():
    backend = RecordingBackend(ScriptedBackend(noisy_responder()))
    result = evaluate(_policy({"budget": 5, "engine": "forcing"}), toy_task(6), backend)
    assert sum(r.tokens for r in result.records) == backend.total_tokens
    thinking = {r.bin: r.thinking_tokens for r in result.records}
    assert thinking["all"] == 0 and 0 < thinking["3"] <= 3 * 5
    hard = [r for r in result.records if r.bin == "3"]
    # one thought request (n=3), one answer request per distinct thought
    assert all(2 <= r.engine_calls <= 4 and r.completions == 6 for r in hard)
    assert len(backend.batches) == 2  # the thoughts ride with the other bins' round
    assert result.mean_thinking_tokens == sum(r.thinking_tokens for r in result.records) / 6


def test_thinking_bins_are_run_not_scored_from_a_pool():
    result = evaluate(_policy({"budget": 5}), toy_task(6),
                      ScriptedBackend(noisy_responder()), pool_size=6)
    assert {r.bin: r.pooled for r in result.records} == {"all": True, "3": False}


def test_budget_zero_is_the_plain_allocation():
    plain = evaluate(_policy(None), toy_task(6), ScriptedBackend(noisy_responder()))
    zero = evaluate(_policy({"budget": 0}), toy_task(6), ScriptedBackend(noisy_responder()))
    assert plain.records == zero.records


def test_engine_vllm_without_a_reasoning_engine_fails_before_any_compute():
    backend = ScriptedBackend(noisy_responder())
    with pytest.raises(StrategyError) as err:
        evaluate(_policy({"budget": 5, "engine": "vllm"}), toy_task(6), backend)
    assert "bins.3.thinking.engine" in str(err.value) and backend.calls == 0
