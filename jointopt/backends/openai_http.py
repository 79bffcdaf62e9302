"""Errors and HTTP helpers of the OpenAI-compatible backend: the error type, base URLs,
body excerpts and the fix to suggest for an HTTP status."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from jointopt.errors import BackendError

log = logging.getLogger("jointopt.backends.openai")

if TYPE_CHECKING:
    from jointopt.backends.base import BackendSettings

__all__ = ["UpstreamError", "normalize_base_url"]

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_EXCERPT = 300


class UpstreamError(BackendError):
    """The OpenAI-compatible server failed a request.

    Attributes:
        kind: ``unreachable``, ``timeout``, ``http`` or ``protocol``.
        status: the HTTP status for ``http`` errors, else None.
        url: the URL that failed.
    """

    def __init__(self, message: str, *, kind: str, url: str, status: int | None = None,
                 fix: str | None = None) -> None:
        self.kind = kind
        self.status = status
        self.url = url
        super().__init__(message, where=url, fix=fix)


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; a URL with a path is kept as given.

    Raises:
        BackendError: not an ``http(s)://host[:port][/path]`` URL.
    """
    if not isinstance(url, str) or not url.strip():
        raise BackendError("the server URL must be a non-empty string", where="base_url",
                           value=url, fix="e.g. http://127.0.0.1:8000/v1")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BackendError("the server URL must start with http:// or https:// and name a host",
                           where="base_url", value=url, fix="e.g. http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/")
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def excerpt(response: Any) -> str:
    try:
        data = response.json()
    except Exception:  # noqa: BLE001 - any body
        data = None
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err:
            text = str(err)
            return text if len(text) <= _EXCERPT else text[: _EXCERPT - 3] + "..."
    text = response.text.strip().replace("\n", " ")
    return (text if len(text) <= _EXCERPT else text[: _EXCERPT - 3] + "...") or "(empty body)"


UNREACHABLE_FIX = ("start the server (python -m vllm.entrypoints.openai.api_server --config "
                    "vllm_serve.yaml) or check the URL")


def http_fix(status: int) -> str:
    if status in (401, 403):
        return "check the API key (the environment variable named by api_key_env)"
    if status == 404:
        return "check the URL (it usually ends in /v1) and the model name"
    if status == 429:
        return "the server is rate-limiting: lower max_concurrency or retry later"
    if status >= 500:
        return "the server failed; check its log"
    return "check the request parameters against the server's limits (e.g. max_model_len)"


def send_with_retries(client: Any, method: str, url_for: Callable[[int], str],
                      body: Any, *, attempts: int, timeout: float,
                      delay: Callable[[int, Any], float]) -> Any:
    """One API call with ``attempts`` tries (``url_for(attempt)`` names the URL of each;
    ``delay(attempt, response)`` the pause before the next); returns the decoded JSON body.
    Connection errors, 429 and 5xx are retried; a timeout or another status raises at once.
    """
    import httpx

    last: UpstreamError | None = None
    for attempt in range(attempts):
        url = url_for(attempt)
        response = None
        try:
            response = client.request(method, url, json=body)
        except httpx.ConnectTimeout as exc:
            last = UpstreamError(
                f"cannot connect to the OpenAI-compatible server ({type(exc).__name__})",
                kind="unreachable", url=url, fix=UNREACHABLE_FIX)
        except httpx.TimeoutException as exc:
            raise UpstreamError(
                f"the server did not answer within {timeout:g}s ({type(exc).__name__})",
                kind="timeout", url=url,
                fix="raise the timeout, or lower max_tokens / n / the number of "
                    "concurrent requests") from None
        except httpx.TransportError as exc:
            last = UpstreamError(
                f"cannot reach the OpenAI-compatible server ({type(exc).__name__}: {exc})",
                kind="unreachable", url=url, fix=UNREACHABLE_FIX)
        else:
            if response.status_code < 400:
                try:
                    return response.json()
                except ValueError:
                    raise UpstreamError(
                        f"the server answered HTTP {response.status_code} with a body that "
                        f"is not JSON: {excerpt(response)}",
                        kind="protocol", url=url,
                        fix="check that the URL points at an OpenAI-compatible API "
                            "(it usually ends in /v1)") from None
            error = UpstreamError(
                f"the server answered HTTP {response.status_code}: {excerpt(response)}",
                kind="http", url=url, status=response.status_code,
                fix=http_fix(response.status_code))
            if response.status_code not in RETRY_STATUS:
                raise error
            last = error
        if attempt + 1 < attempts:
            pause = delay(attempt, response)
            log.debug("retrying %s in %.2fs after: %s", url, pause, last.message)
            time.sleep(pause)
    if last is None:  # pragma: no cover - the loop always runs once
        raise BackendError("no attempt was made", where="OpenAIBackend")
    if attempts > 1:
        raise UpstreamError(f"{last.message} (after {attempts} attempts)", kind=last.kind,
                            url=last.url, status=last.status, fix=last.fix)
    raise last


