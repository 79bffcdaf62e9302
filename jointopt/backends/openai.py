"""Generations from any OpenAI-compatible server (vLLM, llama.cpp, SGLang, TGI, OpenAI).

Each :class:`~jointopt.core.generation.GenerationRequest` becomes one ``POST
{base_url}/chat/completions`` with ``n``, ``temperature``, ``top_p``, ``max_tokens``,
``stop``, ``seed`` and ``logprobs`` (``top_logprobs: 0``: only the sampled token). The
requests of a batch are sent concurrently (at most ``max_concurrency`` at a time), so a
server with continuous batching (vLLM) batches them itself.

Token accounting (what the server says, never a guess where it says more):

* prompt tokens: ``usage.prompt_tokens`` of the response (counted once per request,
  whatever ``n``; this is also how vLLM and OpenAI report it).
* completion tokens of each choice: the engine's token ids when the server returns them
  (``token_ids=True`` asks vLLM for them with its ``return_token_ids`` extension); else
  the number of entries of the choice's ``logprobs.content`` (one per generated token);
  else, when neither is present, ``usage.completion_tokens`` is split across the choices
  in proportion to their text length (largest-remainder rounding). The total is then
  exact; only the split between choices of one request is an estimate. Token ids that
  the server did not return are ``-1`` placeholders (one per token).
* a server that returns fewer choices than ``n`` (llama.cpp ignores ``n``) is asked again
  for the missing ones; every extra request's prompt tokens are counted too.

``GenerationRequest.continuation`` (an assistant turn already started: MCTS prefixes,
revision contexts) is sent as a final assistant message with vLLM's chat extensions
``continue_final_message: true, add_generation_prompt: false`` (vLLM and SGLang; not the
OpenAI API); ``continuation="error"`` refuses such requests.

``GenerationRequest.thinking_budget`` is sent as vLLM's ``thinking_token_budget`` when the
server's reasoning markers are given (``thinking_markers``); the thought comes back apart
or inline and is split off, and a server that refuses the field is answered by two-phase
budget forcing instead (:mod:`jointopt.backends.openai_thinking`).

Failures become :class:`UpstreamError` (a :class:`~jointopt.errors.BackendError`) with a
``kind``: ``unreachable`` (connection refused/reset, DNS), ``timeout`` (no answer within
``timeout`` seconds; not retried, since the server may still be working on it), ``http``
(a status code, with an excerpt of the body) or ``protocol`` (a response that is not
the OpenAI format). Connection errors, HTTP 429 and 5xx are retried ``max_retries``
times with exponential backoff (``Retry-After`` honoured up to ``max_backoff``), moving
to the next ``base_url`` when several are given. The API key is read from the
environment variable named by ``api_key_env`` and never logged or shown.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, Literal

from jointopt.errors import BackendError
from jointopt.core.generation import Completion, GenerationRequest, GenerationResult, check_request
from jointopt.backends.base import Backend, BackendSettings
from jointopt.backends.openai_http import (
    UpstreamError, base_url_list, check_server_urls, check_settings, excerpt,
    kwargs_from_settings, make_client, normalize_base_url, read_api_key, send_with_retries,
    server_urls)
from jointopt.backends.openai_payloads import chat_body, parse_chat_completion
from jointopt.backends.openai_thinking import NO_MARKERS_FIX, ServerThinking, budget_rejected

__all__ = ["OpenAIBackend", "UpstreamError", "normalize_base_url"]

log = logging.getLogger(__name__)

class OpenAIBackend(Backend):
    """A :class:`Backend` in front of one or more OpenAI-compatible servers.

    Args:
        base_url: the API root (``http://127.0.0.1:8000/v1``; a bare ``host:port`` URL gets
            ``/v1``), or several roots: requests are spread round-robin over them and a
            retry moves to the next one.
        model: the model name the server serves. None: the first id of ``GET /models``
            (asked once, on first use).
        api_key_env: name of the environment variable holding the API key (sent as
            ``Authorization: Bearer``). None: no key. The value is never logged.
        timeout, connect_timeout: seconds to wait for a response / a connection.
        max_retries: further attempts after a connection error, HTTP 429 or 5xx.
        backoff, max_backoff: first retry delay in seconds (doubles each retry, with
            jitter) and cap on one delay (also on a server's ``Retry-After``).
        max_concurrency: requests in flight at once.
        send_seed: send ``GenerationRequest.seed`` as the request ``seed``.
        token_ids: ask for the engine's token ids (vLLM's ``return_token_ids``
            extension); other servers may reject the unknown field.
        continuation: ``"prefill"`` (see the module docstring) or ``"error"``.
        extra_body, headers: further fields of every request body; further HTTP headers.
        model_id: identifier in cache keys (default ``openai:<model>``).
        transport: an ``httpx`` transport (tests: ``httpx.MockTransport``).
        seed, max_model_len: accepted like every backend's; the server's settings apply.
        engine_kwargs: further keyword arguments of this class (``model.engine``).
        thinking_markers: the server's reasoning ``[start, end]`` strings: requests with a
            thinking budget are sent with vLLM's ``thinking_token_budget`` (see
            :mod:`jointopt.backends.openai_thinking`). None: the server has no thinking
            budget (``thinking_markers()`` is None; thinking bins use budget forcing).

    From a study config: ``model.base_urls`` and the key of ``api_key_env``/``api_key_file``.
    """

    name = "openai"
    #: Safe to call ``generate`` from several threads at once.
    thread_safe = True
    settings_keys = frozenset({"base_urls", "api_key_env", "api_key_file"})

    @classmethod
    def from_settings(cls, settings: BackendSettings) -> "OpenAIBackend":
        return cls(**kwargs_from_settings(settings))

    @classmethod
    def check_settings(cls, settings: BackendSettings) -> None:
        check_server_urls(settings)

    @classmethod
    def servers(cls, settings: BackendSettings) -> tuple[list[str], str]:
        return server_urls(settings)

    def __init__(
        self,
        base_url: str | Sequence[str] = "http://127.0.0.1:8000/v1",
        model: str | None = None,
        *,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_concurrency: int = 8,
        send_seed: bool = True,
        token_ids: bool = False,
        continuation: Literal["prefill", "error"] = "prefill",
        extra_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        model_id: str | None = None,
        transport: Any = None,
        thinking_markers: Sequence[str] | None = None,
        seed: int | None = None,
        max_model_len: int | None = None,
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        options: dict[str, Any] = dict(
            base_url=base_url, model=model, api_key_env=api_key_env, timeout=timeout,
            connect_timeout=connect_timeout, max_retries=max_retries, backoff=backoff,
            max_backoff=max_backoff, max_concurrency=max_concurrency, send_seed=send_seed,
            token_ids=token_ids, continuation=continuation, extra_body=extra_body,
            headers=headers, model_id=model_id, transport=transport,
            thinking_markers=thinking_markers,
        )
        if engine_kwargs:
            unknown = set(engine_kwargs) - set(options)
            if unknown:
                raise BackendError("unknown option for the openai backend",
                                   where="model.engine", value=sorted(unknown),
                                   fix=f"known options: {', '.join(sorted(options))}")
            options.update(engine_kwargs)
        self._configure(**options)

    def _configure(
        self,
        base_url: str | Sequence[str],
        model: str | None,
        api_key_env: str | None,
        timeout: float,
        connect_timeout: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
        max_concurrency: int,
        send_seed: bool,
        token_ids: bool,
        continuation: str,
        extra_body: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        model_id: str | None,
        transport: Any,
        thinking_markers: Sequence[str] | None,
    ) -> None:
        self._bases = base_url_list(base_url)
        check_settings(timeout=timeout, connect_timeout=connect_timeout, backoff=backoff,
                       max_backoff=max_backoff, max_retries=max_retries,
                       max_concurrency=max_concurrency, continuation=continuation)
        self._api_key: str | None = None
        self._api_key_env = api_key_env
        if api_key_env:
            self._api_key = read_api_key(api_key_env)
        self._model = model
        self._model_id = model_id
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_concurrency = max_concurrency
        self.send_seed = send_seed
        self.token_ids = token_ids
        self.continuation = continuation
        self._extra_body = dict(extra_body or {})
        self._thinking = ServerThinking(thinking_markers) if thinking_markers else None
        self._rng = random.Random(0)
        self._lock = threading.Lock()
        self._discover_lock = threading.Lock()
        self._next = 0
        self._warned: set[str] = set()
        self._client = make_client(self._api_key, headers, timeout=self.timeout,
                                   connect_timeout=connect_timeout,
                                   max_concurrency=max_concurrency, transport=transport)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency,
                                        thread_name_prefix="jointopt-openai")
        self._closed = False

    # ---------------------------------------------------------------- properties

    @property
    def base_urls(self) -> tuple[str, ...]:
        return self._bases

    @property
    def model(self) -> str:
        """The served model name (discovered with ``GET /models`` when not given)."""
        if self._model is None:
            with self._discover_lock:
                if self._model is None:
                    self._model = self._discover_model()
        return self._model

    @property
    def model_id(self) -> str:
        return self._model_id or f"openai:{self.model}"

    def __repr__(self) -> str:
        key = f", api_key_env={self._api_key_env!r}" if self._api_key_env else ""
        from jointopt.safety.secrets import safe_url

        urls = [safe_url(u) for u in self._bases]
        return f"OpenAIBackend(base_url={urls!r}, model={self._model!r}{key})"

    # ---------------------------------------------------------------- HTTP

    def _base_for(self, attempt_offset: int, start: int) -> str:
        return self._bases[(start + attempt_offset) % len(self._bases)]

    def _start(self) -> int:
        with self._lock:
            start = self._next
            self._next += 1
        return start

    def _delay(self, attempt: int, response: Any = None) -> float:
        if response is not None:
            after = response.headers.get("retry-after")
            if after:
                try:
                    return min(max(float(after), 0.0), self.max_backoff)
                except ValueError:
                    pass
        with self._lock:
            jitter = 0.5 + self._rng.random() / 2
        return min(self.backoff * (2 ** attempt), self.max_backoff) * jitter

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One call with retries; returns the decoded JSON body."""
        if self._closed:
            raise BackendError("the backend is closed", where="OpenAIBackend")
        start = self._start()
        return send_with_retries(
            self._client, method, lambda attempt: self._base_for(attempt, start) + path,
            body, attempts=self.max_retries + 1, timeout=self.timeout, delay=self._delay)

    def _discover_model(self) -> str:
        data = self._send("GET", "/models")
        models = data.get("data") if isinstance(data, dict) else None
        if not models or not isinstance(models, list) or "id" not in models[0]:
            raise UpstreamError("the server lists no models at GET /models",
                                kind="protocol", url=self._bases[0] + "/models",
                                fix="pass the model name (OpenAIBackend(model=...) or "
                                    "--upstream-model)")
        name = str(models[0]["id"])
        log.info("upstream serves model %r", name)
        return name

    def health(self) -> dict[str, str]:
        """``{base_url: "ok" | error message}`` from ``GET /models`` on every server."""
        out = {}
        for base in self._bases:
            try:
                response = self._client.get(base + "/models", timeout=min(self.timeout, 5.0))
                out[base] = "ok" if response.status_code < 400 else \
                    f"HTTP {response.status_code}: {excerpt(response)}"
            except Exception as exc:  # noqa: BLE001 - report, never raise
                out[base] = f"unreachable ({type(exc).__name__})"
        return out

    # ---------------------------------------------------------------- generate

    def body(self, request: GenerationRequest, n: int | None = None) -> dict[str, Any]:
        """The JSON body sent for ``request`` (``n`` overrides ``request.n``)."""
        body = chat_body(request, self.model, n=n, send_seed=self.send_seed,
                         token_ids=self.token_ids, continuation=self.continuation,
                         extra_body=self._extra_body)
        if request.thinking_budget is not None and self._thinking is not None:
            body.update(self._thinking.fields(request))
        return body

    def thinking_markers(self) -> tuple[str, str] | None:
        """The server's reasoning markers while it takes ``thinking_token_budget``."""
        return self._thinking.markers() if self._thinking is not None else None

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Send the batch concurrently; results keep the order of the requests."""
        if self._closed:
            raise BackendError("the backend is closed", where="OpenAIBackend")
        requests = list(requests)
        for index, request in enumerate(requests):
            check_request(request, index)
            if request.thinking_budget is not None and self._thinking is None:
                raise BackendError("the server has no thinking budget (no thinking_markers)",
                                   where=f"requests[{index}].thinking_budget",
                                   value=request.thinking_budget, fix=NO_MARKERS_FIX)
        if not requests:
            return []
        self.model  # noqa: B018 - discover once, before the threads start
        started = time.perf_counter()
        futures: list[Future[GenerationResult]] = [
            self._pool.submit(self._generate_one, r) for r in requests]
        done, not_done = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future.done() and future.exception() is not None:
                for other in not_done:
                    other.cancel()
                raise future.exception()  # type: ignore[misc]
        results = [f.result() for f in futures]
        forced = [i for i, r in enumerate(results) if r is None]  # refused thinking budgets
        if forced and self._thinking is not None:
            got = self._thinking.force([requests[i] for i in forced], self.generate)
            for i, result in zip(forced, got):
                results[i] = result
        log.debug("%d requests in %.2fs", len(requests), time.perf_counter() - started)
        return results  # type: ignore[return-value]

    def _generate_one(self, request: GenerationRequest) -> GenerationResult | None:
        """One request's result; None for a thinking budget the server does not take."""
        thinking = self._thinking if request.thinking_budget is not None else None
        if thinking is not None and not thinking.native:
            return None
        started = time.perf_counter()
        completions: list[Completion] = []
        prompt_tokens = 0
        asks = 0
        while len(completions) < request.n:
            missing = request.n - len(completions)
            try:
                data = self._send("POST", "/chat/completions", self.body(request, n=missing))
            except UpstreamError as exc:
                if thinking is None or not budget_rejected(exc):
                    raise
                thinking.give_up(f"refused thinking_token_budget ({exc.message})")
                return None
            got, used = self._parse(request, data)
            asks += 1
            prompt_tokens += used
            if not got:
                raise UpstreamError("the server returned no choices", kind="protocol",
                                    url=self._bases[0] + "/chat/completions",
                                    fix="check the server log")
            if len(got) < missing and "n" not in self._warned:
                self._warned.add("n")
                log.warning("the server returned %d choice(s) for n=%d; asking again for the "
                            "rest (each extra request's prompt tokens are counted)",
                            len(got), missing)
            completions.extend(got[:missing])
        return GenerationResult(
            request=request,
            prompt_tokens=prompt_tokens,
            completions=tuple(completions),
            wall_time=time.perf_counter() - started,
            extra={"requests": asks},
        )

    def _parse(self, request: GenerationRequest, data: Any) -> tuple[list[Completion], int]:
        got, used = parse_chat_completion(request, data, self._bases[0] + "/chat/completions",
                                          self._warned)
        if request.thinking_budget is not None and self._thinking is not None:
            got = self._thinking.split(request, got, data)
        return got, used

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop the worker threads and close the connections (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
