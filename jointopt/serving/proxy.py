"""An OpenAI-compatible proxy that answers every request with a tuned policy.

Clients talk to it as to any OpenAI server; behind it, the policy's runtime
(:class:`~jointopt.serving.runtime.PolicyRunner`) picks the input's difficulty bin and that
bin's strategy, makes every generation it needs on the upstream server (an
:class:`~jointopt.backends.openai.OpenAIBackend`, e.g. vLLM) and answers with the
aggregated answer::

    jointopt serve --policy out/policy.yaml --upstream http://127.0.0.1:8000/v1 \
        --api-key-file client_keys.txt

    client = openai.OpenAI(base_url="http://127.0.0.1:8100/v1", api_key="<a client key>")
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
  ``x-jointopt-ignored`` response header. ``stream: true`` is answered with server-sent
  events once the answer is decided (:mod:`jointopt.serving.stream`).
* ``POST /v1/completions``: the same with ``prompt`` as the input text.
* ``GET /health`` (no key needed): 200 when the upstream answers ``GET /models``, else
  503; it names no upstream URL.
* ``GET /v1/models``: the one model this proxy serves (the policy).

Security and limits (:class:`ServeSettings`, :mod:`jointopt.serving.security`): with client
API keys every path but ``/health`` needs ``Authorization: Bearer <key>`` (401 otherwise);
a client over ``rate_limit`` requests a minute gets 429; a body above ``max_body_bytes``
gets 413, an input above ``max_input_chars`` characters too; when ``max_concurrency``
requests run and ``max_waiting`` wait, more get 503 at once (``Retry-After``).

Responses: ``choices[0].message.content`` (``choices[0].text`` for completions) is the
aggregated answer (empty when no completion held an answer); ``usage`` counts every
token of every upstream call; the extension field ``jointopt`` holds the full chosen
text, the answer (or null), the bin, the strategy and per-call usage.

Errors use the OpenAI error body ``{"error": {"message", "type", "code"}}``: 400 for a
bad input (unknown or missing field, not JSON when JSON is needed), 422 for a body that
does not match the schema, 502 when the upstream is down or fails, 504 when the policy
does not finish within ``timeout`` seconds or the upstream times out, 503 when no slot
frees within ``queue_timeout`` seconds. Upstream failures reach the client as a generic
message with an error id; the details (masked) are in the proxy's log under that id, so
no upstream URL, key or error body reaches a client.

:func:`create_engine_app` is the other direction: an OpenAI-compatible server in front of
any jointopt :class:`~jointopt.backends.Backend` (the scripted backend for offline tests
and demos, or an in-process engine).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import traceback
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from jointopt.safety import secrets as _secrets
from jointopt.errors import BackendError, ConfigError, DataError, TemplateError
from jointopt.serving.engine_server import ServerThread, create_engine_app, error_response
from jointopt.serving.security import ApiKeys, GuardMiddleware, RateLimiter
from jointopt.serving.stream import chat_chunks, completion_chunks, event_stream

if TYPE_CHECKING:
    from jointopt.serving.runtime import Answer, PolicyRunner

__all__ = ["DEFAULT_MAX_INPUT_CHARS", "ServeSettings", "ServerThread", "create_app",
           "create_engine_app", "serve"]

log = logging.getLogger(__name__)

#: Request fields a policy proxy reads; every other sampling field is ignored.
_READ_FIELDS = frozenset({"model", "messages", "prompt", "inputs", "difficulty", "stream",
                          "n", "user", "stream_options"})


#: Default cap on an input's characters (all fields), when neither the settings nor the
#: policy file (``metadata.serving.max_input_chars``) give one.
DEFAULT_MAX_INPUT_CHARS = 100_000


@dataclass(frozen=True)
class ServeSettings:
    """How the proxy runs.

    Attributes:
        timeout: seconds one request may take (queue wait excluded) before a 504.
        max_concurrency: requests answered at once; more wait for a slot.
        queue_timeout: seconds a request may wait for a slot before a 503.
        model_name: the model id clients see (default ``jointopt-<prompt id>``).
        upstream: URLs of the upstream servers (for the server log, passwords masked;
            never shown to clients).
        max_waiting: requests that may wait for a slot; more get a 503 at once.
        api_keys: client keys (strings or :class:`~jointopt.serving.security.ApiKeys`);
            empty: no authentication. Never shown in ``repr``.
        max_body_bytes: largest request body (413 above).
        max_input_chars: largest input, in characters over all its fields (413 above);
            None: the policy file's ``metadata.serving.max_input_chars``, else 100000.
        rate_limit: requests per minute per client key (per address without keys);
            0: no limit.
    """

    timeout: float = 60.0
    max_concurrency: int = 8
    queue_timeout: float = 30.0
    model_name: str | None = None
    upstream: tuple[str, ...] = ()
    max_waiting: int = 64
    api_keys: "ApiKeys | tuple[str, ...]" = field(default=(), repr=False)
    max_body_bytes: int = 1_048_576
    max_input_chars: int | None = None
    rate_limit: int = 600

    def __post_init__(self) -> None:
        for name in ("timeout", "queue_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"`{name}` must be a number of seconds > 0", where=name,
                                  value=value, fix="e.g. 60")
        for name, low, example in (("max_concurrency", 1, 8), ("max_waiting", 0, 64),
                                   ("max_body_bytes", 1, 1_048_576), ("rate_limit", 0, 600),
                                   ("max_input_chars", 1, 100_000)):
            value = getattr(self, name)
            if value is None and name == "max_input_chars":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"`{name}` must be an integer >= {low}", where=name,
                                  value=value, fix=f"e.g. {example}")
        if not isinstance(self.api_keys, ApiKeys):
            keys = (self.api_keys,) if isinstance(self.api_keys, str) else self.api_keys
            object.__setattr__(self, "api_keys", ApiKeys.of(keys))


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
    stream_options: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    difficulty: str | int | None = None


class _CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | list[str]
    n: int | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
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


def _error_id() -> str:
    return "err-" + uuid.uuid4().hex[:12]


def _status_of(exc: BaseException) -> _HTTPError:
    """Map an error raised while answering to an HTTP status.

    A bad input (400) keeps its message (it is about the client's own input). Anything
    else gets a generic message with an error id; the details, masked, go to the log.
    """
    from jointopt.backends.openai import UpstreamError

    if isinstance(exc, (DataError, TemplateError, ConfigError)):
        return _HTTPError(400, _secrets.redact(str(exc)), "invalid_request_error")
    error_id = _error_id()
    see = f"error id {error_id}; the details are in the proxy's log"
    if isinstance(exc, BackendError):
        kind = getattr(exc, "kind", None)
        log.warning("upstream failure [%s]: %s", error_id, _secrets.redact(str(exc)))
        if kind == "timeout":
            return _HTTPError(504, f"upstream timeout: the upstream server did not answer in "
                                   f"time ({see})", "upstream_timeout")
        if kind == "unreachable":
            return _HTTPError(502, f"upstream unreachable ({see})", "upstream_error")
        status = getattr(exc, "status", None) if isinstance(exc, UpstreamError) else None
        said = f"the upstream server answered HTTP {status}" if status else \
            "the upstream server failed"
        return _HTTPError(502, f"upstream error: {said} ({see})", "upstream_error")
    log.error("internal error [%s]: %s", error_id, _secrets.redact(
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))
    return _HTTPError(500, f"internal error ({see})", "server_error")


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


def _check_size(inputs: Mapping[str, Any], limit: int) -> None:
    if not isinstance(inputs, Mapping):
        return  # the runner refuses it with a 400
    size = sum(len(v) if isinstance(v, str) else len(str(v)) for v in inputs.values())
    if size > limit:
        raise _HTTPError(413, f"the input has {size} characters, above this proxy's limit of "
                              f"{limit} (max_input_chars); send a shorter input",
                         "invalid_request_error")


def _ignored(body: BaseModel) -> list[str]:
    extra = set((body.model_extra or {}).keys())
    return sorted(k for k in extra if k not in _READ_FIELDS)


def _include_usage(body: _ChatRequest | _CompletionRequest) -> bool:
    """Check ``n`` and ``stream_options``; True when the stream should end with usage."""
    if body.n not in (None, 1):
        raise _HTTPError(400, f"n={body.n}: the policy decides how many samples to draw and "
                              "returns one aggregated answer; send n=1 or leave it out",
                         "invalid_request_error")
    options = body.stream_options or {}
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        raise _HTTPError(400, f"stream_options.include_usage must be true or false, got "
                              f"{usage!r}", "invalid_request_error")
    return usage


def _max_input_chars(runner: "PolicyRunner", settings: ServeSettings) -> int:
    if settings.max_input_chars is not None:
        return settings.max_input_chars
    serving = runner.policy.metadata.get("serving") or {}
    value = serving.get("max_input_chars") if isinstance(serving, Mapping) else None
    return int(value) if isinstance(value, int) and value > 0 else DEFAULT_MAX_INPUT_CHARS


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
        settings: timeouts, concurrency, limits, client keys, model name, upstream URLs;
            the keyword arguments override single fields of it.

    All state (runner, settings, the semaphore and the worker threads) lives on
    ``app.state``; the worker threads stop when the app shuts down. Logs are masked by
    :func:`jointopt.safety.secrets.install_log_redaction` (which :func:`serve` installs; call it
    yourself when serving the app another way).
    """
    base = settings or ServeSettings()
    overrides = {k: v for k, v in (("timeout", timeout), ("max_concurrency", max_concurrency),
                                   ("queue_timeout", queue_timeout), ("model_name", model_name))
                 if v is not None}
    upstream = base.upstream or tuple(getattr(runner.backend, "base_urls", ()))
    settings = dataclasses.replace(base, **overrides, upstream=tuple(upstream))
    served = settings.model_name or f"jointopt-{runner.policy.prompt.id}"
    input_limit = _max_input_chars(runner, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        app.state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="jointopt policy proxy", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.add_middleware(GuardMiddleware, keys=settings.api_keys,
                       limiter=RateLimiter(settings.rate_limit),
                       max_body_bytes=settings.max_body_bytes)
    app.state.runner = runner
    app.state.settings = settings
    app.state.model_name = served
    app.state.executor = ThreadPoolExecutor(max_workers=settings.max_concurrency,
                                            thread_name_prefix="jointopt-serve")
    app.state.semaphore = asyncio.Semaphore(settings.max_concurrency)
    app.state.waiting = 0

    @app.exception_handler(_HTTPError)
    async def _on_http_error(request: Request, exc: _HTTPError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.kind, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()[:5])
        return error_response(422, f"invalid request body: {problems}",
                              "invalid_request_error")

    def _busy(reason: str) -> _HTTPError:
        return _HTTPError(503, f"the proxy is busy: {reason}; retry later", "server_busy",
                          {"Retry-After": "1"})

    async def _slot(state: Any) -> None:
        if state.semaphore.locked() and state.waiting >= settings.max_waiting:
            raise _busy(f"all {settings.max_concurrency} slots are in use and "
                        f"{state.waiting} requests wait (max_waiting)")
        state.waiting += 1
        try:
            await asyncio.wait_for(state.semaphore.acquire(), settings.queue_timeout)
        except asyncio.TimeoutError:
            raise _busy(f"all {settings.max_concurrency} slots stayed in use for "
                        f"{settings.queue_timeout:g}s") from None
        finally:
            state.waiting -= 1

    async def _answer(request: Request, inputs: Mapping[str, Any],
                      difficulty: str | int | None) -> "Answer":
        _check_size(inputs, input_limit)
        state = request.app.state
        await _slot(state)
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
            if mapped.status < 500:
                log.info("request refused (%d): %s", mapped.status, mapped.message)
            raise mapped from None

    def _extension(answer: "Answer") -> dict[str, Any]:
        out = answer.to_dict()
        out["policy"] = runner.policy.prompt.id
        return out

    def _headers(body: BaseModel) -> dict[str, str]:
        ignored = _ignored(body)
        return {"x-jointopt-ignored": ",".join(ignored)} if ignored else {}

    def _reply(body: _ChatRequest | _CompletionRequest, answer: "Answer", usage_chunk: bool,
               chat: bool) -> Any:
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created, content = int(time.time()), answer.answer or ""
        if body.stream:
            make = chat_chunks if chat else completion_chunks
            return event_stream(make(id=ident, created=created, model=served, content=content,
                                     usage=answer.usage.to_dict(), include_usage=usage_chunk,
                                     extension=_extension(answer)), _headers(body))
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": content}} if chat
            else {"index": 0, "text": content})
        choice.update(finish_reason="stop", logprobs=None)
        return JSONResponse({
            "id": ident, "object": "chat.completion" if chat else "text_completion",
            "created": created, "model": served, "choices": [choice],
            "usage": answer.usage.to_dict(), "jointopt": _extension(answer),
        }, headers=_headers(body))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: _ChatRequest, request: Request) -> Any:
        usage_chunk = _include_usage(body)
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
        return _reply(body, answer, usage_chunk, chat=True)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: _CompletionRequest, request: Request) -> Any:
        usage_chunk = _include_usage(body)
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
        return _reply(body, answer, usage_chunk, chat=False)

    @app.get("/health")
    async def health() -> JSONResponse:
        check = getattr(runner.backend, "health", None)
        upstream = await asyncio.to_thread(check) if callable(check) else {}
        states = [_health_word(v) for v in upstream.values()]
        ok = all(v == "ok" for v in states)
        if not ok:
            log.debug("upstream health: %s", _secrets.redact(
                "; ".join(f"{_secrets.safe_url(k)}: {v}" for k, v in upstream.items())))
        return JSONResponse(status_code=200 if ok else 503, content={
            "status": "ok" if ok else "upstream unavailable",
            "model": served,
            "policy": runner.policy.prompt.id,
            "upstream": states,
        })

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": served, "object": "model", "created": 0, "owned_by": "jointopt",
        }]}

    return app


