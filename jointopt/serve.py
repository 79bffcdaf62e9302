"""An OpenAI-compatible proxy that answers every request with a tuned policy.

Clients talk to it as to any OpenAI server; behind it, the policy's runtime
(:class:`~jointopt.runtime.PolicyRunner`) picks the input's difficulty bin and that
bin's strategy, makes every generation it needs on the upstream server (an
:class:`~jointopt.backends.openai.OpenAIBackend`, e.g. vLLM) and answers with the
aggregated answer::

    jointopt serve --policy out/policy.yaml --upstream http://127.0.0.1:8000/v1

    client = openai.OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")
    r = client.chat.completions.create(model="policy", messages=[{"role": "user",
                                       "content": "Reverse the order of these words: a, b"}])
    r.choices[0].message.content   # the policy's answer
    r.usage.total_tokens           # every token the policy spent upstream (all calls)
    r.jointopt["text"]             # the full completion the answer came from

Endpoints:

* ``POST /v1/chat/completions``: the input is the content of the last ``user`` message.
  When the template reads one variable, the text is that variable; otherwise the text
  must be a JSON object of the fields. A request may instead carry the fields as
  ``inputs`` (``extra_body={"inputs": {...}}`` in the openai client) and a difficulty label
  as ``difficulty``. Sampling parameters in the request (``temperature``, ``max_tokens``,
  ``n`` > 1 ...) are ignored: the policy decides them; their names are listed in the
  ``x-jointopt-ignored`` response header. Streaming is refused (400).
* ``POST /v1/completions``: the same with ``prompt`` as the input text.
* ``GET /health``: 200 when the upstream answers ``GET /models``, else 503.
* ``GET /v1/models``: the one model this proxy serves (the policy).

Responses: ``choices[0].message.content`` (``choices[0].text`` for completions) is the
aggregated answer (empty when no completion held an answer); ``usage`` counts every
token of every upstream call; the extension field ``jointopt`` holds the full chosen
text, the answer (or null), the bin, the strategy and per-call usage.

Errors use the OpenAI error body ``{"error": {"message", "type", "code"}}``: 400 for a
bad input (unknown or missing field, not JSON when JSON is needed), 422 for a body that
does not match the schema, 502 when the upstream is down or fails (its status and an
excerpt of its body in the message), 504 when the policy does not finish within
``timeout`` seconds or the upstream times out, 503 when all ``max_concurrency`` slots
stay busy for ``queue_timeout`` seconds (with ``Retry-After``).

:func:`create_engine_app` is the other direction: an OpenAI-compatible server in front of
any jointopt :class:`~jointopt.backends.Backend` (the scripted backend for offline tests
and demos, or an in-process engine).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .errors import BackendError, ConfigError, DataError, JointoptError, TemplateError

if TYPE_CHECKING:
    from .backends.base import Backend
    from .runtime import Answer, PolicyRunner

__all__ = ["ServeSettings", "ServerThread", "create_app", "create_engine_app", "serve"]

log = logging.getLogger(__name__)

#: Request fields a policy proxy reads; every other sampling field is ignored.
_READ_FIELDS = frozenset({"model", "messages", "prompt", "inputs", "difficulty", "stream",
                          "n", "user", "stream_options"})


@dataclass(frozen=True)
class ServeSettings:
    """How the proxy runs.

    Attributes:
        timeout: seconds one request may take (queue wait excluded) before a 504.
        max_concurrency: requests answered at once; more wait for a slot.
        queue_timeout: seconds a request may wait for a slot before a 503.
        model_name: the model id clients see (default ``jointopt-<prompt id>``).
        upstream: URLs of the upstream servers (shown by ``/health``).
    """

    timeout: float = 60.0
    max_concurrency: int = 8
    queue_timeout: float = 30.0
    model_name: str | None = None
    upstream: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("timeout", "queue_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"`{name}` must be a number of seconds > 0", where=name,
                                  value=value, fix="e.g. 60")
        if (isinstance(self.max_concurrency, bool) or not isinstance(self.max_concurrency, int)
                or self.max_concurrency < 1):
            raise ConfigError("`max_concurrency` must be an integer >= 1",
                              where="max_concurrency", value=self.max_concurrency,
                              fix="e.g. 8")


# ------------------------------------------------------------------------------ schemas


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class _ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    n: int | None = None
    stream: bool | None = False
    inputs: dict[str, Any] | None = None
    difficulty: str | int | None = None


class _CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | list[str]
    n: int | None = None
    stream: bool | None = False
    inputs: dict[str, Any] | None = None
    difficulty: str | int | None = None


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = dict(headers or {})


def _error_response(status: int, message: str, kind: str,
                    headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=dict(headers or {}),
                        content={"error": {"message": message, "type": kind, "code": status}})


def _status_of(exc: BaseException) -> _HTTPError:
    """Map an error raised while answering to an HTTP status."""
    from .backends.openai import UpstreamError

    text = str(exc)
    if isinstance(exc, (DataError, TemplateError, ConfigError)):
        return _HTTPError(400, text, "invalid_request_error")
    if isinstance(exc, UpstreamError):
        if exc.kind == "timeout":
            return _HTTPError(504, f"upstream timeout: {text}", "upstream_timeout")
        label = "upstream unreachable" if exc.kind == "unreachable" else "upstream error"
        return _HTTPError(502, f"{label}: {text}", "upstream_error")
    if isinstance(exc, BackendError):
        return _HTTPError(502, f"upstream error: {text}", "upstream_error")
    if isinstance(exc, JointoptError):
        return _HTTPError(500, text, "server_error")
    return _HTTPError(500, f"internal error: {type(exc).__name__}", "server_error")


# ------------------------------------------------------------------------------ inputs


def _text_of(content: str | list[dict[str, Any]] | None) -> str | None:
    if content is None or isinstance(content, str):
        return content
    parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return "\n".join(parts) if parts else None


def _inputs_from_text(runner: "PolicyRunner", text: str) -> dict[str, Any]:
    fields = runner.input_fields
    if len(fields) == 1:
        return {fields[0]: text}
    if not fields:
        return {}
    example = json.dumps({f: "..." for f in fields})
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise _HTTPError(
            400,
            f"the policy's template reads the fields {', '.join(fields)}: send the user message as "
            f"a JSON object such as {example}, or pass the fields as `inputs` "
            f"(openai client: extra_body={{'inputs': {{...}}}})",
            "invalid_request_error",
        )
    return data


def _ignored(body: BaseModel) -> list[str]:
    extra = set((body.model_extra or {}).keys())
    return sorted(k for k in extra if k not in _READ_FIELDS)


def _check_common(body: _ChatRequest | _CompletionRequest) -> None:
    if body.stream:
        raise _HTTPError(400, "streaming is not supported: the answer exists only after the "
                              "policy's last generation; send stream=false",
                         "invalid_request_error")
    if body.n not in (None, 1):
        raise _HTTPError(400, f"n={body.n}: the policy decides how many samples to draw and "
                              "returns one aggregated answer; send n=1 or leave it out",
                         "invalid_request_error")


# ------------------------------------------------------------------------------ proxy app


def create_app(
    runner: "PolicyRunner",
    settings: ServeSettings | None = None,
    *,
    timeout: float | None = None,
    max_concurrency: int | None = None,
    queue_timeout: float | None = None,
    model_name: str | None = None,
) -> FastAPI:
    """The policy proxy as a FastAPI app (serve it with uvicorn).

    Args:
        runner: answers the inputs (its backend is the upstream).
        settings: timeouts, concurrency, model name, upstream URLs; the keyword arguments
            override single fields of it.

    All state (runner, settings, the semaphore and the worker threads) lives on
    ``app.state``; the worker threads stop when the app shuts down.
    """
    base = settings or ServeSettings()
    overrides = {k: v for k, v in (("timeout", timeout), ("max_concurrency", max_concurrency),
                                   ("queue_timeout", queue_timeout), ("model_name", model_name))
                 if v is not None}
    if overrides:
        base = ServeSettings(**{**base.__dict__, **overrides})
    upstream = base.upstream or tuple(getattr(runner.backend, "base_urls", ()))
    settings = ServeSettings(**{**base.__dict__, "upstream": tuple(upstream)})
    served = settings.model_name or f"jointopt-{runner.policy.prompt.id}"

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        app.state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="jointopt policy proxy", lifespan=lifespan,
                  description=f"Answers with policy {runner.policy.prompt.id!r} "
                              f"({runner.policy.describe()}).")
    app.state.runner = runner
    app.state.settings = settings
    app.state.model_name = served
    app.state.executor = ThreadPoolExecutor(max_workers=settings.max_concurrency,
                                            thread_name_prefix="jointopt-serve")
    app.state.semaphore = asyncio.Semaphore(settings.max_concurrency)

    @app.exception_handler(_HTTPError)
    async def _on_http_error(request: Request, exc: _HTTPError) -> JSONResponse:
        return _error_response(exc.status, exc.message, exc.kind, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()[:5])
        return _error_response(422, f"invalid request body: {problems}",
                               "invalid_request_error")

    async def _answer(request: Request, inputs: Mapping[str, Any],
                      difficulty: str | int | None) -> "Answer":
        state = request.app.state
        try:
            await asyncio.wait_for(state.semaphore.acquire(), settings.queue_timeout)
        except asyncio.TimeoutError:
            raise _HTTPError(503, f"the proxy is busy: all {settings.max_concurrency} slots "
                                  f"stayed in use for {settings.queue_timeout:g}s; retry later",
                             "server_busy", {"Retry-After": "1"}) from None
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(
                state.executor, lambda: state.runner.answer(inputs, difficulty=difficulty))
        except RuntimeError:  # executor shut down
            state.semaphore.release()
            raise _HTTPError(503, "the proxy is shutting down", "server_busy") from None
        # The slot is freed when the work really ends, not when the client gives up, so
        # at most max_concurrency policies ever run at once.
        future.add_done_callback(lambda _: state.semaphore.release())
        try:
            return await asyncio.wait_for(asyncio.shield(future), settings.timeout)
        except asyncio.TimeoutError:
            raise _HTTPError(504, f"the policy did not finish within {settings.timeout:g}s "
                                  "(the proxy's --timeout)", "timeout") from None
        except _HTTPError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            mapped = _status_of(exc)
            if mapped.status >= 500 and mapped.kind == "server_error":
                log.exception("policy failed")
            else:
                log.warning("request failed (%d): %s", mapped.status, exc)
            raise mapped from None

    def _extension(answer: "Answer") -> dict[str, Any]:
        out = answer.to_dict()
        out["policy"] = runner.policy.prompt.id
        return out

    def _headers(body: BaseModel) -> dict[str, str]:
        ignored = _ignored(body)
        return {"x-jointopt-ignored": ",".join(ignored)} if ignored else {}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: _ChatRequest, request: Request) -> JSONResponse:
        _check_common(body)
        if body.inputs is not None:
            inputs: Mapping[str, Any] = body.inputs
        else:
            users = [m for m in body.messages if m.role == "user"]
            text = _text_of(users[-1].content) if users else None
            if text is None:
                raise _HTTPError(400, "no user message with text content: the input is the "
                                      "content of the last user message", "invalid_request_error")
            inputs = _inputs_from_text(runner, text)
        answer = await _answer(request, inputs, body.difficulty)
        content = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer.answer or ""},
                "finish_reason": "stop",
                "logprobs": None,
            }],
            "usage": answer.usage.to_dict(),
            "jointopt": _extension(answer),
        }
        return JSONResponse(content, headers=_headers(body))

    @app.post("/v1/completions")
    async def completions(body: _CompletionRequest, request: Request) -> JSONResponse:
        _check_common(body)
        if body.inputs is not None:
            inputs = body.inputs
        else:
            prompt = body.prompt
            if isinstance(prompt, list):
                if len(prompt) != 1:
                    raise _HTTPError(400, "send one prompt per request", "invalid_request_error")
                prompt = prompt[0]
            inputs = _inputs_from_text(runner, prompt)
        answer = await _answer(request, inputs, body.difficulty)
        content = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": served,
            "choices": [{"index": 0, "text": answer.answer or "", "finish_reason": "stop",
                         "logprobs": None}],
            "usage": answer.usage.to_dict(),
            "jointopt": _extension(answer),
        }
        return JSONResponse(content, headers=_headers(body))

    @app.get("/health")
    async def health() -> JSONResponse:
        check = getattr(runner.backend, "health", None)
        upstream = await asyncio.to_thread(check) if callable(check) else {}
        ok = all(v == "ok" for v in upstream.values())
        return JSONResponse(status_code=200 if ok else 503, content={
            "status": "ok" if ok else "upstream unavailable",
            "model": served,
            "policy": runner.policy.prompt.id,
            "upstream": upstream,
        })

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": served, "object": "model", "created": 0, "owned_by": "jointopt",
        }]}

    return app


# ------------------------------------------------------------------------------ engine app


def create_engine_app(backend: "Backend", model_name: str = "scripted") -> FastAPI:
    """An OpenAI-compatible server (``/v1/chat/completions``, ``/v1/models``, ``/health``)
    in front of a jointopt :class:`~jointopt.backends.Backend`.

    Supports ``n``, ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed``,
    ``logprobs`` (sampled-token logprobs in ``logprobs.content``), vLLM's
    ``return_token_ids`` and ``continue_final_message``; ``usage`` comes from the
    backend's own token counts. Generation runs in worker threads, one request at a time
    unless the backend is ``thread_safe``.
    """
    import threading

    from .generation import ChatMessage, GenerationRequest

    app = FastAPI(title="jointopt engine server")
    app.state.backend = backend
    app.state.lock = None if getattr(backend, "thread_safe", False) else threading.Lock()

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(400, f"invalid request: {exc.errors()[:3]}",
                               "invalid_request_error")

    def _generate(request: GenerationRequest) -> Any:
        lock = app.state.lock
        if lock is None:
            return backend.generate([request])[0]
        with lock:
            return backend.generate([request])[0]

    @app.post("/v1/chat/completions")
    async def chat(body: dict[str, Any]) -> JSONResponse:
        try:
            messages = [ChatMessage(m["role"], str(m.get("content") or ""))
                        for m in body["messages"]]
            continuation = ""
            if body.get("continue_final_message") and messages and \
                    messages[-1].role == "assistant":
                continuation = messages[-1].content
                messages = messages[:-1]
            stop = body.get("stop") or ()
            request = GenerationRequest(
                messages=tuple(messages), n=int(body.get("n") or 1),
                temperature=float(body.get("temperature", 1.0)),
                max_tokens=int(body.get("max_tokens") or 16),
                top_p=float(body.get("top_p", 1.0)),
                logprobs=bool(body.get("logprobs", False)),
                stop=(stop,) if isinstance(stop, str) else tuple(stop),
                seed=body.get("seed"), continuation=continuation,
            )
        except (KeyError, TypeError, ValueError) as exc:
            return _error_response(400, f"invalid request: {exc!r}", "invalid_request_error")
        try:
            result = await asyncio.to_thread(_generate, request)
        except JointoptError as exc:
            return _error_response(400, str(exc), "invalid_request_error")
        choices = []
        for i, c in enumerate(result.completions):
            choice: dict[str, Any] = {
                "index": i, "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason, "logprobs": None,
            }
            if request.logprobs and c.logprobs is not None:
                choice["logprobs"] = {"content": [
                    {"token": f"token_id:{t}", "logprob": lp, "bytes": None, "top_logprobs": []}
                    for t, lp in zip(c.token_ids, c.logprobs)]}
            if body.get("return_token_ids"):
                choice["token_ids"] = list(c.token_ids)
            choices.append(choice)
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": model_name, "choices": choices,
            "usage": {"prompt_tokens": result.prompt_tokens,
                      "completion_tokens": result.completion_tokens,
                      "total_tokens": result.total_tokens},
        })

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "jointopt"}]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


# ------------------------------------------------------------------------------ threads


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread (tests, notebooks).

    >>> with ServerThread(app) as server:
    ...     httpx.get(server.url + "/health")

    Args:
        app: the ASGI app.
        host: interface to bind.
        port: port to bind; 0 picks a free one (see :attr:`port` after start).
        startup_timeout: seconds to wait for the server to listen.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0,
                 startup_timeout: float = 10.0) -> None:
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="on",
            timeout_graceful_shutdown=2))
        self._host = host
        self._timeout = startup_timeout
        self._thread: Any = None

    @property
    def port(self) -> int:
        servers = getattr(self._server, "servers", None) or []
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("the server is not listening")

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self._host}:{self.port}"

    def start(self) -> "ServerThread":
        import threading

        self._thread = threading.Thread(target=self._server.run, name="jointopt-uvicorn",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------ entry


def serve(
    policy_path: str | Path,
    upstream_url: str | list[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    timeout: float = 60.0,
    max_concurrency: int = 8,
    queue_timeout: float = 30.0,
    api_key_env: str | None = None,
    upstream_model: str | None = None,
    model_name: str | None = None,
    max_retries: int = 2,
    send_seed: bool = True,
    token_ids: bool = False,
    log_level: str = "info",
) -> None:
    """Serve a policy file in front of an OpenAI-compatible upstream (blocks until stopped).

    Args:
        policy_path: the policy file (``jointopt export`` writes ``policy.yaml``).
        upstream_url: the upstream API root(s), e.g. ``http://127.0.0.1:8000/v1``.
        host, port: where the proxy listens.
        timeout: seconds per request (also the upstream read timeout).
        max_concurrency: requests answered at once (also upstream connections).
        queue_timeout: seconds a request may wait for a slot before a 503.
        api_key_env: environment variable holding the upstream API key.
        upstream_model: the upstream's model name (default: the first of its
            ``GET /models``).
        model_name: the model id clients see.
        max_retries: upstream retries on connection errors, 429 and 5xx.
        send_seed: send per-request seeds upstream.
        token_ids: ask the upstream (vLLM) for token ids.
        log_level: uvicorn log level.

    Raises:
        ConfigError: the policy file is invalid.
        BackendError: bad upstream options (URL, missing API-key variable).
    """
    import uvicorn

    from .backends.openai import OpenAIBackend
    from .runtime import load_policy

    settings = ServeSettings(timeout=timeout, max_concurrency=max_concurrency,
                             queue_timeout=queue_timeout, model_name=model_name)
    backend = OpenAIBackend(
        upstream_url, upstream_model, api_key_env=api_key_env, timeout=timeout,
        max_retries=max_retries, max_concurrency=max_concurrency, send_seed=send_seed,
        token_ids=token_ids,
    )
    try:
        runner = load_policy(policy_path, backend=backend)
    except BaseException:
        backend.close()
        raise
    app = create_app(runner, settings)
    log.info("serving policy %s (%s) on http://%s:%d/v1, upstream %s", policy_path,
             runner.policy.describe(), host, port, ", ".join(backend.base_urls))
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        backend.close()
