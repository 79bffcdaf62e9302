"""Two scripted models of different capability, for studies over several models.

Both answer ``reverse_words`` prompts. The *small* one is right on short lists and poor
on long ones; the *large* one is right on most lists at every length. Use them as
``models: [{backend: scripted, engine: {responder: "jointopt.testing.tiers:small"}}, ...]``.
"""

from __future__ import annotations

import random

from jointopt.core.generation import GenerationRequest

__all__ = ["small", "large", "answer_words"]


def answer_words(request: GenerationRequest, rng: random.Random, p_right: float) -> str:
    """The reversed word list of the prompt with probability ``p_right``, else a shuffle."""
    words = request.messages[-1].content.split(":")[-1].strip().split(", ")
    if rng.random() < p_right:
        return ", ".join(reversed(words))
    return ", ".join(rng.sample(words, len(words)))


def small(request: GenerationRequest, index: int, rng: random.Random) -> str:
    """Right on 2-word lists 95% of the time, on longer lists 30%."""
    words = request.messages[-1].content.split(":")[-1].strip().split(", ")
    return answer_words(request, rng, 0.95 if len(words) <= 2 else 0.3)


def large(request: GenerationRequest, index: int, rng: random.Random) -> str:
    """Right 90% of the time at every length."""
    return answer_words(request, rng, 0.9)
