"""The thinking phase of an allocation: how many tokens the model may think before it
answers, and how that budget is enforced.

An :class:`~jointopt.core.policy.Allocation` may carry ``thinking: {budget: B, ...}``.
Every request the bin's strategy makes is then answered in two parts, a *thought* of at
most ``B`` tokens and an *answer* read from the answer part only
(:mod:`jointopt.strategies.thinking`). Budget 0 means answer directly: the strategy's
requests go out unchanged. Two engines enforce the budget with one contract:

- ``forcing`` (every backend): the thought is generated with ``max_tokens = B`` and a
  stop at the end marker; then ``end`` and ``answer_cue`` are appended to the assistant
  turn (a ``continuation``, resent and counted as prompt tokens) and the answer is
  generated with its own cap. With ``min`` > 0, a thought that ends before ``min``
  tokens is extended with ``continue_cue`` (s1-style budget forcing).
- ``vllm``: vLLM's ``SamplingParams.thinking_token_budget``; the engine forces its
  reasoning end string when the budget is spent. Needs a backend whose engine has a
  reasoning config (a reasoning parser, or start/end strings).
- ``auto``: ``vllm`` when the backend offers it, else ``forcing``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Mapping

from jointopt.errors import ConfigError

__all__ = ["MAX_THINKING_BUDGET", "THINKING_ENGINES", "ThinkingEngine", "ThinkingSpec"]

#: Largest thinking budget an allocation may give (a guard against typos such as ``1e9``).
MAX_THINKING_BUDGET = 65_536
ThinkingEngine = Literal["auto", "vllm", "forcing"]
#: The engines a thinking spec may name.
THINKING_ENGINES: tuple[str, ...] = ("auto", "vllm", "forcing")


def _check_tokens(where: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (
            minimum <= value <= MAX_THINKING_BUDGET):
        raise ConfigError(f"`{where.rsplit('.', 1)[-1]}` must be an integer between "
                          f"{minimum} and {MAX_THINKING_BUDGET}", where=where, value=value,
                          fix=f"use a token count such as 256 (0 = no thinking)")


@dataclass(frozen=True)
class ThinkingSpec:
    """A bin's thinking phase.

    Attributes:
        budget: thinking tokens at most; 0 answers directly (no thinking phase).
        min: thinking tokens at least (``forcing`` only; at most ``budget`` unless that is
            0): a thought that stops earlier is extended with ``continue_cue``, at most
            ``jointopt.core.thinking_forcing.MAX_EXTENSIONS`` times.
        engine: ``auto``, ``vllm`` or ``forcing`` (see the module docstring).
        start: text that opens the thought (the assistant turn starts with it).
        end: text that closes the thought; its stripped form is the stop string of the
            thought, the whole of it is appended before the answer cue.
        answer_cue: text between the closed thought and the answer, e.g. ``Final answer:``.
        answer_max_tokens: completion-token cap of the answer; None takes the
            allocation's ``max_tokens``.
        continue_cue: text appended to a thought that stopped before ``min`` tokens.
    """

    budget: int
    min: int = 0
    engine: ThinkingEngine = "auto"
    start: str = "<think>\n"
    end: str = "\n</think>\n\n"
    answer_cue: str = "Final answer: "
    answer_max_tokens: int | None = None
    continue_cue: str = "\nWait,"

    def __post_init__(self) -> None:
        _check_tokens("thinking.budget", self.budget, 0)
        _check_tokens("thinking.min", self.min, 0)
        if self.budget and self.min > self.budget:  # budget 0 answers directly
            raise ConfigError("`min` must not exceed `budget`", where="thinking.min",
                              value=self.min, fix=f"use a min between 0 and {self.budget}")
        if self.engine not in THINKING_ENGINES:
            raise ConfigError("unknown thinking engine", where="thinking.engine",
                              value=self.engine, fix=f"use one of {list(THINKING_ENGINES)}")
        if self.answer_max_tokens is not None:
            _check_tokens("thinking.answer_max_tokens", self.answer_max_tokens, 1)
        for name in ("start", "end", "answer_cue", "continue_cue"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"`{name}` must be a string", where=f"thinking.{name}",
                                  value=getattr(self, name), fix="write it as text")
        if not self.end.strip():
            raise ConfigError("the end marker must hold more than white space",
                              where="thinking.end", value=self.end,
                              fix="use e.g. '\\n</think>\\n\\n'")
        if self.min and not self.continue_cue.strip():
            raise ConfigError("a minimum thinking length needs a continue cue",
                              where="thinking.continue_cue", value=self.continue_cue,
                              fix="use e.g. '\\nWait,' or set min: 0")

    @property
    def stop(self) -> str:
        """The stop string that ends a thought (the end marker without surrounding space)."""
        return self.end.strip()

    def answer_cap(self, max_tokens: int) -> int:
        """The answer's completion-token cap, given the allocation's ``max_tokens``."""
        return self.answer_max_tokens if self.answer_max_tokens is not None else max_tokens

    def context_tokens(self, prompt_tokens: int, max_tokens: int,
                       count: Callable[[str], int], extensions: int = 4,
                       overshoot: int = 2) -> int:
        """The most context one thinking request of this spec can fill: the prompt, the
        start marker, the thought (the budget, plus ``overshoot`` tokens an engine budget
        may let past), the end marker, the answer cue, ``extensions`` continue cues when
        ``min`` > 0, and the answer cap. ``count`` gives the tokens of a text."""
        if not self.budget:
            return prompt_tokens + max_tokens
        cues = count(self.start) + count(self.end) + count(self.answer_cue)
        if self.min:
            cues += extensions * count(self.continue_cue)
        return (prompt_tokens + self.budget + overshoot + cues
                + self.answer_cap(max_tokens))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def coerce(cls, value: "ThinkingSpec | Mapping[str, Any]") -> "ThinkingSpec":
        """A spec from itself or from its mapping form; unknown keys raise ConfigError."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError("`thinking` must be a mapping", where="thinking", value=value,
                              fix="write e.g. thinking: {budget: 256}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown or "budget" not in value:
            raise ConfigError("unknown key in `thinking`" if unknown else
                              "`thinking` needs a budget", where="thinking",
                              value=unknown or dict(value),
                              fix=f"known keys: {', '.join(sorted(known))}")
        return cls(**dict(value))