def _health_word(state: Any) -> str:
    """``ok``, ``unreachable`` or ``HTTP <status>``: an upstream's state without its URL
    or error body."""
    text = str(state)
    if text == "ok":
        return "ok"
    if text.startswith("HTTP "):
        return text.split(":", 1)[0]
    return "unreachable" if text.startswith("unreachable") else "error"


# ------------------------------------------------------------------------------ entry


def serve(
    policy_path: str | Path,
    upstream_url: str | list[str],
    host: str = "127.0.0.1",
    port: int = 8100,
    *,
    timeout: float = 60.0,
    max_concurrency: int = 8,
    queue_timeout: float = 30.0,
    max_waiting: int = 64,
    api_key_env: str | None = None,
    upstream_model: str | None = None,
    model_name: str | None = None,
    max_retries: int = 2,
    send_seed: bool = True,
    token_ids: bool = False,
    log_level: str = "info",
    api_key_file: str | Path | None = None,
    allow_unauthenticated: bool = False,
    allow_verifiers: list[str] | tuple[str, ...] = (),
    max_body_bytes: int = 1_048_576,
    max_input_chars: int | None = None,
    rate_limit: int = 600,
) -> None:
    """Serve a policy file in front of an OpenAI-compatible upstream (blocks until stopped).

    Args:
        policy_path: the policy file (``jointopt export`` writes ``policy.yaml``).
        upstream_url: the upstream API root(s), e.g. ``http://127.0.0.1:8000/v1``.
        host, port: where the proxy listens (port 0: any free port).
        timeout: seconds per request (also the upstream read timeout).
        max_concurrency: requests answered at once (also upstream connections).
        queue_timeout: seconds a request may wait for a slot before a 503.
        max_waiting: requests that may wait for a slot; more get a 503 at once.
        api_key_env: environment variable holding the upstream API key.
        upstream_model: the upstream's model name (default: the first of its
            ``GET /models``).
        model_name: the model id clients see.
        max_retries: upstream retries on connection errors, 429 and 5xx.
        send_seed: send per-request seeds upstream.
        token_ids: ask the upstream (vLLM) for token ids.
        log_level: uvicorn log level (``info``: one access-log line per request).
        api_key_file: client keys, one per line (``$JOINTOPT_API_KEYS`` adds more).
        allow_unauthenticated: listen on a non-loopback host without client keys.
        allow_verifiers: modules the policy's verifier may be imported from, besides
            jointopt's own.
        max_body_bytes, max_input_chars, rate_limit: see :class:`ServeSettings`.

    Raises:
        ConfigError: the policy file, a limit, the port, the client keys are invalid, or
            a non-loopback host without keys.
        BackendError: bad upstream options (URL, missing API-key variable).
    """
    import uvicorn

    from jointopt.backends.openai import OpenAIBackend
    from jointopt.serving.runtime import load_policy
    from jointopt.serving.security import check_bind, check_port, load_api_keys

    _secrets.install_log_redaction()
    check_port(port)
    keys = load_api_keys(api_key_file)
    check_bind(host, authenticated=bool(keys), allow_unauthenticated=allow_unauthenticated)
    settings = ServeSettings(timeout=timeout, max_concurrency=max_concurrency,
                             queue_timeout=queue_timeout, max_waiting=max_waiting,
                             model_name=model_name, api_keys=keys,
                             max_body_bytes=max_body_bytes, max_input_chars=max_input_chars,
                             rate_limit=rate_limit)
    backend = OpenAIBackend(
        upstream_url, upstream_model, api_key_env=api_key_env, timeout=timeout,
        max_retries=max_retries, max_concurrency=max_concurrency, send_seed=send_seed,
        token_ids=token_ids,
    )
    try:
        runner = load_policy(policy_path, backend=backend, allow_verifiers=allow_verifiers)
    except BaseException:
        backend.close()
        raise
    app = create_app(runner, settings)
    log.info("serving policy %s (%s) on http://%s:%d/v1, upstream %s, %s", policy_path,
             runner.policy.describe(), host, port,
             ", ".join(_secrets.safe_url(u) for u in backend.base_urls),
             f"{len(keys)} client key(s)" if keys else "NO client authentication")
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
    finally:
        backend.close()
