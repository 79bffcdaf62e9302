"""Tests of jointopt.backends.openai_thinking: vLLM's ``thinking_token_budget`` through an
OpenAI-compatible server, the thought read back (apart or inline), the thinking tokens
counted, and the fallback to two-phase forcing against a server that refuses the field.

Offline: a scripted server (httpx.MockTransport) that answers as vLLM's OpenAI server does
with a reasoning config: the budget cuts the thought and forces the end marker.
"""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from jointopt.backends import ScriptedBackend
from jointopt.backends.openai import OpenAIBackend
from jointopt.core.generation import ChatMessage, GenerationRequest
from jointopt.core.thinking import ThinkingSpec
from jointopt.errors import BackendError
from jointopt.serving.proxy import ServerThread, create_engine_app
from jointopt.strategies.thinking import resolve_engine
from jointopt.testing import BackendContract

pytestmark = pytest.mark.timeout(60)

START, END = "<think>", "</think>"
THOUGHT = [f" w{i}" for i in range(24)]  # what the model would think, one token each
ANSWER = [" The", " answer", " is", " 42"]
VLLM_REFUSAL = ("thinking_token_budget is set but reasoning_config is not configured. Please "
                "set --reasoning-parser and/or --reasoning-config to use thinking_token_budget.")


def _prompt_tokens(body: dict) -> int:
    return sum(len(m["content"].split()) + 1 for m in body["messages"])


class FakeServer:
    """A vLLM-like chat-completions endpoint, as far as thinking goes.

    Args:
        parser: a reasoning parser is configured (thought in ``message.reasoning``,
            ``usage.completion_tokens_details.reasoning_tokens``), else the thought is inline.
        refuse: answer a body with ``thinking_token_budget`` with HTTP 400 and this message.
        ignore: accept the field but think on regardless (a server without the feature).
    """

    def __init__(self, *, parser: bool = True, refuse: str | None = None,
                 ignore: bool = False) -> None:
        self.parser, self.refuse, self.ignore = parser, refuse, ignore
        self.bodies: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        prefix = body["messages"][-1]["content"] if body.get("continue_final_message") else ""
        budget = body.get("thinking_token_budget")
        if budget is not None and self.refuse:
            return httpx.Response(400, json={"error": {"message": self.refuse}})
        if budget is not None:
            thought = THOUGHT if self.ignore else THOUGHT[:budget]
            tokens = thought + [END] + ANSWER
        elif prefix.endswith(START):  # the thought phase of forcing: stops at the end marker
            thought, tokens = [], THOUGHT
        else:  # an answer after a closed thought, or no thinking at all
            thought, tokens = [], ANSWER
        tokens = tokens[:body["max_tokens"]]
        choice: dict = {"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "".join(tokens)}}
        if budget is not None and self.parser:
            closed = END in tokens
            choice["message"] = {"role": "assistant", "reasoning": "".join(thought),
                                 "content": "".join(ANSWER) if closed else None}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [{"token": t, "logprob": -0.1} for t in tokens]}
        usage = {"prompt_tokens": _prompt_tokens(body), "completion_tokens": len(tokens),
                 "total_tokens": _prompt_tokens(body) + len(tokens)}
        if budget is not None and self.parser:
            usage["completion_tokens_details"] = {"reasoning_tokens": len(thought)}
        return httpx.Response(200, json={"id": "x", "object": "chat.completion",
                                         "choices": [choice] * body["n"], "usage": usage})


def _backend(server: FakeServer, **kw) -> OpenAIBackend:
    return OpenAIBackend("http://upstream.test/v1", model="m", max_retries=0,
                         thinking_markers=kw.pop("markers", (START, END)),
                         transport=httpx.MockTransport(server), **kw)


def _request(budget: int | None = 5, **kw) -> GenerationRequest:
    kw.setdefault("max_tokens", 8)
    return GenerationRequest(messages=(ChatMessage("user", "What is six times seven?"),),
                             continuation=START if budget is not None else "",
                             thinking_budget=budget, **kw)


# ------------------------------------------------------------------------------ the field


