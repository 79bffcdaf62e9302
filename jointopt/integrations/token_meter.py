"""Token accounting of DSPy LMs over jointopt backends: frozen counts, a thread-safe meter,
and the record of one answered engine request."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from jointopt.core.generation import GenerationResult

__all__ = ["TokenCounts", "TokenMeter", "CallRecord"]


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

