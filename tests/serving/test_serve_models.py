"""A cascade policy exported to a file and served against two upstreams, one per model."""

from __future__ import annotations

import httpx
import openai
import pytest

from jointopt.backends import ScriptedBackend
from jointopt.cli.export import upstream_arg
from jointopt.core.policy import Allocation, Policy
from jointopt.core.policy_file import load_policy_file, save_policy
from jointopt.core.prompts import PromptTemplate
from jointopt.core.task_spec import task_spec
from jointopt.errors import ConfigError
from jointopt.serving.proxy import ServerThread, _upstream_runner, create_app, create_engine_app
from jointopt.tasks import make_task
from jointopt.testing import RecordingBackend
from jointopt.testing.tiers import large, small

TASK = make_task("reverse_words", levels=(3,), n_per_level=4, n_demos=3)


def test_a_cascade_policy_file_is_served_against_one_upstream_per_model(tmp_path):
    policy = Policy(
        model="small", prompt=PromptTemplate(id="p", user="{{ question }}"),
        bins={"all": Allocation("cascade", 0.8, 16, {
            "n": 3, "threshold": 1.0, "escalate_n": 3, "escalate_to": "large"})},
        metadata={"task": task_spec(TASK, 0)})
    path = save_policy(policy, tmp_path / "policy.yaml")
    assert load_policy_file(path).bins["all"].params["escalate_to"] == "large"
    engines = {"small": RecordingBackend(ScriptedBackend(small)),
               "large": RecordingBackend(ScriptedBackend(large))}
    with ServerThread(create_engine_app(engines["small"], "small")) as up_small, \
            ServerThread(create_engine_app(engines["large"], "large")) as up_large:
        runner, backend = _upstream_runner(
            path, (), {"small": up_small.url, "large": up_large.url}, None, max_retries=0)
        try:
            with ServerThread(create_app(runner, model_name="tiers")) as proxy:
                client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
                usages = []
                for example in TASK.examples:
                    reply = client.chat.completions.create(model="tiers", messages=[
                        {"role": "user", "content": example.inputs["question"]}])
                    usages.append(reply.usage.total_tokens)
                health = httpx.get(proxy.url + "/health", timeout=10)
        finally:
            backend.close()
    assert health.status_code == 200 and len(health.json()["upstream"]) == 2
    assert engines["small"].batches and engines["large"].batches  # long lists escalate
    spent = sum(r.total_tokens for e in engines.values() for b in e.batches for r in b)
    assert sum(usages) == spent


def test_upstream_flags_name_models_all_or_none():
    assert upstream_arg(["http://a/v1"]) == "http://a/v1"
    assert upstream_arg(["http://a/v1", "http://b/v1"]) == ["http://a/v1", "http://b/v1"]
    assert upstream_arg(["small=http://a/v1", "large=http://b/v1", "large=http://c/v1"]) == {
        "small": ["http://a/v1"], "large": ["http://b/v1", "http://c/v1"]}
    with pytest.raises(ConfigError, match="MODEL=URL"):
        upstream_arg(["small=http://a/v1", "http://b/v1"])
