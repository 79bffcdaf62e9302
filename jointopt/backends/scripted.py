"""A deterministic backend for tests and offline examples.

Completions come from a *responder* function instead of a model. Tokens are words and
punctuation marks with stable ids, logprobs are derived from a hash, and everything is a
pure function of (request, sample index), so tests are exact and repeatable.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Sequence

from jointopt.errors import BackendError
from jointopt.core.generation import Completion, GenerationRequest, GenerationResult
from jointopt.backends.base import Backend, BackendSettings

__all__ = ["ScriptedBackend", "Responder", "tokenize"]

#: ``responder(request, sample_index, rng) -> text``.
Responder = Callable[[GenerationRequest, int, random.Random], str]

_TOKEN = re.compile(r"\s*(\w+|[^\w\s])")


def tokenize(text: str) -> list[str]:
    """Split into word and punctuation tokens, each keeping its leading whitespace."""
    return [m.group(0) for m in _TOKEN.finditer(text)]


def _token_id(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=4).digest(), "big") % 50_000


def _echo(request: GenerationRequest, index: int, rng: random.Random) -> str:
    return request.messages[-1].content


class ScriptedBackend(Backend):
    """Answers requests with ``responder``; counts tokens with :func:`tokenize`.

    Args:
        responder: produces the text of sample ``index`` of a request; gets a
            ``random.Random`` seeded from the request content, its seed and the index.
            Defaults to echoing the last message.
        model_id: identifier used in cache keys.
        thinking_markers: ``(start, end)`` reasoning strings of an emulated engine thinking
            budget (``GenerationRequest.thinking_budget``), as vLLM's: the responder's
            text up to ``end`` is the thought, cut to the budget (then ``end`` is forced),
            the text after ``end`` the answer, cut to ``max_tokens``. None: no such budget.
    """

    name = "scripted"

    @classmethod
    def from_settings(cls, settings: BackendSettings) -> "ScriptedBackend":
        """A whole study offline: the responders and options of
        :func:`jointopt.testing.scripted_backend` (``model.engine``)."""
        from jointopt._registry import import_path

        factory = import_path("jointopt.testing:scripted_backend")
        return factory(model=settings.model, seed=settings.seed,
                       max_model_len=settings.max_model_len, engine_kwargs=dict(settings.engine))

    def __init__(self, responder: Responder | None = None, model_id: str = "scripted",
                 thinking_markers: tuple[str, str] | None = None) -> None:
        self._respond = responder or _echo
        self._model_id = model_id
        self._markers = thinking_markers
        #: Number of ``generate`` calls and of requests seen (for tests of batching).
        self.calls = 0
        self.requests_seen = 0

    @property
    def model_id(self) -> str:
        return self._model_id

    def thinking_markers(self) -> tuple[str, str] | None:
        return self._markers

    def prompt_tokens(self, request: GenerationRequest) -> int:
        text = "".join(f"<{m.role}>{m.content}" for m in request.messages) + request.continuation
        return len(tokenize(text)) + 1

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.calls += 1
        self.requests_seen += len(requests)
        return [self._one(r) for r in requests]

    def _one(self, request: GenerationRequest) -> GenerationResult:
        if request.n < 1 or request.max_tokens < 1:
            raise BackendError("request needs n >= 1 and max_tokens >= 1",
                               where="GenerationRequest", value=(request.n, request.max_tokens))
        if request.thinking_budget is not None and self._markers is None:
            raise BackendError("this backend has no thinking budget of its own",
                               where="GenerationRequest.thinking_budget",
                               value=request.thinking_budget,
                               fix="give ScriptedBackend thinking_markers=(start, end)")
        completions = []
        for index in range(request.n):
            digest = hashlib.sha256(
                f"{request.sampling_key()}|{request.seed}|{request.offset + index}".encode()
            ).digest()
            rng = random.Random(int.from_bytes(digest[:8], "big"))
            text = self._respond(request, request.offset + index, rng)
            if request.thinking_budget is None:
                completions.append(self._complete(text, request, rng))
            else:
                completions.append(self._think(text, request, rng))
        return GenerationResult(request, self.prompt_tokens(request), tuple(completions))

    def _think(self, text: str, request: GenerationRequest, rng: random.Random) -> Completion:
        """A completion under an engine thinking budget: thought, end marker, answer."""
        end = self._markers[1]
        thought, found, answer = text.partition(end)
        tokens = tokenize(thought)
        if len(tokens) > request.thinking_budget:
            tokens = tokens[: request.thinking_budget]  # the engine forces the end marker
        elif not found:
            answer = ""  # the model stopped while thinking
        thinking = tokens + tokenize(end)
        completion = self._complete(answer, request, rng)
        return Completion(
            text=completion.text, token_ids=completion.token_ids,
            finish_reason=completion.finish_reason, logprobs=completion.logprobs,
            thinking_text="".join(thinking),
            thinking_token_ids=tuple(_token_id(t) for t in thinking))

    def cut(self, completion: Completion, max_tokens: int) -> Completion | None:
        """Exact: tokens are words and punctuation marks, so the text of the first
        ``max_tokens`` tokens is their concatenation."""
        if completion.num_tokens <= max_tokens:
            return completion
        tokens = tokenize(completion.text)
        if len(tokens) != completion.num_tokens:
            return None
        logprobs = (completion.logprobs[:max_tokens] if completion.logprobs is not None
                    else None)
        return Completion(text="".join(tokens[:max_tokens]),
                          token_ids=completion.token_ids[:max_tokens], finish_reason="length",
                          logprobs=logprobs)

    @staticmethod
    def _complete(text: str, request: GenerationRequest, rng: random.Random) -> Completion:
        finish = "stop"
        for stop in request.stop:
            cut = text.find(stop)
            if cut >= 0:
                text = text[:cut]
        tokens = tokenize(text)
        if len(tokens) > request.max_tokens:
            tokens, finish = tokens[: request.max_tokens], "length"
        logprobs = None
        if request.logprobs:
            logprobs = tuple(math.log(0.05 + 0.95 * rng.random()) for _ in tokens)
        return Completion(
            text="".join(tokens),
            token_ids=tuple(_token_id(t) for t in tokens),
            finish_reason=finish,
            logprobs=logprobs,
        )
