"""Tests of jointopt.backends.openai: contract, request bodies, accounting, errors, retries.

Offline: a scripted OpenAI-compatible server (jointopt.serving.proxy.create_engine_app) in a
uvicorn thread, and httpx.MockTransport for exact control of responses and failures.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
from fastapi import FastAPI

from jointopt.backends import ScriptedBackend, make_backend
from jointopt.backends.openai import OpenAIBackend, UpstreamError, normalize_base_url
from jointopt.errors import BackendError
from jointopt.core.generation import ChatMessage, GenerationRequest
from jointopt.serving.proxy import ServerThread, create_engine_app
from jointopt.testing import BackendContract, RecordingBackend

pytestmark = pytest.mark.timeout(60)


def _request(text: str = "hi", **kw) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("user", text),), **kw)


def _completion_body(n: int = 1, *, prompt_tokens: int = 7, texts=None, logprobs=True,
                     token_ids=False, usage=True, finish="stop") -> dict:
    texts = texts or [f"answer {i}" for i in range(n)]
    choices = []
    for i, text in enumerate(texts):
        tokens = text.split()
        choice = {"index": i, "message": {"role": "assistant", "content": text},
                  "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = {"content": [{"token": t, "logprob": -0.5} for t in tokens]}
        if token_ids:
            choice["token_ids"] = list(range(len(tokens)))
        choices.append(choice)
    body = {"id": "x", "object": "chat.completion", "choices": choices}
    if usage:
        completion = sum(len(t.split()) for t in texts)
        body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                         "total_tokens": prompt_tokens + completion}
    return body


class _Mock:
    """A MockTransport that answers from a list of handlers and records requests."""

    def __init__(self, *responses) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(item, Exception):
            raise item
        if callable(item):
            return item(request)
        status, body = item
        if isinstance(body, (dict, list)):
            return httpx.Response(status, json=body)
        return httpx.Response(status, text=body)

    @property
    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests if r.content]


def _backend(mock: _Mock, **kw) -> OpenAIBackend:
    kw.setdefault("model", "m")
    kw.setdefault("backoff", 0.001)
    kw.setdefault("max_backoff", 0.01)
    return OpenAIBackend("http://upstream.test/v1", transport=httpx.MockTransport(mock), **kw)


# ------------------------------------------------------------------------------ contract


@pytest.fixture(scope="module")
def scripted_server():
    recorder = RecordingBackend(ScriptedBackend())
    with ServerThread(create_engine_app(recorder, model_name="scripted-model")) as server:
        yield server, recorder


class TestContractWithLogprobCounts(BackendContract):
    @pytest.fixture
    def backend(self, scripted_server):
        server, _ = scripted_server
        backend = OpenAIBackend(server.url, max_retries=0)
        yield backend
        backend.close()


class TestContractWithTokenIds(BackendContract):
    @pytest.fixture
    def backend(self, scripted_server):
        server, _ = scripted_server
        backend = OpenAIBackend(server.url + "/v1", token_ids=True, max_retries=0)
        yield backend
        backend.close()


def test_counts_equal_the_engine_counts(scripted_server):
    server, recorder = scripted_server
    requests = [_request(f"Say {i} words please now", n=1 + i % 3, max_tokens=4,
                         logprobs=i % 2 == 0) for i in range(6)]
    with OpenAIBackend(server.url) as backend:
        before = len(recorder.batches)
        remote = backend.generate(requests)
        assert backend.model == "scripted-model"  # discovered from GET /models
    upstream = [b[0] for b in recorder.batches[before:]]
    assert sum(r.total_tokens for r in remote) == sum(r.total_tokens for r in upstream)
    local = ScriptedBackend().generate(requests)
    for got, want in zip(remote, local):
        assert got.prompt_tokens == want.prompt_tokens
        assert [c.text for c in got.completions] == [c.text for c in want.completions]
        assert sum(c.num_tokens for c in got.completions) == want.completion_tokens


def test_registry_creates_it():
    backend = make_backend("openai", base_url="http://127.0.0.1:9", model="m", seed=3,
                           max_model_len=2048, engine_kwargs={"timeout": 5.0})
    assert isinstance(backend, OpenAIBackend) and backend.timeout == 5.0
    assert backend.model_id == "openai:m"
    backend.close()
    with pytest.raises(BackendError, match="unknown option") as info:
        make_backend("openai", engine_kwargs={"base_urll": "x"})
    assert "base_url" in str(info.value)


# ------------------------------------------------------------------------------ bodies


def test_request_body_carries_every_sampling_field():
    mock = _Mock((200, _completion_body(2)))
    backend = _backend(mock)
    backend.generate([_request(n=2, temperature=0.3, max_tokens=9, top_p=0.9, stop=("\n",),
                               seed=11)])
    body = mock.bodies[0]
    assert body == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2,
                    "temperature": 0.3, "top_p": 0.9, "max_tokens": 9, "logprobs": True,
                    "top_logprobs": 0, "stop": ["\n"], "seed": 11}
    assert mock.requests[0].url == "http://upstream.test/v1/chat/completions"


def test_seed_can_be_left_out_and_extra_body_added():
    mock = _Mock((200, _completion_body()))
    _backend(mock, send_seed=False, extra_body={"top_k": 5}).generate([_request(seed=3,
                                                                                logprobs=False)])
    body = mock.bodies[0]
    assert "seed" not in body and body["top_k"] == 5 and body["logprobs"] is False
    assert "top_logprobs" not in body


def test_continuation_is_an_assistant_prefill():
    mock = _Mock((200, _completion_body()))
    _backend(mock).generate([_request(continuation="Step 1: ")])
    body = mock.bodies[0]
    assert body["messages"][-1] == {"role": "assistant", "content": "Step 1: "}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    with pytest.raises(BackendError, match="refuse continuation"):
        _backend(_Mock((200, _completion_body())), continuation="error").generate(
            [_request(continuation="x")])


def test_api_key_is_sent_but_never_shown(monkeypatch):
    monkeypatch.setenv("JOINTOPT_TEST_KEY", "sk-secret-123")
    mock = _Mock((401, {"error": {"message": "bad key"}}))
    backend = _backend(mock, api_key_env="JOINTOPT_TEST_KEY")
    with pytest.raises(UpstreamError) as info:
        backend.generate([_request()])
    assert mock.requests[0].headers["authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in str(info.value) and "sk-secret" not in repr(backend)
    assert info.value.status == 401 and "API key" in str(info.value)


def test_missing_api_key_variable_is_named_not_guessed(monkeypatch):
    monkeypatch.delenv("JOINTOPT_NO_SUCH_KEY", raising=False)
    with pytest.raises(BackendError, match="JOINTOPT_NO_SUCH_KEY is not set"):
        OpenAIBackend("http://x.test", api_key_env="JOINTOPT_NO_SUCH_KEY")


@pytest.mark.parametrize("url, want", [
    ("http://h:8000", "http://h:8000/v1"),
    ("http://h:8000/", "http://h:8000/v1"),
    ("https://api.example.com/v1/", "https://api.example.com/v1"),
    ("http://h/openai/v1", "http://h/openai/v1"),
])
def test_base_url_normalisation(url, want):
    assert normalize_base_url(url) == want


@pytest.mark.parametrize("url", ["", "localhost:8000", "ftp://h/v1"])
def test_bad_base_urls_are_refused(url):
    with pytest.raises(BackendError, match="URL"):
        normalize_base_url(url)


# ------------------------------------------------------------------------------ accounting


def test_tokens_from_logprobs_token_ids_or_usage_split():
    with_lp = _backend(_Mock((200, _completion_body(2, texts=["a b c", "d"]))))
    result = with_lp.generate([_request(n=2)])[0]
    assert [c.num_tokens for c in result.completions] == [3, 1]
    assert result.completions[0].logprobs == (-0.5, -0.5, -0.5)
    assert result.prompt_tokens == 7

    ids = _backend(_Mock((200, _completion_body(1, texts=["a b"], logprobs=False,
                                                token_ids=True)))).generate([_request()])[0]
    assert ids.completions[0].token_ids == (0, 1)

    body = _completion_body(3, texts=["aaaa", "aaaaaaaa", ""], logprobs=False)
    body["usage"]["completion_tokens"] = 10
    split = _backend(_Mock((200, body))).generate([_request(n=3, logprobs=False)])[0]
    counts = [c.num_tokens for c in split.completions]
    assert sum(counts) == 10 and counts[1] > counts[0] >= counts[2]
    assert split.completions[0].logprobs is None
    assert all(t == -1 for t in split.completions[0].token_ids)


def test_server_ignoring_n_is_asked_again_and_every_prompt_counted():
    mock = _Mock((200, _completion_body(1, prompt_tokens=5)))
    result = _backend(mock).generate([_request(n=3)])[0]
    assert len(result.completions) == 3
    assert [b["n"] for b in mock.bodies] == [3, 2, 1]
    assert result.prompt_tokens == 15


def test_finish_reason_length_is_kept():
    result = _backend(_Mock((200, _completion_body(finish="length")))).generate([_request()])[0]
    assert result.completions[0].finish_reason == "length"


def test_batch_keeps_order_under_concurrency():
    def answer(request: httpx.Request) -> httpx.Response:
        text = json.loads(request.content)["messages"][0]["content"]
        time.sleep(0.02 if text.endswith("0") else 0.0)
        return httpx.Response(200, json=_completion_body(texts=[f"echo {text}"]))

    backend = _backend(_Mock(answer), max_concurrency=4)
    results = backend.generate([_request(f"q{i}") for i in range(10)])
    assert [r.completions[0].text for r in results] == [f"echo q{i}" for i in range(10)]


# ------------------------------------------------------------------------------ errors


def test_retries_429_and_5xx_then_succeeds():
    mock = _Mock((503, "overloaded"), (429, {"error": {"message": "slow down"}}),
                 (200, _completion_body()))
    result = _backend(mock, max_retries=3).generate([_request()])[0]
    assert result.completions[0].text == "answer 0"
    assert len(mock.requests) == 3


def test_retry_after_is_honoured_but_capped():
    mock = _Mock(lambda r: httpx.Response(429, headers={"Retry-After": "100"}, text="later"),
                 )
    backend = _backend(mock, max_retries=1, max_backoff=0.05)
    start = time.perf_counter()
    with pytest.raises(UpstreamError, match="HTTP 429.*after 2 attempts"):
        backend.generate([_request()])
    assert time.perf_counter() - start < 2


def test_persistent_5xx_fails_with_status_and_body_excerpt():
    mock = _Mock((500, {"error": {"message": "CUDA out of memory"}}))
    with pytest.raises(UpstreamError) as info:
        _backend(mock, max_retries=2).generate([_request()])
    err = info.value
    assert err.kind == "http" and err.status == 500
    assert "HTTP 500: CUDA out of memory (after 3 attempts)" in str(err)
    assert len(mock.requests) == 3


def test_4xx_is_not_retried():
    long_body = "x" * 2000
    mock = _Mock((400, long_body))
    with pytest.raises(UpstreamError) as info:
        _backend(mock, max_retries=3).generate([_request()])
    assert len(mock.requests) == 1 and info.value.status == 400
    assert len(str(info.value)) < 600  # an excerpt, not the whole body


def test_connection_errors_retry_then_fail_as_unreachable():
    mock = _Mock(httpx.ConnectError("refused"))
    with pytest.raises(UpstreamError) as info:
        _backend(mock, max_retries=2).generate([_request()])
    assert info.value.kind == "unreachable" and len(mock.requests) == 3
    assert "cannot reach" in str(info.value) and "fix:" in str(info.value)


def test_failover_to_the_next_server():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "a.test":
            raise httpx.ConnectError("down")
        return httpx.Response(200, json=_completion_body())

    backend = OpenAIBackend(["http://a.test/v1", "http://b.test/v1"], model="m",
                            transport=httpx.MockTransport(handler), backoff=0.001)
    backend.generate([_request()])
    assert seen[-1] == "b.test"


def test_read_timeout_is_not_retried():
    mock = _Mock(httpx.ReadTimeout("slow"))
    with pytest.raises(UpstreamError) as info:
        _backend(mock, max_retries=3, timeout=1.5).generate([_request()])
    assert info.value.kind == "timeout" and len(mock.requests) == 1
    assert "within 1.5s" in str(info.value)


@pytest.mark.parametrize("status, body, match", [
    (200, "<html>not json</html>", "not JSON"),
    (200, {"choices": "nope"}, "not an OpenAI chat completion"),
    (200, {"choices": [{"message": {"content": "a"}}]}, "no usage.prompt_tokens"),
    (200, {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 0}}, "no choices"),
])
def test_malformed_responses_are_protocol_errors(status, body, match):
    with pytest.raises(UpstreamError, match=match) as info:
        _backend(_Mock((status, body)), max_retries=0).generate([_request()])
    assert info.value.kind == "protocol"


def test_model_discovery_failure_is_clear():
    with pytest.raises(UpstreamError, match="lists no models"):
        OpenAIBackend("http://u.test", transport=httpx.MockTransport(
            lambda r: httpx.Response(200, json={"data": []}))).generate([_request()])


def test_invalid_requests_are_rejected_before_sending():
    mock = _Mock((200, _completion_body()))
    with pytest.raises(BackendError, match="`n` must be"):
        _backend(mock).generate([_request(n=0)])
    assert not mock.requests
    assert _backend(mock).generate([]) == []


@pytest.mark.parametrize("kwargs, name", [({"timeout": 0}, "timeout"),
                                          ({"max_retries": -1}, "max_retries"),
                                          ({"max_concurrency": 0}, "max_concurrency"),
                                          ({"continuation": "x"}, "continuation")])
def test_bad_options(kwargs, name):
    with pytest.raises(BackendError) as info:
        OpenAIBackend("http://x.test", **kwargs)
    assert name in str(info.value)


# ------------------------------------------------------------------------------ real sockets


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_down_fails_fast_and_clearly():
    backend = OpenAIBackend(f"http://127.0.0.1:{_free_port()}/v1", model="m", max_retries=1,
                            backoff=0.01, connect_timeout=1.0)
    start = time.perf_counter()
    with pytest.raises(UpstreamError) as info:
        backend.generate([_request()])
    assert time.perf_counter() - start < 5
    assert info.value.kind == "unreachable" and "after 2 attempts" in str(info.value)
    assert backend.health() == {backend.base_urls[0]: "unreachable (ConnectError)"}
    backend.close()


def test_slow_server_times_out():
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def slow(body: dict) -> dict:
        await asyncio.sleep(3)
        return _completion_body()

    with ServerThread(app) as server:
        backend = OpenAIBackend(server.url, model="m", timeout=0.3, max_retries=2)
        start = time.perf_counter()
        with pytest.raises(UpstreamError) as info:
            backend.generate([_request()])
        assert info.value.kind == "timeout"
        assert time.perf_counter() - start < 2
        backend.close()


def test_closed_backend_refuses_work():
    backend = _backend(_Mock((200, _completion_body())))
    backend.close()
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.generate([_request()])
