"""The routes of the policy proxy: chat and text completions (each answered by the policy
in a worker thread, within the proxy's concurrency, queue and time limits), ``/health``
and ``/v1/models``."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from jointopt.safety import secrets as _secrets
from jointopt.serving.errors import HTTPError, busy, status_of
from jointopt.serving.inputs import (
    ChatRequest,
    CompletionRequest,
    check_size,
    ignored_fields,
    include_usage,
    inputs_from_text,
    text_of,
)
from jointopt.serving.stream import chat_chunks, completion_chunks, event_stream

if TYPE_CHECKING:
    from jointopt.serving.proxy import ServeSettings
    from jointopt.serving.runtime import Answer, PolicyRunner

__all__ = ["add_completion_routes", "add_info_routes"]

# The proxy's log (refused requests, upstream health).
log = logging.getLogger("jointopt.serving.proxy")


async def _slot(state: Any, settings: "ServeSettings") -> None:
    """Wait for a free slot (503 when too many wait or none frees in time)."""
    if state.semaphore.locked() and state.waiting >= settings.max_waiting:
        raise busy(f"all {settings.max_concurrency} slots are in use and "
                   f"{state.waiting} requests wait (max_waiting)")
    state.waiting += 1
    try:
        await asyncio.wait_for(state.semaphore.acquire(), settings.queue_timeout)
    except asyncio.TimeoutError:
        raise busy(f"all {settings.max_concurrency} slots stayed in use for "
                   f"{settings.queue_timeout:g}s") from None
    finally:
        state.waiting -= 1


def _active(state: Any) -> "PolicyRunner":
    """The runner answering now (the monitor's active policy, when there is a monitor)."""
    monitor = getattr(state, "monitor", None)
    return monitor.active_runner if monitor is not None else state.runner


async def _answer(request: Request, inputs: Mapping[str, Any], difficulty: str | int | None,
                  settings: "ServeSettings", input_limit: int
                  ) -> tuple["Answer", "PolicyRunner"]:
    """The active policy's answer to ``inputs`` (computed in a worker thread within a
    slot), and the runner that gave it."""
    check_size(inputs, input_limit)
    state = request.app.state
    runner = _active(state)
    await _slot(state, settings)
    loop = asyncio.get_running_loop()
    try:
        future = loop.run_in_executor(
            state.executor, lambda: runner.answer(inputs, difficulty=difficulty))
    except RuntimeError:  # executor shut down
        state.semaphore.release()
        raise HTTPError(503, "the proxy is shutting down", "server_busy") from None
    # The slot is freed when the work really ends, not when the client gives up, so
    # at most max_concurrency policies ever run at once.
    future.add_done_callback(lambda _: state.semaphore.release())
    try:
        return await asyncio.wait_for(asyncio.shield(future), settings.timeout), runner
    except asyncio.TimeoutError:
        raise HTTPError(504, f"the policy did not finish within {settings.timeout:g}s "
                             "(the proxy's --timeout)", "timeout") from None
    except HTTPError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to a status
        mapped = status_of(exc)
        if mapped.status < 500:
            log.info("request refused (%d): %s", mapped.status, mapped.message)
        raise mapped from None


def _headers(body: BaseModel) -> dict[str, str]:
    ignored = ignored_fields(body)
    return {"x-jointopt-ignored": ",".join(ignored)} if ignored else {}


def _reply(body: ChatRequest | CompletionRequest, answer: "Answer", usage_chunk: bool,
           chat: bool, served: str, runner: "PolicyRunner", monitor: Any = None) -> Any:
    """The OpenAI response (JSON, or server-sent events for ``stream: true``); its id is
    remembered by the monitor for ``POST /v1/feedback``."""
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    if monitor is not None:
        monitor.record(ident, runner, answer)
    created, content = int(time.time()), answer.answer or ""
    extension = answer.to_dict()
    extension["policy"] = runner.policy.prompt.id
    if body.stream:
        make = chat_chunks if chat else completion_chunks
        return event_stream(make(id=ident, created=created, model=served, content=content,
                                 usage=answer.usage.to_dict(), include_usage=usage_chunk,
                                 extension=extension), _headers(body))
    choice: dict[str, Any] = (
        {"index": 0, "message": {"role": "assistant", "content": content}} if chat
        else {"index": 0, "text": content})
    choice.update(finish_reason="stop", logprobs=None)
    return JSONResponse({
        "id": ident, "object": "chat.completion" if chat else "text_completion",
        "created": created, "model": served, "choices": [choice],
        "usage": answer.usage.to_dict(), "jointopt": extension,
    }, headers=_headers(body))


def add_completion_routes(app: FastAPI, runner: "PolicyRunner", settings: "ServeSettings",
                          served: str, input_limit: int) -> None:
    """``POST /v1/chat/completions`` and ``POST /v1/completions``."""

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        usage_chunk = include_usage(body)
        if body.inputs is not None:
            inputs: Mapping[str, Any] = body.inputs
        else:
            users = [m for m in body.messages if m.role == "user"]
            text = text_of(users[-1].content) if users else None
            if text is None:
                raise HTTPError(400, "no user message with text content: the input is the "
                                     "content of the last user message", "invalid_request_error")
            inputs = inputs_from_text(_active(request.app.state), text)
        answer, used = await _answer(request, inputs, body.difficulty, settings, input_limit)
        return _reply(body, answer, usage_chunk, True, served, used,
                      getattr(request.app.state, "monitor", None))

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        usage_chunk = include_usage(body)
        if body.inputs is not None:
            inputs = body.inputs
        else:
            prompt = body.prompt
            if isinstance(prompt, list):
                if len(prompt) != 1:
                    raise HTTPError(400, "send one prompt per request", "invalid_request_error")
                prompt = prompt[0]
            inputs = inputs_from_text(_active(request.app.state), prompt)
        answer, used = await _answer(request, inputs, body.difficulty, settings, input_limit)
        return _reply(body, answer, usage_chunk, False, served, used,
                      getattr(request.app.state, "monitor", None))


def add_info_routes(app: FastAPI, runner: "PolicyRunner", served: str) -> None:
    """``GET /health`` (the upstream's state, no URL) and ``GET /v1/models``."""

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
            "policy": _active(app.state).policy.prompt.id,
            "upstream": states,
        })

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": served, "object": "model", "created": 0, "owned_by": "jointopt",
        }]}


def _health_word(state: Any) -> str:
    """``ok``, ``unreachable`` or ``HTTP <status>``: an upstream's state without its URL
    or error body."""
    text = str(state)
    if text == "ok":
        return "ok"
    if text.startswith("HTTP "):
        return text.split(":", 1)[0]
    return "unreachable" if text.startswith("unreachable") else "error"
