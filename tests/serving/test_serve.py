"""Tests of the policy proxy (jointopt.serving.proxy) with the official openai client.

Upstream: a scripted OpenAI-compatible server (create_engine_app over ScriptedBackend) in
a uvicorn thread; the proxy runs in another thread; nothing touches a real engine.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import httpx
import openai
import pytest

from jointopt.backends import ScriptedBackend
from jointopt.backends.openai import OpenAIBackend
from jointopt.errors import ConfigError
from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.serving.runtime import load_policy, task_spec
from jointopt.serving.proxy import ServeSettings, ServerThread, create_app, create_engine_app
from jointopt.tasks import AnswerExtractor, AnswerMatcher, Example, Task
from jointopt.testing import RecordingBackend, noisy_responder, toy_task

pytestmark = pytest.mark.timeout(60)


def _policy(**kw) -> Policy:
    task = kw.pop("task", toy_task())
    return Policy(
        model="m",
        prompt=kw.pop("prompt", PromptTemplate(id="toy", user="{{ question }}",
                                               system="Be brief.", shots=1)),
        bins=kw.pop("bins", {"all": Allocation("majority", 0.7, 16, {"n": 3})}),
        difficulty=kw.pop("difficulty", DifficultySpec()),
        metadata={"task": task_spec(task, 1)},
    )


def _client(server: ServerThread, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 20)
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", **kw)


def _msg(exc: openai.APIStatusError) -> str:
    body = exc.body
    return body.get("message", str(body)) if isinstance(body, dict) else str(exc)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def upstream():
    recorder = RecordingBackend(ScriptedBackend(noisy_responder(0.7)))
    with ServerThread(create_engine_app(recorder, model_name="toy-model")) as server:
        yield server, recorder


@pytest.fixture(scope="module")
def proxy(upstream):
    server, _ = upstream
    backend = OpenAIBackend(server.url, max_retries=0)
    runner = load_policy(_policy(), backend=backend)
    with ServerThread(create_app(runner, model_name="toy-policy")) as proxy_server:
        yield proxy_server, runner
    backend.close()


# ------------------------------------------------------------------------------ happy paths


def test_chat_answer_and_usage_are_the_policy_s(upstream, proxy):
    upstream_server, recorder = upstream
    proxy_server, _ = proxy
    before = len(recorder.batches)
    reply = _client(proxy_server).chat.completions.create(
        model="anything", messages=[{"role": "user", "content": "What is 20 + 22?"}])
    upstream_calls = [r for batch in recorder.batches[before:] for r in batch]
    assert reply.usage.total_tokens == sum(r.total_tokens for r in upstream_calls)
    assert reply.usage.prompt_tokens == sum(r.prompt_tokens for r in upstream_calls)
    assert reply.usage.completion_tokens == sum(r.completion_tokens for r in upstream_calls)
    # the same policy run locally on the same scripted engine gives the same answer and cost
    local = load_policy(_policy(), backend=ScriptedBackend(noisy_responder(0.7))).answer(
        {"question": "What is 20 + 22?"})
    assert reply.choices[0].message.content == local.answer
    assert reply.usage.total_tokens == local.usage.total_tokens
    ext = reply.jointopt
    assert ext["text"] == local.text and ext["bin"] == "all" and ext["strategy"] == "majority"
    assert ext["completions"] == 3 and len(ext["calls"]) == 1
    assert reply.model == "toy-policy" and reply.choices[0].finish_reason == "stop"


def test_completions_endpoint(proxy):
    proxy_server, _ = proxy
    reply = _client(proxy_server).completions.create(model="x", prompt="What is 1 + 2?")
    assert reply.choices[0].text == (reply.jointopt["answer"] or "")
    assert reply.object == "text_completion" and reply.usage.total_tokens > 0


def test_models_and_health(proxy):
    proxy_server, _ = proxy
    models = _client(proxy_server).models.list()
    assert [m.id for m in models.data] == ["toy-policy"]
    health = httpx.get(proxy_server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_ignored_sampling_parameters_are_reported(proxy):
    proxy_server, _ = proxy
    raw = _client(proxy_server).chat.completions.with_raw_response.create(
        model="x", messages=[{"role": "user", "content": "What is 2 + 2?"}], temperature=1.5,
        max_tokens=3)
    assert raw.headers["x-jointopt-ignored"] == "max_tokens,temperature"


def _two_field_task() -> Task:
    return Task(name="pair", description="Add a and b.", fields=("a", "b"),
                examples=(), demos=(Example("d0", {"a": "1", "b": "2"}, "3"),),
                extractor=AnswerExtractor("last_number"), matcher=AnswerMatcher("numeric"))


@pytest.fixture(scope="module")
def two_field_proxy(upstream):
    server, _ = upstream
    task = _two_field_task()
    policy = _policy(task=task, prompt=PromptTemplate(id="pair", user="What is {{ a }} + {{ b }}?",
                                                      shots=1))
    runner = load_policy(policy, backend=OpenAIBackend(server.url, max_retries=0))
    with ServerThread(create_app(runner)) as proxy_server:
        yield proxy_server


def test_multi_field_inputs_by_json_content_or_extra_body(two_field_proxy):
    client = _client(two_field_proxy)
    by_json = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": '{"a": "4", "b": "5"}'}])
    by_extra = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "ignored"}],
        extra_body={"inputs": {"a": "4", "b": "5"}})
    assert by_json.choices[0].message.content == by_extra.choices[0].message.content
    assert by_json.usage == by_extra.usage
    assert by_json.model == "jointopt-pair"


def test_multi_field_needs_json(two_field_proxy):
    with pytest.raises(openai.BadRequestError) as info:
        _client(two_field_proxy).chat.completions.create(
            model="x", messages=[{"role": "user", "content": "4 and 5"}])
    assert "fields a, b" in _msg(info.value) and "inputs" in _msg(info.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"extra_body": {"inputs": {"question": "x", "qestion": "y"}}}, "unknown input field"),
    ({"extra_body": {"inputs": {}}}, "lacks the field 'question'"),
    ({"n": 2}, "n=2"),
])
def test_bad_inputs_are_400(proxy, kwargs, match):
    proxy_server, _ = proxy
    with pytest.raises(openai.BadRequestError) as info:
        _client(proxy_server).chat.completions.create(
            model="x", messages=[{"role": "user", "content": "What is 1 + 1?"}], **kwargs)
    assert match in _msg(info.value)


def _events(response: httpx.Response) -> list:
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.split("\n\n")
    assert blocks[-1] == "" and all(b.startswith("data: ") for b in blocks[:-1])
    data = [b.removeprefix("data: ") for b in blocks[:-1]]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_streaming_sends_the_decided_answer_as_server_sent_events(proxy):
    proxy_server, _ = proxy
    question = [{"role": "user", "content": "What is 20 + 22?"}]
    plain = _client(proxy_server).chat.completions.create(model="x", messages=question)
    chat = _events(httpx.post(proxy_server.url + "/v1/chat/completions", timeout=20, json={
        "messages": question, "stream": True, "stream_options": {"include_usage": True}}))
    assert {c["object"] for c in chat} == {"chat.completion.chunk"}
    assert chat[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chat if c["choices"])
    assert text == plain.choices[0].message.content
    finish = [c for c in chat if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finish] == ["stop"]
    assert chat[-1]["choices"] == [] and chat[-1]["usage"] == plain.usage.model_dump(
        exclude_none=True)
    assert all(c["usage"] is None for c in chat[:-1])
    completion = _events(httpx.post(proxy_server.url + "/v1/completions", timeout=20, json={
        "prompt": "What is 20 + 22?", "stream": True}))
    assert {c["object"] for c in completion} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in completion) == text
    assert completion[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in completion)  # not asked for


def test_schema_errors(proxy):
    proxy_server, _ = proxy
    bad_options = httpx.post(proxy_server.url + "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": "yes"}})
    assert bad_options.status_code == 400 and "include_usage" in bad_options.text
    bad = httpx.post(proxy_server.url + "/v1/chat/completions", json={"model": "x"})
    assert bad.status_code == 422 and "messages" in bad.json()["error"]["message"]
    no_user = httpx.post(proxy_server.url + "/v1/chat/completions",
                         json={"messages": [{"role": "system", "content": "x"}]})
    assert no_user.status_code == 400 and "user message" in no_user.json()["error"]["message"]
    not_json = httpx.post(proxy_server.url + "/v1/chat/completions", content=b"{oops",
                          headers={"content-type": "application/json"})
    assert not_json.status_code == 422


def test_difficulty_label_picks_the_bin(upstream):
    server, _ = upstream
    bins = {"1": Allocation("single", 0.0, 8), "3": Allocation("majority", 0.7, 16, {"n": 5})}
    policy = _policy(bins=bins, difficulty=DifficultySpec(source="label", bins=("1", "3"),
                                                          default_bin="3"))
    runner = load_policy(policy, backend=OpenAIBackend(server.url, max_retries=0))
    with ServerThread(create_app(runner)) as proxy_server:
        client = _client(proxy_server)
        messages = [{"role": "user", "content": "What is 3 + 4?"}]
        easy = client.chat.completions.create(model="x", messages=messages,
                                              extra_body={"difficulty": "1"})
        default = client.chat.completions.create(model="x", messages=messages)
    assert (easy.jointopt["bin"], easy.jointopt["completions"]) == ("1", 1)
    assert (default.jointopt["bin"], default.jointopt["completions"]) == ("3", 5)
    assert easy.usage.total_tokens < default.usage.total_tokens


# ------------------------------------------------------------------------------ failures


def test_upstream_down_is_502_and_health_503():
    backend = OpenAIBackend(f"http://127.0.0.1:{_free_port()}/v1", model="m", max_retries=1,
                            backoff=0.01, connect_timeout=1)
    runner = load_policy(_policy(), backend=backend)
    with ServerThread(create_app(runner)) as proxy_server:
        start = time.perf_counter()
        with pytest.raises(openai.APIStatusError) as info:
            _client(proxy_server).chat.completions.create(
                model="x", messages=[{"role": "user", "content": "What is 1 + 1?"}])
        assert time.perf_counter() - start < 10
        assert info.value.status_code == 502
        assert "upstream unreachable" in _msg(info.value)
        health = httpx.get(proxy_server.url + "/health")
        assert health.status_code == 503 and "unreachable" in str(health.json()["upstream"])
    backend.close()


def _slow_upstream(delay: float) -> ServerThread:
    def respond(request, index, rng):
        time.sleep(delay)
        return "The answer is 2."

    return ServerThread(create_engine_app(ScriptedBackend(respond))).start()


def test_policy_timeout_is_504():
    upstream = _slow_upstream(1.0)
    try:
        backend = OpenAIBackend(upstream.url, model="scripted", timeout=10, max_retries=0)
        runner = load_policy(_policy(bins={"all": Allocation("single", 0.0, 8)}), backend=backend)
        with ServerThread(create_app(runner, timeout=0.3)) as proxy_server:
            start = time.perf_counter()
            with pytest.raises(openai.APIStatusError) as info:
                _client(proxy_server).chat.completions.create(
                    model="x", messages=[{"role": "user", "content": "What is 1 + 1?"}])
            assert time.perf_counter() - start < 1.5
            assert info.value.status_code == 504 and "0.3s" in _msg(info.value)
        backend.close()
    finally:
        upstream.stop()


def test_upstream_timeout_is_504():
    upstream = _slow_upstream(1.0)
    try:
        backend = OpenAIBackend(upstream.url, model="scripted", timeout=0.3, max_retries=0)
        runner = load_policy(_policy(bins={"all": Allocation("single", 0.0, 8)}), backend=backend)
        with ServerThread(create_app(runner, timeout=10)) as proxy_server:
            with pytest.raises(openai.APIStatusError) as info:
                _client(proxy_server).chat.completions.create(
                    model="x", messages=[{"role": "user", "content": "What is 1 + 1?"}])
            assert info.value.status_code == 504 and "upstream timeout" in _msg(info.value)
        backend.close()
    finally:
        upstream.stop()


def test_upstream_http_error_is_502_with_an_error_id_and_the_details_in_the_log(caplog):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def fail(body: dict) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": {"message": "prompt too long"}})

    with ServerThread(app) as upstream:
        runner = load_policy(_policy(), backend=OpenAIBackend(upstream.url, model="m"))
        with ServerThread(create_app(runner)) as proxy_server:
            with pytest.raises(openai.APIStatusError) as info:
                _client(proxy_server).chat.completions.create(
                    model="x", messages=[{"role": "user", "content": "What is 1 + 1?"}])
    assert info.value.status_code == 502
    message = _msg(info.value)
    assert "answered HTTP 400" in message and "prompt too long" not in message
    error_id = re.search(r"error id (err-[0-9a-f]+)", message).group(1)
    logged = [r.getMessage() for r in caplog.records if error_id in r.getMessage()]
    assert len(logged) == 1 and "HTTP 400: prompt too long" in logged[0]


def test_concurrency_is_bounded_and_excess_gets_503():
    upstream = _slow_upstream(0.8)
    try:
        backend = OpenAIBackend(upstream.url, model="scripted", max_retries=0)
        runner = load_policy(_policy(bins={"all": Allocation("single", 0.0, 8)}), backend=backend)
        app = create_app(runner, ServeSettings(max_concurrency=1, queue_timeout=0.2, timeout=10))
        with ServerThread(app) as proxy_server:
            statuses: list[int] = []

            def call() -> None:
                response = httpx.post(proxy_server.url + "/v1/chat/completions", timeout=10,
                                      json={"messages": [{"role": "user",
                                                          "content": "What is 1 + 1?"}]})
                statuses.append(response.status_code)
                if response.status_code == 503:
                    assert response.headers["retry-after"] == "1"
                    assert "busy" in response.json()["error"]["message"]

            threads = [threading.Thread(target=call) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(statuses) == [200, 503]
        backend.close()
    finally:
        upstream.stop()


def test_excess_requests_wait_for_a_slot_when_the_queue_allows():
    upstream = _slow_upstream(0.2)
    try:
        backend = OpenAIBackend(upstream.url, model="scripted", max_retries=0)
        runner = load_policy(_policy(bins={"all": Allocation("single", 0.0, 8)}), backend=backend)
        app = create_app(runner, max_concurrency=1, queue_timeout=10)
        with ServerThread(app) as proxy_server:
            statuses: list[int] = []
            threads = [threading.Thread(target=lambda: statuses.append(httpx.post(
                proxy_server.url + "/v1/chat/completions", timeout=10,
                json={"messages": [{"role": "user", "content": "What is 1 + 1?"}]}
            ).status_code)) for _ in range(3)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert statuses == [200, 200, 200]
            assert time.perf_counter() - start >= 0.55  # one at a time
        backend.close()
    finally:
        upstream.stop()


def test_bad_settings():
    with pytest.raises(ConfigError, match="max_concurrency"):
        ServeSettings(max_concurrency=0)
    with pytest.raises(ConfigError, match="timeout"):
        ServeSettings(timeout=0)


def test_serve_cli_parser():
    import argparse

    from jointopt.cli.export import add_serve_parser

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--policy", "p.yaml", "--upstream", "http://a/v1",
                              "--upstream", "http://b/v1", "--port", "9000",
                              "--max-concurrency", "2", "--api-key-env", "KEY",
                              "--api-key-file", "keys.txt", "--allow-verifier", "mypkg.v",
                              "--rate-limit", "0"])
    assert args.upstream == ["http://a/v1", "http://b/v1"] and args.port == 9000
    assert args.max_concurrency == 2 and args.api_key_env == "KEY" and args.timeout == 60
    assert args.api_key_file == "keys.txt" and args.allow_verifier == ["mypkg.v"]
    assert args.rate_limit == 0 and not args.allow_unauthenticated
    defaults = parser.parse_args(["serve", "--policy", "p.yaml", "--upstream", "u"])
    # the proxy's default port is not the upstream's (vLLM listens on 8000)
    assert defaults.port == 8100 and defaults.max_body_bytes == 1_048_576
    assert defaults.max_input_chars is None and defaults.allow_verifier == []
    for bad in (["--timeout", "0"], ["--port", "70000"], ["--port", "-1"],
                ["--max-waiting", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "--policy", "p.yaml", "--upstream", "u", *bad])
