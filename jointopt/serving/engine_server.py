"""Servers for tests, demos and notebooks: an OpenAI-compatible server in front of any
jointopt :class:`~jointopt.backends.Backend` (:func:`create_engine_app`), and a uvicorn
server in a background thread (:class:`ServerThread`).

Both are re-exported by :mod:`jointopt.serving.proxy`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from jointopt.errors import JointoptError

if TYPE_CHECKING:
    from jointopt.backends.base import Backend
    from jointopt.core.generation import GenerationRequest, GenerationResult

__all__ = ["ServerThread", "create_engine_app", "error_response"]


def error_response(status: int, message: str, kind: str,
                   headers: Mapping[str, str] | None = None,
                   code: str | int | None = None) -> JSONResponse:
    """An OpenAI-style error: ``{"error": {"message", "type", "code"}}`` (code: the status
    unless given)."""
    return JSONResponse(status_code=status, headers=dict(headers or {}), content={
        "error": {"message": message, "type": kind, "code": status if code is None else code}})


def _generation_request(body: Mapping[str, Any]) -> "GenerationRequest":
    """The generation request of a chat-completions body (KeyError, TypeError or
    ValueError when it is malformed)."""
    from jointopt.core.generation import ChatMessage, GenerationRequest

    messages = [ChatMessage(m["role"], str(m.get("content") or "")) for m in body["messages"]]
    continuation = ""
    if body.get("continue_final_message") and messages and messages[-1].role == "assistant":
        continuation = messages[-1].content
        messages = messages[:-1]
    stop = body.get("stop") or ()
    return GenerationRequest(
        messages=tuple(messages), n=int(body.get("n") or 1),
        temperature=float(body.get("temperature", 1.0)),
        max_tokens=int(body.get("max_tokens") or 16),
        top_p=float(body.get("top_p", 1.0)),
        logprobs=bool(body.get("logprobs", False)),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        seed=body.get("seed"), continuation=continuation,
    )


def _choices(result: "GenerationResult", request: "GenerationRequest",
             body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The OpenAI ``choices`` of a generation result."""
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
    return choices


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

    app = FastAPI(title="jointopt engine server")
    app.state.backend = backend
    app.state.lock = None if getattr(backend, "thread_safe", False) else threading.Lock()

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, f"invalid request: {exc.errors()[:3]}",
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
            request = _generation_request(body)
        except (KeyError, TypeError, ValueError) as exc:
            return error_response(400, f"invalid request: {exc!r}", "invalid_request_error")
        try:
            result = await asyncio.to_thread(_generate, request)
        except JointoptError as exc:
            return error_response(400, str(exc), "invalid_request_error")
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": model_name,
            "choices": _choices(result, request, body),
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


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread (tests, notebooks).

    >>> with ServerThread(app) as server:
    ...     httpx.get(server.url + "/health")

    Args:
        app: the ASGI app.
        host: interface to bind.
        port: port to bind; 0 picks a free one (see :attr:`port` after start).
        startup_timeout: seconds to wait for the server to listen.
        log_level: uvicorn's log level (``info`` writes one access-log line per request).
        access_log: write uvicorn's access log.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0,
                 startup_timeout: float = 10.0, *, log_level: str = "warning",
                 access_log: bool = True) -> None:
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_level=log_level, access_log=access_log,
            lifespan="on", timeout_graceful_shutdown=2, server_header=False))
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
