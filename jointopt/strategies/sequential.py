"""Sequential strategies: the model revises its own previous attempts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jointopt.errors import StrategyError
from jointopt.core.generation import ChatMessage
from jointopt.strategies.base import (
    Candidate,
    Run,
    Strategy,
    StrategyContext,
    StrategyOutcome,
    check_choice,
    check_int,
    completions_of,
)
from jointopt.strategies.voting import plurality

__all__ = ["RevisionChain", "DEFAULT_REVISION_PROMPT", "revision_messages", "check_text",
           "latest_answer"]

#: The user turn that asks for a revision after each previous attempt.
DEFAULT_REVISION_PROMPT = (
    "Check your answer above. If it is wrong, correct it. Reply with the final answer only."
)

#: Largest number of rounds a sequential strategy accepts (a guard against budget typos).
MAX_ROUNDS = 64


def check_text(where: str, value: Any) -> str:
    """Validate a non-empty string parameter, naming it in the error."""
    if not isinstance(value, str) or not value.strip():
        raise StrategyError(f"`{where.rsplit('.', 1)[-1]}` must be a non-empty string",
                            where=where, value=value, fix="give a non-empty string")
    return value


def revision_messages(
    messages: Sequence[ChatMessage], attempts: Sequence[str], context: int, prompt: str
) -> tuple[ChatMessage, ...]:
    """The prompt followed by the last ``context`` attempts, each as an assistant turn
    answered by a user turn carrying the revision ``prompt``.

    With no attempts this is the prompt itself (the first round).
    """
    kept = list(attempts)[-context:] if attempts else []
    turns: list[ChatMessage] = list(messages)
    for text in kept:
        turns.append(ChatMessage("assistant", text))
        turns.append(ChatMessage("user", prompt))
    return tuple(turns)


def latest_answer(answers: Sequence[str | None]) -> str | None:
    """The answer of the latest attempt that has one (``None`` if no attempt has one)."""
    return next((a for a in reversed(answers) if a is not None), None)


class RevisionChain(Strategy):
    """``rounds`` attempts in sequence; each later attempt sees earlier ones and revises.

    Round 1 answers the prompt. Round ``r > 1`` resends the prompt followed by the last
    ``context`` attempts, each as an assistant turn answered by a user turn with
    ``revision_prompt``, and samples one new attempt. Every round is one request (so the
    evaluator batches round ``r`` of all examples together), and every resent context is
    counted again in that request's prompt tokens.

    With ``rounds=1`` this is :class:`~jointopt.strategies.parallel.SingleSample` (the same
    request, so it shares cached samples with it).
    """

    name = "revision"

    @dataclass(frozen=True)
    class Params:
        #: Number of attempts: one answer plus ``rounds - 1`` revisions.
        rounds: int = 3
        #: How many of the latest attempts stay in the context of a revision (older
        #: ones are dropped; 1 keeps only the previous attempt).
        context: int = 1
        #: ``last``: the answer of the latest attempt that has one; ``vote``: plurality
        #: over the answers of all attempts, ties going to the later attempt.
        aggregate: str = "last"
        #: The user turn that follows each previous attempt and asks for a revision.
        revision_prompt: str = DEFAULT_REVISION_PROMPT

        def __post_init__(self) -> None:
            check_int("revision.rounds", self.rounds, 1, MAX_ROUNDS)
            check_int("revision.context", self.context, 1, MAX_ROUNDS)
            check_choice("revision.aggregate", self.aggregate, ["last", "vote"])
            check_text("revision.revision_prompt", self.revision_prompt)

    def max_completions(self) -> int:
        return self.params.rounds

    def run(self, ctx: StrategyContext) -> Run:
        p = self.params
        texts: list[str] = []
        answers: list[str | None] = []
        for _ in range(p.rounds):
            messages = revision_messages(ctx.messages, texts, p.context, p.revision_prompt)
            results = yield [ctx.request(n=1, messages=messages)]
            completion = completions_of(results)[0]
            texts.append(completion.text)
            answers.append(ctx.extract(completion.text))
        if p.aggregate == "vote":
            # plurality() breaks ties by first appearance: reversed, the later attempt wins.
            answer = plurality(answers[::-1])
        else:
            answer = latest_answer(answers)
        candidates = tuple(Candidate(t, a) for t, a in zip(texts, answers))
        return StrategyOutcome(answer, candidates, {"answers": tuple(answers)})