def check_settings(*, timeout: float, connect_timeout: float, backoff: float,
                   max_backoff: float, max_retries: int, max_concurrency: int,
                   continuation: str) -> None:
    """Raise a :class:`BackendError` for a timeout, retry or concurrency setting out of range."""
    for label, value, low in (("timeout", timeout, 0.0), ("connect_timeout", connect_timeout, 0.0),
                              ("backoff", backoff, 0.0), ("max_backoff", max_backoff, 0.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low \
                or (label in ("timeout", "connect_timeout") and value == 0):
            raise BackendError(f"`{label}` must be a number > 0", where=label, value=value,
                               fix="use seconds, e.g. 30")
    for label, value, low in (("max_retries", max_retries, 0),
                              ("max_concurrency", max_concurrency, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise BackendError(f"`{label}` must be an integer >= {low}", where=label,
                               value=value, fix=f"use an integer >= {low}")
    if continuation not in ("prefill", "error"):
        raise BackendError("unknown continuation mode", where="continuation",
                           value=continuation, fix="use 'prefill' or 'error'")


def read_api_key(api_key_env: str) -> str:
    """The API key in the environment variable ``api_key_env``, registered for masking."""
    from jointopt.safety import secrets as _secrets

    key = os.environ.get(api_key_env)
    if not key:
        raise BackendError(f"the environment variable {api_key_env} is not set",
                           where="api_key_env",
                           fix=f"export {api_key_env}=... before starting, or drop "
                               "the API key option for a server without keys")
    _secrets.register(key)  # masked in every log line and message
    return key


def base_url_list(base_url: str | Sequence[str]) -> tuple[str, ...]:
    """The normalized API roots given as one URL or several (their passwords get masked)."""
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    if not urls:
        raise BackendError("give at least one server URL", where="base_url", value=urls,
                           fix="e.g. http://127.0.0.1:8000/v1")
    bases = tuple(normalize_base_url(u) for u in urls)
    from jointopt.safety import secrets as _secrets

    for base in bases:  # a URL password is masked wherever it shows up
        _secrets.register_url(base)
    return bases


def make_client(api_key: str | None, headers: Mapping[str, str] | None, *, timeout: float,
                connect_timeout: float, max_concurrency: int, transport: Any) -> Any:
    """The ``httpx.Client`` that sends every request (API key, headers, timeouts, pool size)."""
    import httpx

    send_headers = {"User-Agent": "jointopt"}
    send_headers.update(headers or {})
    if api_key:
        send_headers["Authorization"] = f"Bearer {api_key}"
    limits = httpx.Limits(max_connections=max_concurrency + 2,
                          max_keepalive_connections=max_concurrency)
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=float(connect_timeout)),
        headers=send_headers, limits=limits, transport=transport,
    )


def kwargs_from_settings(settings: "BackendSettings") -> dict[str, Any]:
    """:class:`~jointopt.backends.openai.OpenAIBackend` arguments from a study config's
    settings: the server URLs and the API key header (read here, never stored in them)."""
    from jointopt.safety.secrets import read_api_key

    engine = dict(settings.engine)
    headers = dict(engine.pop("headers", None) or {})
    env = settings.api_key_env or engine.pop("api_key_env", None)
    engine.pop("api_key_env", None)
    key = read_api_key(env=env, file=str(settings.api_key_file) if settings.api_key_file
                       else None)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if headers:
        engine["headers"] = headers
    urls = list(settings.base_urls) or engine.pop("base_url", None) or "http://127.0.0.1:8000/v1"
    engine.pop("base_url", None)
    return dict(base_url=urls, model=settings.model, seed=settings.seed,
                max_model_len=settings.max_model_len, engine_kwargs=engine)


def server_urls(settings: "BackendSettings") -> tuple[list[str], str]:
    """The server URLs of the settings (``model.base_urls``, else ``engine.base_url``) and
    the field they come from."""
    urls, where = list(settings.base_urls), "model.base_urls"
    engine_urls = settings.engine.get("base_url")
    if not urls and engine_urls:
        urls = [engine_urls] if isinstance(engine_urls, str) else list(engine_urls)
        where = "model.engine.base_url"
    return urls, where


def check_server_urls(settings: "BackendSettings") -> None:
    """The settings name at least one server (``model.base_urls`` or ``engine.base_url``),
    each URL well-formed and without credentials (before any compute)."""
    from jointopt.errors import ConfigError, JointoptError

    urls, where = server_urls(settings)
    if not urls:
        raise ConfigError("backend: openai needs the URL of at least one server",
                          where="model.base_urls",
                          fix="e.g. base_urls: [http://127.0.0.1:8000/v1]")
    for i, url in enumerate(urls):
        try:
            normalize_base_url(url)
            userinfo = urlsplit(str(url)).username is not None
        except (JointoptError, ValueError) as exc:
            message = exc.message if isinstance(exc, JointoptError) else str(exc)
            raise ConfigError(message, where=f"{where}[{i}]", value=url,
                              fix="e.g. http://127.0.0.1:8000/v1") from None
        if userinfo:
            raise ConfigError("server URLs must not hold credentials (user@ or user:password@; "
                              "the value is not shown)", where=f"{where}[{i}]",
                              fix="give the key with model.api_key_env or model.api_key_file")
