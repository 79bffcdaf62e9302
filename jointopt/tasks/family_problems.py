"""The problem generators of the built-in task families: each draws one problem of a
difficulty level (its input value and target) from a seeded random stream.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from jointopt.tasks.base import Example
from jointopt.tasks.extraction import AnswerExtractor, AnswerMatcher

__all__ = [
    "FamilySpec",
    "WORDS",
    "generate_digit_sum",
    "generate_max_list",
    "generate_next_term",
    "generate_reverse",
    "problem_stream",
]


@dataclass(frozen=True)
class FamilySpec:
    """One built-in family: its input field, levels, generator, question and checkers.

    Attributes:
        name: the family's name in :data:`jointopt.tasks.FAMILIES`.
        field: the input field holding the generated value.
        description: what the task asks (for listings and instruction proposals).
        levels: ``{level: what it means}``, level 1 the easiest.
        generate: ``(level, rng) -> (field value, target)``.
        question: the natural-language question of a field value.
        extractor: reads the answer out of a completion.
        matcher: compares an answer with the target.
        verifier: the serve-time verifier (never reads the target).
    """

    name: str
    field: str
    description: str
    levels: Mapping[int, str]
    generate: Callable[[int, random.Random], tuple[str, str]]
    question: Callable[[str], str]
    extractor: AnswerExtractor
    matcher: AnswerMatcher
    verifier: Callable[[Example, str], bool]


#: Common short English words (3-6 letters), distinct, lower case.
WORDS: tuple[str, ...] = (
    "apple", "river", "blue", "house", "green", "chair", "table", "bread", "water", "stone",
    "cloud", "light", "music", "paper", "plant", "horse", "train", "clock", "grass", "beach",
    "dog", "cat", "sun", "moon", "star", "tree", "bird", "fish", "book", "door",
    "road", "milk", "rain", "snow", "fire", "wind", "ship", "lamp", "shoe", "coat",
    "hand", "king", "bell", "cake", "farm", "gold", "hill", "lake", "leaf", "rice",
    "salt", "sand", "seed", "wolf", "bear", "frog", "duck", "goat", "lion", "mouse",
    "red", "black", "white", "brown", "pink", "happy", "quiet", "small", "large", "warm",
    "cold", "fast", "slow", "soft", "sweet", "bright", "dark", "early", "late", "young",
    "city", "field", "forest", "garden", "island", "market", "window", "pencil", "orange", "banana",
    "lemon", "tiger", "rabbit", "candle", "basket", "bottle", "button", "carpet", "guitar",
    "letter",
    "money", "night", "ocean", "party", "queen", "radio", "smile", "sugar", "voice", "wheel",
)

_REVERSE_LEN = {1: 2, 2: 3, 3: 4}
_STEP_RANGE = {1: (1, 1), 2: (2, 5), 3: (6, 15)}
_SUM_OPERANDS = {1: 2, 2: 3, 3: 4}
_MAX_SHAPE = {1: (3, 1, 9), 2: (5, 10, 99), 3: (8, 10, 99)}  # (count, low, high)


# --- generators: (level, rng) -> (field value, target) ------------------------------------


def generate_reverse(level: int, rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, _REVERSE_LEN[level])
    return ", ".join(words), ", ".join(reversed(words))


def generate_next_term(level: int, rng: random.Random) -> tuple[str, str]:
    low, high = _STEP_RANGE[level]
    step = rng.randint(low, high)
    start = rng.randint(1, 30)
    length = rng.choice((4, 5))
    terms = [start + i * step for i in range(length + 1)]
    return ", ".join(str(t) for t in terms[:-1]), str(terms[-1])


def generate_digit_sum(level: int, rng: random.Random) -> tuple[str, str]:
    operands = [rng.randint(1, 9) for _ in range(_SUM_OPERANDS[level])]
    return " + ".join(str(o) for o in operands), str(sum(operands))


def generate_max_list(level: int, rng: random.Random) -> tuple[str, str]:
    count, low, high = _MAX_SHAPE[level]
    numbers = rng.sample(range(low, high + 1), count)
    return ", ".join(str(n) for n in numbers), str(max(numbers))


def problem_stream(family: str, purpose: str, seed: int, level: int) -> random.Random:
    """The random stream of one family, purpose (examples or demos), seed and level."""
    # A str seed is hashed with SHA-512 by random.Random: stable across runs and platforms.
    return random.Random(f"jointopt/{family}/{purpose}/seed={seed}/level={level}")
