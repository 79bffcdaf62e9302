"""vLLM's thinking budget through an OpenAI-compatible server, with budget forcing as the
fallback.

A request that carries ``GenerationRequest.thinking_budget`` (the ``vllm`` thinking
engine, :mod:`jointopt.strategies.thinking`) is sent with vLLM's extra field
``thinking_token_budget`` when the backend is told the server's reasoning markers
(``thinking_markers: [start, end]``, the server's ``reasoning_start_str`` and
``reasoning_end_str``). Its ``max_tokens`` becomes the answer cap plus the budget, the
end marker and
:data:`~jointopt.backends.vllm_outputs.THINKING_OVERSHOOT`, as the offline vLLM backend sets its engine cap.

Reading the thought back, per choice:

* a server with a reasoning parser returns it apart, as ``message.reasoning`` (vLLM 0.32)
  or ``message.reasoning_content`` (older vLLM, other servers): the thought is that text
  plus the end marker when an answer follows, the answer is ``content``;
* without a parser the thought is inline: ``content`` is split after the first end marker
  (no marker: the whole content is thought, the model stopped or ran out while thinking).

Thinking tokens (the split of the choice's completion tokens), best source first:

1. the token strings of ``logprobs.content`` (vLLM returns one per generated token,
   thought included): the thought is the tokens up to and including the end marker, exact;
2. ``usage.completion_tokens_details.reasoning_tokens``, when above 0 (vLLM reports it only
   with a reasoning parser, summed over choices, and a parser that cannot count reports 0):
   split across choices by thought length; the end marker's tokens count with the answer;
3. otherwise an estimate: the choice's completion tokens split in proportion to the
   characters of thought and answer (the total stays exact).

Fallback: a server that refuses the field (HTTP 400/422 whose body names
``thinking_token_budget``: vLLM without a reasoning config, OpenAI, servers that forbid
extra fields) gets one warning, and from then on the backend's ``thinking_markers()`` is
None (so ``engine: auto`` resolves to forcing) and every request with a thinking budget is
answered by two-phase forcing (:mod:`jointopt.core.thinking_forcing`) with the same
markers: the thought up to the budget, stopped at the end marker, then the answer after
it; the resent prefix is counted as prompt tokens. A server that accepts the field but
ignores it is noticed when a thought runs past the budget (plus the end marker and the
overshoot): one warning, that result kept and counted, later requests forced.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jointopt.backends.openai_http import UpstreamError
from jointopt.backends.openai_payloads import split_tokens
from jointopt.backends.vllm_outputs import THINKING_OVERSHOOT
from jointopt.core.generation import Completion, GenerationRequest, GenerationResult
from jointopt.core.thinking import ThinkingSpec
from jointopt.core.thinking_forcing import force, run_rounds
from jointopt.errors import BackendError

__all__ = ["NO_MARKERS_FIX", "ServerThinking", "budget_rejected"]

log = logging.getLogger("jointopt.backends.openai")

_FIELD = "thinking_token_budget"
#: The fix named when a request carries a thinking budget the backend cannot send.
NO_MARKERS_FIX = ("give the server's reasoning strings as model.engine.thinking_markers "
                  "(e.g. ['<think>', '</think>']), or use thinking engine: forcing")


def budget_rejected(error: UpstreamError) -> bool:
    """Whether ``error`` is a server refusing the ``thinking_token_budget`` field."""
    return error.kind == "http" and error.status in (400, 422) and (
        _FIELD in error.message.lower() or "reasoning_config" in error.message.lower())


def _markers(value: Sequence[str]) -> tuple[str, str]:
    if isinstance(value, str) or len(value) != 2 or not all(
            isinstance(v, str) and v.strip() for v in value):
        raise BackendError("`thinking_markers` must be two non-empty strings [start, end]",
                           where="model.engine.thinking_markers", value=value,
                           fix="give the server's reasoning start and end strings, "
                               "e.g. ['<think>', '</think>']")
    return value[0], value[1]


class ServerThinking:
    """The thinking budget of one OpenAI-compatible server: its markers, whether it takes
    ``thinking_token_budget``, and the fallback to forcing (thread-safe).

    Args:
        markers: the server's reasoning ``[start, end]`` strings.
    """

    def __init__(self, markers: Sequence[str]) -> None:
        self.start, self.end = _markers(markers)
        self._native = True
        self._lock = threading.Lock()

    @property
    def native(self) -> bool:
        """Whether the server is (still) trusted to honour ``thinking_token_budget``."""
        return self._native

    def markers(self) -> tuple[str, str] | None:
        """The backend's ``thinking_markers()``: None once the server refused the field."""
        return (self.start, self.end) if self._native else None

    def fields(self, request: GenerationRequest) -> dict[str, Any]:
        """Body fields of a request under a thinking budget."""
        budget = int(request.thinking_budget or 0)
        return {_FIELD: budget,
                "max_tokens": request.max_tokens + budget + THINKING_OVERSHOOT + len(self.end)}

    def give_up(self, reason: str) -> None:
        """Stop sending the field (one warning, whatever the number of threads)."""
        with self._lock:
            if not self._native:
                return
            self._native = False
        log.warning("the server %s; requests with a thinking budget now use two-phase "
                    "budget forcing (a thought up to the budget, then the answer)", reason)

    def force(self, requests: Sequence[GenerationRequest],
              generate: Callable[[list[GenerationRequest]], list[GenerationResult]]
              ) -> list[GenerationResult]:
        """Answer requests with a thinking budget by two-phase forcing through ``generate``
        (one spec per budget and continuation; results carry the requests given)."""
        out: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[tuple[int, str], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((int(r.thinking_budget or 0), r.continuation), []).append(i)
        for (budget, start), indices in groups.items():
            spec = ThinkingSpec(budget=budget, start=start, end=self.end, answer_cue="")
            plain = [dataclasses.replace(requests[i], continuation="", thinking_budget=None)
                     for i in indices]
            got = run_rounds(force(plain, spec), generate)
            for i, result in zip(indices, got):  # type: ignore[arg-type]
                out[i] = dataclasses.replace(result, request=requests[i])
        return out  # type: ignore[return-value]

    def split(self, request: GenerationRequest, completions: list[Completion],
              data: Mapping[str, Any]) -> list[Completion]:
        """The completions of a response to ``request`` split into thought and answer."""
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        usage = data.get("usage") or {}
        details = usage.get("completion_tokens_details") or {}
        reported = int(details.get("reasoning_tokens") or 0)
        parts = [_parts(c, text.text, self.end) for c, text in zip(choices, completions)]
        shares = split_tokens(reported, [max(len(p[0]), 1) for p in parts]) if reported \
            else [None] * len(parts)
        out = []
        for completion, choice, (thought, answer), share in zip(completions, choices, parts,
                                                                 shares):
            cut = _token_cut(choice, thought, answer, self.end, completion.num_tokens, share)
            out.append(completion.split_thought(thought, answer, cut))
        limit = (request.thinking_budget or 0) + THINKING_OVERSHOOT + len(self.end)
        if self._native and any(len(c.thinking_token_ids) > limit for c in out):
            self.give_up(f"ignored thinking_token_budget={request.thinking_budget} "
                         f"(a thought of {max(len(c.thinking_token_ids) for c in out)} "
                         "tokens came back)")
        return out


def _parts(choice: Mapping[str, Any], content: str, end: str) -> tuple[str, str]:
    """(thought, answer) texts of one choice."""
    message = choice.get("message") or {}
    reasoning = message.get("reasoning")
    if reasoning is None:
        reasoning = message.get("reasoning_content")
    if reasoning is not None:
        return (str(reasoning) + end if content else str(reasoning)), content
    marker = end.strip()
    at = content.find(marker)
    if at < 0:
        return content, ""
    return content[:at + len(marker)], content[at + len(marker):]


def _token_cut(choice: Mapping[str, Any], thought: str, answer: str, end: str, count: int,
               reported: int | None) -> int:
    """Thought tokens of one choice of ``count`` completion tokens (module docstring)."""
    entries = (choice.get("logprobs") or {}).get("content")
    if entries and len(entries) == count and all("token" in e for e in entries):
        joined, ends = "", []
        for entry in entries:
            joined += str(entry["token"])
            ends.append(len(joined))
        marker = end.strip()
        at = joined.find(marker)
        if at >= 0:
            return next(k + 1 for k, e in enumerate(ends) if e >= at + len(marker))
        if not answer:
            return count
    if reported is not None:
        return min(reported, count)
    return split_tokens(count, [len(thought), len(answer)])[0] if thought or answer else 0
