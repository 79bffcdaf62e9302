"""Hybrid strategies: parallel chains of sequential revisions."""

from __future__ import annotations

from dataclasses import dataclass

from jointopt.errors import StrategyError
from jointopt.core.generation import ChatMessage
from jointopt.strategies.base import (
    Candidate,
    Run,
    Strategy,
    StrategyContext,
    StrategyOutcome,
    check_float,
    check_int,
    completions_of,
)
from jointopt.strategies.parallel import MAX_N
from jointopt.strategies.sequential import (
    DEFAULT_REVISION_PROMPT,
    MAX_ROUNDS,
    check_text,
    latest_answer,
    revision_messages,
)
from jointopt.strategies.voting import plurality

__all__ = ["ParallelRevision", "split_budget"]

#: Shape used when neither ``budget`` nor ``chains``/``rounds`` are given.
DEFAULT_CHAINS = 4
DEFAULT_ROUNDS = 2


def split_budget(budget: int, chain_share: float) -> tuple[int, int]:
    """``(chains, rounds)`` for a total of ``budget`` completions.

    ``chains = round(budget ** chain_share)`` (clamped to ``[1, budget]``) and
    ``rounds = budget // chains``: share 0 is one chain of ``budget`` rounds, share 1 is
    ``budget`` chains of one round, 0.5 about ``sqrt(budget)`` of each. ``chains * rounds``
    never exceeds ``budget`` (the remainder is not spent).
    """
    chains = min(budget, max(1, round(budget ** chain_share)))
    return chains, max(1, budget // chains)


class ParallelRevision(Strategy):
    """``chains`` independent revision chains of ``rounds`` attempts; the chains' final
    answers vote.

    Every chain is a :class:`~jointopt.strategies.sequential.RevisionChain` with
    aggregation ``last``. Round 1 is one request with ``n=chains`` (the same request as
    ``majority`` with ``n=chains``, so the two share cached samples and ``rounds=1`` *is*
    majority vote). Each later round sends all chains' revisions in one yield; chains whose
    contexts are identical share one request with ``n`` = their number (independent
    samples on every backend, and the shared prompt is counted once). So every round
    draws exactly ``chains`` completions. The final answer is the plurality of the chains'
    last answers (ties: the lower chain index).

    Searching the m:k ratio at a fixed budget: give ``budget`` (total completions
    B = m x k) and ``chain_share`` instead of ``chains``/``rounds``; then
    ``(m, k) = split_budget(B, chain_share)``. A search space that fixes ``budget`` and
    searches ``chain_share`` over [0, 1] moves along the equal-completion line from one
    long chain (share 0) to pure majority vote (share 1); searching ``budget`` too gives
    the whole accuracy-vs-compute front. Token cost still grows with ``rounds`` (each
    revision resends its context), which the study sees in its token objective.
    """

    name = "parallel_revision"

    @dataclass(frozen=True)
    class Params:
        #: Number of independent chains m (default 4, or derived from ``budget``).
        chains: int | None = None
        #: Attempts per chain k (default 2, or derived from ``budget``).
        rounds: int | None = None
        #: How many of the latest attempts stay in the context of a revision.
        context: int = 1
        #: The user turn that follows each previous attempt and asks for a revision.
        revision_prompt: str = DEFAULT_REVISION_PROMPT
        #: Total completions B = chains x rounds; when set, chains and rounds come from
        #: ``split_budget(budget, chain_share)`` (given ones must agree with it).
        budget: int | None = None
        #: Only with ``budget``: log-share of the budget spent on chains, in [0, 1]
        #: (chains = round(budget ** chain_share)); default 0.5.
        chain_share: float | None = None

        def __post_init__(self) -> None:
            check_int("parallel_revision.context", self.context, 1, MAX_ROUNDS)
            check_text("parallel_revision.revision_prompt", self.revision_prompt)
            for name in ("chains", "rounds"):
                value = getattr(self, name)
                if value is not None:
                    check_int(f"parallel_revision.{name}", value, 1,
                              MAX_N if name == "chains" else MAX_ROUNDS)
            if self.budget is None:
                if self.chain_share is not None:
                    raise StrategyError(
                        "`chain_share` only applies together with `budget`",
                        where="parallel_revision.chain_share", value=self.chain_share,
                        fix="also give `budget`, or give `chains` and `rounds` instead",
                    )
                if self.chains is None:
                    object.__setattr__(self, "chains", DEFAULT_CHAINS)
                if self.rounds is None:
                    object.__setattr__(self, "rounds", DEFAULT_ROUNDS)
                return
            check_int("parallel_revision.budget", self.budget, 1, MAX_N)
            share = 0.5 if self.chain_share is None else self.chain_share
            check_float("parallel_revision.chain_share", share, 0.0, 1.0)
            chains, rounds = split_budget(self.budget, share)
            if rounds > MAX_ROUNDS:
                raise StrategyError(
                    f"budget={self.budget} with chain_share={share} gives {rounds} rounds "
                    f"per chain, more than {MAX_ROUNDS}",
                    where="parallel_revision.chain_share", value=share,
                    fix="raise chain_share or lower budget",
                )
            for name, derived in (("chains", chains), ("rounds", rounds)):
                given = getattr(self, name)
                if given is not None and given != derived:
                    raise StrategyError(
                        f"`{name}` disagrees with budget={self.budget} and "
                        f"chain_share={share} (which give {name}={derived})",
                        where=f"parallel_revision.{name}", value=given,
                        fix=f"drop `{name}` or `budget`; give one shape, not both",
                    )
            object.__setattr__(self, "chains", chains)
            object.__setattr__(self, "rounds", rounds)

    def max_completions(self) -> int:
        return self.params.chains * self.params.rounds

    def run(self, ctx: StrategyContext) -> Run:
        p = self.params
        texts: list[list[str]] = [[] for _ in range(p.chains)]
        answers: list[list[str | None]] = [[] for _ in range(p.chains)]
        for _ in range(p.rounds):
            # Chains with identical contexts share one request (first chain's order kept).
            groups: dict[tuple[ChatMessage, ...], list[int]] = {}
            for chain in range(p.chains):
                messages = revision_messages(ctx.messages, texts[chain], p.context,
                                             p.revision_prompt)
                groups.setdefault(messages, []).append(chain)
            requests = [ctx.request(n=len(members), messages=messages)
                        for messages, members in groups.items()]
            results = yield requests
            for members, result in zip(groups.values(), results):
                for chain, completion in zip(members, completions_of([result])):
                    texts[chain].append(completion.text)
                    answers[chain].append(ctx.extract(completion.text))
        finals = [latest_answer(a) for a in answers]
        candidates: list[Candidate] = []
        for chain in range(p.chains):
            # The attempt the chain's answer comes from (its last one if none has an answer).
            at = next((i for i in range(p.rounds - 1, -1, -1) if answers[chain][i] is not None),
                      p.rounds - 1)
            candidates.append(Candidate(texts[chain][at], finals[chain]))
        info = {"chains": p.chains, "rounds": p.rounds,
                "answers": tuple(tuple(a) for a in answers)}
        return StrategyOutcome(plurality(finals), tuple(candidates), info)