@pytest.mark.parametrize("parser", [True, False])
def test_the_budget_is_sent_and_thought_and_answer_come_back_apart(parser):
    server = FakeServer(parser=parser)
    backend = _backend(server)
    assert backend.thinking_markers() == (START, END)
    result = backend.generate([_request(5, n=2)])[0]
    body = server.bodies[0]
    assert body["thinking_token_budget"] == 5
    assert body["max_tokens"] == 8 + 5 + 2 + len(END)  # answer cap + budget + overshoot + end
    assert body["messages"][-1] == {"role": "assistant", "content": START}
    for completion in result.completions:
        assert completion.text == "".join(ANSWER)
        assert completion.thinking_text == "".join(THOUGHT[:5]) + END
        assert len(completion.thinking_token_ids) == 6  # five thought tokens + the marker
        assert len(completion.token_ids) == len(ANSWER)
        assert len(completion.logprobs) == len(ANSWER)
    assert result.thinking_tokens == 12
    assert result.completion_tokens == 2 * (6 + len(ANSWER))


def test_without_logprobs_the_servers_reasoning_count_is_used():
    result = _backend(FakeServer(parser=True)).generate([_request(7, logprobs=False)])[0]
    completion = result.completions[0]
    assert len(completion.thinking_token_ids) == 7  # usage's reasoning_tokens
    assert completion.num_tokens == 7 + 1 + len(ANSWER)  # the total stays exact


def test_without_logprobs_or_a_count_the_split_is_by_characters():
    result = _backend(FakeServer(parser=False)).generate([_request(4, logprobs=False)])[0]
    completion = result.completions[0]
    thought, answer = "".join(THOUGHT[:4]) + END, "".join(ANSWER)
    assert (completion.thinking_text, completion.text) == (thought, answer)
    total = 4 + 1 + len(ANSWER)
    assert completion.num_tokens == total
    assert len(completion.thinking_token_ids) == round(total * len(thought)
                                                       / (len(thought) + len(answer)))


@pytest.mark.parametrize("parser", [True, False])
def test_a_thought_that_never_closes_is_all_thought(parser):
    tokens = THOUGHT[:3]  # the model stopped (or ran out) while thinking
    message = ({"role": "assistant", "reasoning": "".join(tokens), "content": None} if parser
               else {"role": "assistant", "content": "".join(tokens)})
    body = {"choices": [{"index": 0, "finish_reason": "length", "message": message,
                         "logprobs": {"content": [{"token": t, "logprob": -1.0}
                                                  for t in tokens]}}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 3}}
    backend = OpenAIBackend("http://upstream.test/v1", model="m", thinking_markers=(START, END),
                            transport=httpx.MockTransport(lambda r: httpx.Response(200, json=body)))
    completion = backend.generate([_request(5)])[0].completions[0]
    assert completion.text == "" and completion.token_ids == ()
    assert completion.thinking_text == "".join(tokens)
    assert len(completion.thinking_token_ids) == 3 and completion.finish_reason == "length"


def test_a_budget_without_markers_is_refused_before_sending():
    server = FakeServer()
    backend = _backend(server, markers=None)
    assert backend.thinking_markers() is None
    with pytest.raises(BackendError, match="thinking_markers") as info:
        backend.generate([_request(5)])
    assert info.value.where == "requests[0].thinking_budget" and not server.bodies


def test_markers_must_be_two_strings():
    with pytest.raises(BackendError, match="two non-empty strings"):
        _backend(FakeServer(), markers=("<think>",))


def test_requests_without_a_budget_carry_no_field():
    server = FakeServer()
    _backend(server).generate([_request(None)])
    assert "thinking_token_budget" not in server.bodies[0]
    assert server.bodies[0]["max_tokens"] == 8


# ------------------------------------------------------------------------------ fallback


@pytest.mark.parametrize("message", [
    VLLM_REFUSAL,
    "Unrecognized request argument supplied: thinking_token_budget",
    "1 validation error: thinking_token_budget Extra inputs are not permitted"])
