"""Task families where thinking pays: multi-step arithmetic word problems and letter
counting.

Both are generated like the other built-in families (:mod:`jointopt.tasks.families`):
deterministic from a seed, an exact matcher against the generated target, and a
serve-time verifier that checks an answer's *feasibility* from the inputs alone (never
the target), so best-of-N with the verifier is helped but not handed the answer.

``word_problems``: a short story about one person's stock of items, changed by
``level`` steps (1-4): finding or giving away an amount, buying or selling a number of
boxes of equal size (a multiplication). Operands grow with the level: the starting stock
has two digits on levels 1-2 and three digits on levels 3-4; amounts have two digits,
boxes 2-9 of 2-12 items. Answering directly is hard for a small model from two steps on;
working step by step is what helps.

``letter_count``: how many times a letter occurs in two, four or six common words. Models
that read tokens rather than letters miscount unless they spell the words out.
"""

from __future__ import annotations

import random
import re
from types import MappingProxyType

from jointopt.tasks.base import Example
from jointopt.tasks.extraction import AnswerExtractor, AnswerMatcher, parse_int
from jointopt.tasks.family_problems import WORDS, FamilySpec

__all__ = [
    "REASONING_FAMILIES",
    "generate_letter_count",
    "generate_word_problem",
    "verify_letter_count",
    "verify_word_problem",
]

_INT_RE = re.compile(r"\d+")
_SENTENCE_RE = re.compile(r"[^.?!]+[.?!]?")
_LETTER_RE = re.compile(r'letter "([a-z])" in "([^"]*)"')

# (steps, lowest start, highest start) per level.
_WORD_SHAPE = {1: (1, 10, 99), 2: (2, 10, 99), 3: (3, 100, 999), 4: (4, 100, 999)}
_NAMES = ("Mia", "Tom", "Ana", "Leo", "Sara", "Ben", "Ivy", "Sam", "Zoe", "Max", "Eva", "Noah")
_FRIENDS = ("a friend", "a neighbour", "the school", "a cousin", "the library", "a classmate")
_ITEMS = ("marbles", "stickers", "apples", "coins", "cards", "stamps", "shells", "pencils",
          "beads", "buttons")
_LETTER_WORDS = {1: 2, 2: 4, 3: 6}


# --- word problems ---------------------------------------------------------------------------


def _step(kind: str, name: str, item: str, rng: random.Random, stock: int) -> tuple[str, int]:
    """One sentence that changes ``stock`` and the stock after it."""
    if kind == "add":
        amount = rng.randint(10, 99)
        return f"{name} finds {amount} more {item}.", stock + amount
    if kind == "sub":
        amount = rng.randint(10, min(99, stock - 1))
        return f"{name} gives {amount} {item} to {rng.choice(_FRIENDS)}.", stock - amount
    boxes, size = rng.randint(2, 9), rng.randint(2, 12)
    if kind == "add_groups":
        return f"{name} buys {boxes} boxes with {size} {item} in each box.", stock + boxes * size
    while boxes * size >= stock:  # sell fewer boxes than the stock allows
        boxes, size = max(1, boxes - 1), max(2, size - 1)
    bags = "1 bag" if boxes == 1 else f"{boxes} bags"
    return f"{name} sells {bags} of {size} {item} each.", stock - boxes * size


def _kinds(level: int, stock: int) -> tuple[str, ...]:
    kinds = ("add", "sub") if level == 1 else ("add", "sub", "add_groups", "sub_groups")
    if stock <= 20:  # too little to give or sell a two-digit amount
        kinds = tuple(k for k in kinds if not k.startswith("sub"))
    return kinds


def generate_word_problem(level: int, rng: random.Random) -> tuple[str, str]:
    """A story of ``level`` steps and its final stock. The answer never equals a number
    shown in the story (so copying a number is never right)."""
    steps, low, high = _WORD_SHAPE[level]
    while True:
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        stock = rng.randint(low, high)
        sentences = [f"{name} has {stock} {item}."]
        for _ in range(steps):
            sentence, stock = _step(rng.choice(_kinds(level, stock)), name, item, rng, stock)
            sentences.append(sentence)
        sentences.append(f"How many {item} does {name} have now?")
        text = " ".join(sentences)
        if str(stock) not in _INT_RE.findall(text):
            return text, str(stock)


def verify_word_problem(example: Example, answer: str) -> bool:
    """The answer is a whole number between 0 and the stock every step could at most
    reach (each sentence adds the product of its numbers), and it is none of the numbers
    of the story."""
    text = example.inputs.get("problem", "")
    value = parse_int(answer)
    shown = [int(t) for t in _INT_RE.findall(text)]
    if value is None or not shown:
        return False
    ceiling = 0
    for sentence in _SENTENCE_RE.findall(text):
        numbers = [int(t) for t in _INT_RE.findall(sentence)]
        if numbers:
            product = 1
            for number in numbers:
                product *= number
            ceiling += product
    return 0 <= value <= ceiling and value not in shown


# --- letter counting -------------------------------------------------------------------------


def generate_letter_count(level: int, rng: random.Random) -> tuple[str, str]:
    """``letter "r" in "cherry river"`` and the count; the letter always occurs, and is
    drawn by its frequency in the words (so repeated letters are asked about more)."""
    words = rng.sample(WORDS, _LETTER_WORDS[level])
    phrase = " ".join(words)
    letter = rng.choice(phrase.replace(" ", ""))
    return f'letter "{letter}" in "{phrase}"', str(phrase.count(letter))


def verify_letter_count(example: Example, answer: str) -> bool:
    """The answer is a whole number from 1 (0 when the letter is absent) to the number of
    letters of the quoted words."""
    match = _LETTER_RE.search(example.inputs.get("count_in", ""))
    value = parse_int(answer)
    if match is None or value is None:
        return False
    letter, phrase = match.groups()
    letters = len(phrase.replace(" ", ""))
    lowest = 1 if letter in phrase else 0
    return lowest <= value <= letters


_NUMBER = AnswerExtractor("last_number")
_NUMERIC = AnswerMatcher("numeric")

#: The families of this module, by name (merged into :data:`jointopt.tasks.FAMILIES`).
REASONING_FAMILIES = MappingProxyType({
    "word_problems": FamilySpec(
        name="word_problems",
        field="problem",
        description=(
            "Solve a short arithmetic word problem: a person's stock of items changes in "
            "a few steps (finding or giving away some, buying or selling boxes of equal "
            "size), and the answer is the final stock as a single whole number."
        ),
        levels=MappingProxyType({1: "1 step, two-digit stock", 2: "2 steps, two-digit stock",
                                 3: "3 steps, three-digit stock",
                                 4: "4 steps, three-digit stock"}),
        generate=generate_word_problem,
        question=lambda v: v,
        extractor=_NUMBER,
        matcher=_NUMERIC,
        verifier=verify_word_problem,
    ),
    "letter_count": FamilySpec(
        name="letter_count",
        field="count_in",
        description=(
            "Count how many times a letter occurs in two to six common English words, "
            'e.g. the letter "r" in "cherry river": the answer is a single whole number, 4.'
        ),
        levels=MappingProxyType({1: "2 words", 2: "4 words", 3: "6 words"}),
        generate=generate_letter_count,
        question=lambda v: f"Count the {v}. How many times does it occur?",
        extractor=_NUMBER,
        matcher=_NUMERIC,
        verifier=verify_letter_count,
    ),
})
