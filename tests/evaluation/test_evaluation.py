"""Evaluation: batching, accounting, per-bin allocation."""

from __future__ import annotations

from jointopt.backends import ScriptedBackend
from jointopt.evaluation.evaluate import evaluate
from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.testing import RecordingBackend, noisy_responder, toy_task

PROMPT = PromptTemplate(id="p", user="{{ question }}")


def _policy(strategy="majority", **params):
    return Policy(model="scripted", prompt=PROMPT,
                  bins={"all": Allocation(strategy, 0.7, 16, params)})


def test_a_trial_is_one_batched_engine_call_per_round():
    task = toy_task(9)
    backend = RecordingBackend(ScriptedBackend(noisy_responder()))
    result = evaluate(_policy(n=4), task, backend)
    assert len(backend.batches) == 1
    assert len(backend.batches[0]) == len(task.examples)
    assert all(r.request.n == 4 for r in backend.batches[0])
    assert len(result.records) == 9


def test_tokens_are_prompt_plus_completion_from_the_engine():
    task = toy_task(5)
    backend = RecordingBackend(ScriptedBackend(noisy_responder()))
    result = evaluate(_policy(n=3), task, backend)
    assert sum(r.tokens for r in result.records) == backend.total_tokens
    assert result.mean_tokens == backend.total_tokens / 5
    assert result.mean_prompt_tokens + result.mean_completion_tokens == result.mean_tokens


def test_accuracy_matches_the_checker():
    task = toy_task(6)
    perfect = evaluate(_policy("single"), task, ScriptedBackend(noisy_responder(1.0)))
    assert perfect.accuracy == 1.0
    wrong = evaluate(_policy("single"), task,
                     ScriptedBackend(lambda r, i, rng: "I think 1000"))
    assert wrong.accuracy == 0.0


def test_evaluation_is_deterministic_for_a_seed():
    task = toy_task(6)
    a = evaluate(_policy(n=3), task, ScriptedBackend(noisy_responder()), seed=7)
    b = evaluate(_policy(n=3), task, ScriptedBackend(noisy_responder()), seed=7)
    assert a.records == b.records


def test_label_bins_get_their_own_allocation():
    task = toy_task(6)  # difficulty labels 1, 2, 3
    policy = Policy(
        model="scripted", prompt=PROMPT, difficulty=DifficultySpec(source="label"),
        bins={"all": Allocation("single"), "3": Allocation("majority", params={"n": 5})},
    )
    backend = RecordingBackend(ScriptedBackend(noisy_responder()))
    result = evaluate(policy, task, backend)
    by_bin = {r.example_id: (r.bin, r.completions) for r in result.records}
    for ex in task.examples:
        expected = ("3", 5) if ex.difficulty == "3" else ("all", 1)
        assert by_bin[ex.id] == expected


def test_policy_round_trips_through_yaml():
    import yaml

    policy = _policy(n=3)
    assert Policy.from_dict(yaml.safe_load(policy.to_yaml())) == policy
