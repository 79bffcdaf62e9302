"""A thinking policy served: the runtime runs the thinking phase, and the official openai
client gets answers through the proxy with reasoning tokens in ``usage``."""

from __future__ import annotations

import openai
import pytest

from jointopt.backends import ScriptedBackend
from jointopt.backends.openai import OpenAIBackend
from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.serving.proxy import ServerThread, create_app, create_engine_app
from jointopt.serving.runtime import load_policy, task_spec
from jointopt.tasks import make_task
from jointopt.testing import RecordingBackend
from jointopt.testing.thinking import solve_story, thinking_responder

pytestmark = pytest.mark.timeout(60)
TASK = make_task("word_problems", levels=(3,), n_per_level=4, n_demos=0)


def _policy(budget: int) -> Policy:
    return Policy(model="m", prompt=PromptTemplate(id="p", user="{{ question }}"),
                  difficulty=DifficultySpec(),
                  bins={"all": Allocation("single", 0.7, 8,
                                          thinking={"budget": budget, "engine": "auto"})},
                  metadata={"task": task_spec(TASK, 0)})


def test_runtime_reports_reasoning_tokens_and_answers_from_the_answer_part():
    runner = load_policy(_policy(128), backend=ScriptedBackend(thinking_responder))
    answers = runner.answer_batch([dict(e.inputs) for e in TASK.examples])
    right = sum(a.answer == str(solve_story(e.inputs["problem"])[0])
                for a, e in zip(answers, TASK.examples))
    assert right >= 3
    for answer in answers:
        usage = answer.usage
        assert 0 < usage.reasoning_tokens < usage.completion_tokens
        assert usage.to_dict()["completion_tokens_details"] == {
            "reasoning_tokens": usage.reasoning_tokens}
        assert len(answer.calls) == 2  # the thought, then the answer
    direct = load_policy(_policy(0), backend=ScriptedBackend(thinking_responder))
    usage = direct.answer_batch([dict(TASK.examples[0].inputs)])[0].usage
    assert usage.reasoning_tokens == 0 and "completion_tokens_details" not in usage.to_dict()


def test_openai_client_gets_answers_and_reasoning_usage_through_the_proxy():
    upstream_backend = RecordingBackend(ScriptedBackend(thinking_responder))
    with ServerThread(create_engine_app(upstream_backend, model_name="m")) as upstream:
        backend = OpenAIBackend(upstream.url, max_retries=0)
        runner = load_policy(_policy(128), backend=backend)
        try:
            with ServerThread(create_app(runner, model_name="thinking-policy")) as proxy:
                client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused",
                                       max_retries=0, timeout=20)
                example = TASK.examples[0]
                reply = client.chat.completions.create(
                    model="thinking-policy",
                    messages=[{"role": "user", "content": example.inputs["problem"]}])
        finally:
            backend.close()
    details = reply.usage.completion_tokens_details
    assert details is not None and 0 < details.reasoning_tokens < reply.usage.completion_tokens
    # two upstream calls: the thought (stopped at the end marker), the answer after it
    (thought,), (answer,) = upstream_backend.batches
    assert thought.request.stop == ("</think>",) and thought.request.continuation == "<think>\n"
    assert answer.request.continuation.endswith("</think>\n\nFinal answer: ")
    assert reply.usage.total_tokens == upstream_backend.total_tokens
    assert reply.choices[0].message.content
