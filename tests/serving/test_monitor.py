"""The serving monitor (jointopt.serving.monitor) and /metrics text, without a network."""

from __future__ import annotations

import re

import pytest

from jointopt.backends import ScriptedBackend
from jointopt.core.policy import Allocation, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.errors import ConfigError, DataError
from jointopt.serving.monitor import MonitorSettings, PolicyMonitor, monitor_for
from jointopt.serving.runtime import load_policy, task_spec
from jointopt.testing import noisy_responder, toy_task

LINE = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+-]+$')


def _runner(prompt_id: str = "toy", certificate=None):
    task = toy_task()
    metadata = {"task": task_spec(task, 0)}
    if certificate:
        metadata["certificate"] = certificate
    policy = Policy(model="m", prompt=PromptTemplate(id=prompt_id, user="{{ question }}"),
                    bins={"all": Allocation("single", 0.7, 16)}, metadata=metadata)
    return load_policy(policy, backend=ScriptedBackend(noisy_responder(0.7)))


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="violation action"):
        MonitorSettings(action="panic")
    with pytest.raises(ConfigError, match="target"):
        MonitorSettings(target=1.2)
    with pytest.raises(ConfigError, match="max_responses"):
        MonitorSettings(max_responses=0)


def test_feedback_needs_one_label_and_a_known_id():
    runner = _runner()
    monitor = monitor_for(runner)
    answer = runner.answer({"question": "What is 1 + 1?"})
    monitor.record("r1", runner, answer)
    with pytest.raises(DataError, match="exactly one"):
        monitor.feedback("r1")
    with pytest.raises(DataError, match="exactly one"):
        monitor.feedback("r1", correct=True, reference="2")
    with pytest.raises(DataError, match="unknown response id"):
        monitor.feedback("nope", correct=True)
    out = monitor.feedback("r1", reference="2")
    assert out["correct"] == (answer.answer == "2") and out["event"] is None
    with pytest.raises(DataError, match="unknown response id"):
        monitor.feedback("r1", correct=True)  # labelled once


def test_without_a_certificate_feedback_is_tracked_not_enforced():
    runner = _runner()
    monitor = monitor_for(runner)
    assert monitor.target is None
    answer = runner.answer({"question": "What is 1 + 1?"})
    for i in range(30):
        monitor.record(f"r{i}", runner, answer)
        assert monitor.feedback(f"r{i}", correct=False)["event"] is None
    snap = monitor.snapshot()
    assert snap["policies"][0]["wrong"] == 30 and snap["policies"][0]["accuracy_upper"] < 0.2
    text = monitor.metrics_text()
    assert "jointopt_accuracy_target" not in text
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or LINE.match(line), \
            line


def test_switch_then_alert_when_no_safer_policy_is_left():
    safer, last = _runner("safer"), _runner("last")
    monitor = PolicyMonitor([_runner("cheap"), safer, last], ["1", "2", "3"],
                            MonitorSettings(target=0.9), risk=0.05)
    answer = safer.answer({"question": "What is 1 + 1?"})
    events = []
    for i in range(30):
        runner = monitor.active_runner
        monitor.record(f"r{i}", runner, answer)
        events.append(monitor.feedback(f"r{i}", correct=False)["event"])
    assert events.count("switched") == 2 and "alert" in events
    assert monitor.active_name == "3" and monitor.snapshot()["alert"] is True
    text = monitor.metrics_text()
    assert 'jointopt_active_policy{policy="3",prompt="last"} 1' in text
    assert "jointopt_policy_switches_total 2" in text
    assert "jointopt_accuracy_target 0.9" in text


def test_old_responses_are_forgotten():
    runner = _runner()
    monitor = monitor_for(runner, MonitorSettings(max_responses=2))
    answer = runner.answer({"question": "What is 1 + 1?"})
    for name in ("a", "b", "c"):
        monitor.record(name, runner, answer)
    with pytest.raises(DataError, match="forgotten"):
        monitor.feedback("a", correct=True)
    assert monitor.feedback("c", correct=True)["correct"] is True
    assert monitor.snapshot()["policies"][0]["requests"] == 3