def test_a_refusing_server_gets_one_warning_and_budget_forcing(message, caplog):
    server = FakeServer(refuse=message)
    backend = _backend(server, max_concurrency=4)
    requests = [_request(5, n=1 + i % 2, seed=i) for i in range(4)]
    with caplog.at_level(logging.WARNING, logger="jointopt.backends.openai"):
        results = backend.generate(requests)
    warnings = [r for r in caplog.records if "budget forcing" in r.getMessage()]
    assert len(warnings) == 1
    assert backend.thinking_markers() is None
    assert resolve_engine(ThinkingSpec(budget=5), backend.thinking_markers()) == "forcing"
    refused = [b for b in server.bodies if "thinking_token_budget" in b]
    assert 1 <= len(refused) <= len(requests)  # only requests already in flight were refused
    phases = [b for b in server.bodies if "thinking_token_budget" not in b]
    thoughts = [b for b in phases if b["messages"][-1]["content"] == START]
    answers = [b for b in phases if b["messages"][-1]["content"].endswith(END)]
    assert len(thoughts) == len(requests) and len(thoughts) + len(answers) == len(phases)
    for body in thoughts:
        assert body["max_tokens"] == 5 and body["stop"] == [END.strip()]
    for request, result in zip(requests, results):
        assert result.request == request and len(result.completions) == request.n
        for completion in result.completions:
            assert completion.thinking_text == "".join(THOUGHT[:5])  # the budget, exactly
            assert len(completion.thinking_token_ids) == 5
            assert completion.text == "".join(ANSWER)
    # every phase's prompt is counted, the refused requests' prompts are not (no work done)
    assert sum(r.prompt_tokens for r in results) == sum(_prompt_tokens(b) for b in phases)
    server.bodies.clear()
    backend.generate([_request(3)])
    assert all("thinking_token_budget" not in b for b in server.bodies)  # no second refusal


def test_other_client_errors_are_not_taken_for_a_refusal():
    server = FakeServer(refuse="max_tokens is too large for max_model_len")
    with pytest.raises(BackendError, match="max_model_len"):
        _backend(server).generate([_request(5)])
    assert len(server.bodies) == 1


def test_a_server_ignoring_the_field_is_noticed(caplog):
    server = FakeServer(ignore=True, parser=False)
    backend = _backend(server)
    with caplog.at_level(logging.WARNING, logger="jointopt.backends.openai"):
        first = backend.generate([_request(3, max_tokens=40)])[0]
    assert len(first.completions[0].thinking_token_ids) == len(THOUGHT) + 1  # counted as is
    assert any("ignored thinking_token_budget=3" in r.getMessage() for r in caplog.records)
    assert backend.thinking_markers() is None
    server.bodies.clear()
    again = backend.generate([_request(3, max_tokens=40)])[0]
    assert len(again.completions[0].thinking_token_ids) == 3
    assert all("thinking_token_budget" not in b for b in server.bodies)


# ------------------------------------------------------------------------------ contract


@pytest.fixture(scope="module")
def scripted_server():
    with ServerThread(create_engine_app(ScriptedBackend(), model_name="scripted")) as server:
        yield server


class TestContractWithThinkingMarkers(BackendContract):
    @pytest.fixture
    def backend(self, scripted_server):
        backend = OpenAIBackend(scripted_server.url, max_retries=0,
                                thinking_markers=(START, END))
        yield backend
        backend.close()


# ------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("refuse, thought", [(None, 5 + 1), (VLLM_REFUSAL, 5)])
def test_a_thinking_policy_evaluates_through_the_server(refuse, thought):
    from jointopt.core.policy import Allocation, Policy
    from jointopt.core.prompts import PromptTemplate
    from jointopt.evaluation.evaluate import evaluate
    from jointopt.tasks import make_task

    task = make_task("word_problems", levels=[1], n_per_level=3, seed=0)
    policy = Policy(model="m", prompt=PromptTemplate(id="p", user="{{ question }}"),
                    bins={"all": Allocation("single", max_tokens=8,
                                            thinking={"budget": 5, "engine": "auto"})})
    server = FakeServer(refuse=refuse)
    result = evaluate(policy, task, _backend(server))
    assert [r.thinking_tokens for r in result.records] == [thought] * 3  # marker: native only
    assert any("thinking_token_budget" in b for b in server.bodies)
    assert all(r.completion_tokens == thought + len(ANSWER) for r in result.records)
