"""The runtime executes a policy over several models: one backend per model."""

from __future__ import annotations

import pytest

from jointopt.backends import ScriptedBackend
from jointopt.core.policy import Allocation, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.errors import ConfigError
from jointopt.serving.runtime import load_policy
from jointopt.tasks import make_task
from jointopt.testing import RecordingBackend
from jointopt.testing.tiers import large, small

TASK = make_task("reverse_words", levels=(1, 3), n_per_level=5, n_demos=3)
POLICY = Policy(
    model="small", prompt=PromptTemplate(id="p", user="{{ question }}"),
    bins={"all": Allocation("cascade", 0.8, 16, {"n": 3, "threshold": 1.0, "escalate_n": 3,
                                                 "escalate_to": "large"})})


def test_a_cascade_policy_runs_on_one_upstream_per_model_and_counts_both():
    ups = {"small": RecordingBackend(ScriptedBackend(small)),
           "large": RecordingBackend(ScriptedBackend(large))}
    runner = load_policy(POLICY, backend=ups, task=TASK)
    answers = runner.answer_batch([dict(e.inputs) for e in TASK.examples])
    escalated = [len(a.calls) == 2 for a in answers]
    assert any(escalated)
    assert sum(len(b) for b in ups["large"].batches) == sum(escalated)
    spent = sum(r.total_tokens for u in ups.values() for b in u.batches for r in b)
    assert sum(a.usage.total_tokens for a in answers) == spent
    right = sum(a.answer == TASK.canonical(e.target) for a, e in zip(answers, TASK.examples))
    assert right >= len(TASK.examples) // 2
    runner.close()  # the caller's backends stay open


def test_every_model_the_policy_calls_needs_a_backend():
    with pytest.raises(ConfigError) as info:
        load_policy(POLICY, backend={"small": ScriptedBackend(small)}, task=TASK)
    assert "large" in str(info.value)
    per_bin = Policy(model="small", prompt=POLICY.prompt, bins={
        "all": Allocation("single", 0.8, 16, model="large")})
    assert per_bin.models == ("small", "large")
    assert Policy.from_dict(per_bin.to_dict()) == per_bin
