"""Vote counting shared by the voting strategies."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["plurality"]


def plurality(answers: Sequence[str | None], weights: Iterable[float] | None = None) -> str | None:
    """The answer with the largest (weighted) vote; ``None`` answers do not vote.

    Ties go to the answer that appeared first, so the result is deterministic.
    """
    totals: dict[str, float] = {}
    weight_list = list(weights) if weights is not None else [1.0] * len(answers)
    for answer, weight in zip(answers, weight_list):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + weight
    if not totals:
        return None
    best = max(totals.values())
    return next(a for a, w in totals.items() if w == best)
