"""Errors of the policy proxy as OpenAI error bodies: the HTTP status of every failure,
with generic messages (and an error id to find the masked details in the proxy's log) for
anything that is not about the client's own input."""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from jointopt.errors import BackendError, ConfigError, DataError, TemplateError
from jointopt.safety import secrets as _secrets
from jointopt.serving.engine_server import error_response

__all__ = ["HTTPError", "add_error_handlers", "busy", "status_of"]

# The proxy's log: the details behind an error id are looked up there.
log = logging.getLogger("jointopt.serving.proxy")


class HTTPError(Exception):
    """A failure answered with ``status`` and an OpenAI error body."""

    def __init__(self, status: int, message: str, kind: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = dict(headers or {})


def _error_id() -> str:
    return "err-" + uuid.uuid4().hex[:12]


def status_of(exc: BaseException) -> HTTPError:
    """Map an error raised while answering to an HTTP status.

    A bad input (400) keeps its message (it is about the client's own input). Anything
    else gets a generic message with an error id; the details, masked, go to the log.
    """
    from jointopt.backends.openai import UpstreamError

    if isinstance(exc, (DataError, TemplateError, ConfigError)):
        return HTTPError(400, _secrets.redact(str(exc)), "invalid_request_error")
    error_id = _error_id()
    see = f"error id {error_id}; the details are in the proxy's log"
    if isinstance(exc, BackendError):
        kind = getattr(exc, "kind", None)
        log.warning("upstream failure [%s]: %s", error_id, _secrets.redact(str(exc)))
        if kind == "timeout":
            return HTTPError(504, f"upstream timeout: the upstream server did not answer in "
                                  f"time ({see})", "upstream_timeout")
        if kind == "unreachable":
            return HTTPError(502, f"upstream unreachable ({see})", "upstream_error")
        status = getattr(exc, "status", None) if isinstance(exc, UpstreamError) else None
        said = f"the upstream server answered HTTP {status}" if status else \
            "the upstream server failed"
        return HTTPError(502, f"upstream error: {said} ({see})", "upstream_error")
    log.error("internal error [%s]: %s", error_id, _secrets.redact(
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))
    return HTTPError(500, f"internal error ({see})", "server_error")


def busy(reason: str) -> HTTPError:
    """A 503 with ``Retry-After``: no slot for the request."""
    return HTTPError(503, f"the proxy is busy: {reason}; retry later", "server_busy",
                     {"Retry-After": "1"})


def add_error_handlers(app: FastAPI) -> None:
    """Answer :class:`HTTPError` and invalid request bodies (422) with OpenAI error bodies."""

    @app.exception_handler(HTTPError)
    async def _on_http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.kind, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()[:5])
        return error_response(422, f"invalid request body: {problems}",
                              "invalid_request_error")
