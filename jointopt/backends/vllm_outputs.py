"""Reading a vLLM request output into a :class:`~jointopt.core.generation.Completion`: its
text, token ids, finish reason and the logprob of each sampled token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jointopt.core.generation import Completion

__all__ = ["completion_of", "cut_completion"]

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
