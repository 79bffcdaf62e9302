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
* ``POST /v1/feedback``: whether a response was correct (or its reference answer); a
  certified policy switches to the next safer certified one when its accuracy target is
  violated with confidence (:mod:`jointopt.serving.monitor`, :mod:`jointopt.serving.feedback`).
* ``GET /metrics``: requests, tokens, feedback, accuracy bounds and the active policy in
  Prometheus' text format (:mod:`jointopt.serving.metrics`).

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
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from jointopt.errors import ConfigError
from jointopt.safety import secrets as _secrets
from jointopt.serving.engine_server import ServerThread, create_engine_app
from jointopt.serving.errors import add_error_handlers
from jointopt.serving.monitor import MonitorSettings
from jointopt.serving.routes import add_completion_routes, add_info_routes
from jointopt.serving.security import ApiKeys, GuardMiddleware, RateLimiter

if TYPE_CHECKING:
    from jointopt.backends.openai import OpenAIBackend
    from jointopt.serving.monitor import PolicyMonitor
    from jointopt.serving.runtime import PolicyRunner

__all__ = ["DEFAULT_MAX_INPUT_CHARS", "ServeSettings", "ServerThread", "create_app",
           "create_engine_app", "serve"]

log = logging.getLogger(__name__)


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
    monitor: "PolicyMonitor | MonitorSettings | None" = None,
) -> FastAPI:
    """The policy proxy as a FastAPI app (serve it with uvicorn).

    Args:
        runner: answers the inputs (its backend is the upstream).
        settings: timeouts, concurrency, limits, client keys, model name, upstream URLs;
            the keyword arguments override single fields of it.
        monitor: the feedback monitor, or its settings (default: switch on a confident
            violation of the policy's certificate, when it has one).

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
    add_error_handlers(app)
    add_completion_routes(app, runner, settings, served, input_limit)
    add_info_routes(app, runner, served)
    from jointopt.serving.feedback import add_monitor_routes
    from jointopt.serving.monitor import PolicyMonitor, monitor_for

    app.state.monitor = monitor if isinstance(monitor, PolicyMonitor) else monitor_for(
        runner, monitor)
    add_monitor_routes(app)
    return app


# ------------------------------------------------------------------------------ entry


def _upstream_runner(policy_path: str | Path, allow_verifiers: list[str] | tuple[str, ...],
                     upstream: Any, *args: Any, **kwargs: Any) -> tuple["PolicyRunner", Any]:
    """The policy file's runner on an :class:`OpenAIBackend` built from ``upstream``,
    ``args`` and ``kwargs`` (closed when the policy does not load), and that backend. A
    mapping ``upstream`` (model name -> URL(s)) gives one upstream per model the policy
    calls, behind a :class:`~jointopt.backends.router.ModelRouter`."""
    from jointopt.backends.openai import OpenAIBackend
    from jointopt.serving.runtime import load_policy

    if isinstance(upstream, Mapping):
        ups: dict[str, OpenAIBackend] = {}
        try:
            for name, urls in upstream.items():
                ups[name] = OpenAIBackend(urls, *args, **kwargs)
            runner = load_policy(policy_path, backend=ups, allow_verifiers=allow_verifiers)
        except BaseException:
            for backend in ups.values():
                backend.close()
            raise
        return runner, runner.backend
    backend = OpenAIBackend(upstream, *args, **kwargs)
    try:
        return load_policy(policy_path, backend=backend, allow_verifiers=allow_verifiers), backend
    except BaseException:
        backend.close()
        raise


def serve(
    policy_path: str | Path,
    upstream_url: str | list[str] | Mapping[str, str | list[str]],
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
    rate_limit: int = 600, on_violation: str = "switch",
) -> None:
    """Serve a policy file in front of an OpenAI-compatible upstream (blocks until stopped).

    Args:
        policy_path: the policy file (``jointopt export`` writes ``policy.yaml``).
        upstream_url: upstream API root(s) (``http://127.0.0.1:8000/v1``), or model -> root(s).
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
        max_body_bytes, max_input_chars, rate_limit: see :class:`ServeSettings`;
            on_violation (``switch`` or ``alert``): see :class:`MonitorSettings`.

    Raises:
        ConfigError: the policy file, a limit, the port, the client keys are invalid, or
            a non-loopback host without keys.
        BackendError: bad upstream options (URL, missing API-key variable).
    """
    import uvicorn

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
    runner, backend = _upstream_runner(
        policy_path, allow_verifiers, upstream_url, upstream_model, api_key_env=api_key_env,
        timeout=timeout, max_retries=max_retries, max_concurrency=max_concurrency,
        send_seed=send_seed, token_ids=token_ids)
    app = create_app(runner, settings, monitor=MonitorSettings(on_violation))
    log.info("serving policy %s (%s) on http://%s:%d/v1, upstream %s, %s", policy_path,
             runner.policy.describe(), host, port,
             ", ".join(_secrets.safe_url(u) for u in backend.base_urls),
             f"{len(keys)} client key(s)" if keys else "NO client authentication")
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
    finally:
        backend.close()
