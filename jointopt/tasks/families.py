"""Built-in task families: generated problems with a difficulty knob and an exact checker.

Every family is generated deterministically from a seed (its own ``random.Random`` per
family, purpose and level; never the global random state), has difficulty levels 1..3
(``word_problems`` 1..4),
an exact matcher against the generated target, and a serve-time verifier that checks an
answer's feasibility from the inputs alone. The families are sized so that a very small
instruction model (SmolLM2-135M-Instruct) solves a fair share of level 1 and little of
level 3, which gives difficulty-aware policies something to find.

Every example has two inputs: the family's own field (e.g. ``words``) and ``question``, a
natural-language rendering of the problem for generic templates (``{{ question }}``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from jointopt.errors import ConfigError
from jointopt.tasks._common import did_you_mean
from jointopt.tasks.base import Example, Task
from jointopt.tasks.extraction import AnswerExtractor, AnswerMatcher, parse_int
from jointopt.tasks.family_problems import (
    FamilySpec,
    generate_digit_sum,
    generate_max_list,
    generate_next_term,
    generate_reverse,
    problem_stream,
)
from jointopt.tasks.family_reasoning import REASONING_FAMILIES

__all__ = ["FAMILIES", "LEVELS", "make_task", "describe_families"]

#: The difficulty levels of the first four families (``reverse_words``, ``next_term``,
#: ``digit_sum``, ``max_list``); each family lists its own in ``describe_families()``
#: (``word_problems`` has 1-4).
LEVELS: tuple[int, ...] = (1, 2, 3)

_INT_RE = re.compile(r"-?\d+")
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def _words_of(text: str) -> list[str]:
    return _WORD_RE.findall(text.casefold())


# --- serve-time verifiers: never read example.target ---------------------------------------


def verify_reverse_words(example: Example, answer: str) -> bool:
    """The answer uses exactly the input words (a permutation), and is not the input order
    unchanged (unless the input reads the same reversed)."""
    given = _words_of(example.inputs.get("words", ""))
    got = _words_of(answer)
    if not given or sorted(got) != sorted(given):
        return False
    return got != given or given == given[::-1]


def verify_next_term(example: Example, answer: str) -> bool:
    """The answer is an integer that continues the direction of the sequence and lies within
    the span of the shown terms from the last one."""
    terms = [int(t) for t in _INT_RE.findall(example.inputs.get("sequence", ""))]
    value = parse_int(answer)
    if value is None or len(terms) < 2:
        return False
    first, last = terms[0], terms[-1]
    if last > first:
        direction_ok = value > last
    elif last < first:
        direction_ok = value < last
    else:
        direction_ok = value == last
    return direction_ok and abs(value - last) <= abs(last - first)


def verify_digit_sum(example: Example, answer: str) -> bool:
    """The answer is an integer between the largest operand and the largest possible sum
    (9 per single-digit operand)."""
    operands = [int(t) for t in _INT_RE.findall(example.inputs.get("expression", ""))]
    value = parse_int(answer)
    if value is None or not operands or min(operands) < 0:
        return False
    ceiling = sum(10 ** len(str(o)) - 1 for o in operands)
    return max(operands) <= value <= ceiling


def verify_max_list(example: Example, answer: str) -> bool:
    """The answer is one of the numbers in the list."""
    numbers = {int(t) for t in _INT_RE.findall(example.inputs.get("numbers", ""))}
    value = parse_int(answer)
    return value is not None and value in numbers


# --- the registry (immutable) --------------------------------------------------------------


_NUMBER = AnswerExtractor("last_number")
_NUMERIC = AnswerMatcher("numeric")

_REGISTRY: Mapping[str, FamilySpec] = MappingProxyType(
    {
        "reverse_words": FamilySpec(
            name="reverse_words",
            field="words",
            description=(
                "Reverse the order of a short comma-separated list of common English words. "
                "The input is a list such as 'apple, river, blue'; the answer is the same "
                "words in reverse order, written the same way: 'blue, river, apple'. Only "
                "the order changes; the words themselves are not altered."
            ),
            levels=MappingProxyType({1: "2 words", 2: "3 words", 3: "4 words"}),
            generate=generate_reverse,
            question=lambda v: f"Reverse the order of these words: {v}",
            extractor=AnswerExtractor("first_line"),
            matcher=AnswerMatcher("words"),
            verifier=verify_reverse_words,
        ),
        "next_term": FamilySpec(
            name="next_term",
            field="sequence",
            description=(
                "Give the next number of an arithmetic sequence. The input shows the first "
                "4 or 5 terms, e.g. '3, 5, 7, 9'; each term adds the same step to the one "
                "before, and the answer is the following term as a single integer: 11."
            ),
            levels=MappingProxyType({1: "step 1", 2: "step 2-5", 3: "step 6-15"}),
            generate=generate_next_term,
            question=lambda v: f"What number comes next in this sequence: {v}?",
            extractor=_NUMBER,
            matcher=_NUMERIC,
            verifier=verify_next_term,
        ),
        "digit_sum": FamilySpec(
            name="digit_sum",
            field="expression",
            description=(
                "Add up a few single-digit numbers. The input is an expression such as "
                "'3 + 5 + 2' and the answer is its sum as a single integer: 10."
            ),
            levels=MappingProxyType({1: "2 operands", 2: "3 operands", 3: "4 operands"}),
            generate=generate_digit_sum,
            question=lambda v: f"What is {v}?",
            extractor=_NUMBER,
            matcher=_NUMERIC,
            verifier=verify_digit_sum,
        ),
        "max_list": FamilySpec(
            name="max_list",
            field="numbers",
            description=(
                "Find the largest number in a comma-separated list of whole numbers, such as "
                "'12, 45, 7'. The answer is that number alone: 45."
            ),
            levels=MappingProxyType(
                {1: "3 one-digit numbers", 2: "5 two-digit numbers", 3: "8 two-digit numbers"}
            ),
            generate=generate_max_list,
            question=lambda v: f"What is the largest number in this list: {v}?",
            extractor=_NUMBER,
            matcher=_NUMERIC,
            verifier=verify_max_list,
        ),
        **REASONING_FAMILIES,
    }
)

#: Names of the built-in task families.
FAMILIES: tuple[str, ...] = tuple(_REGISTRY)


def describe_families() -> dict[str, str]:
    """``{family name: description}``, each description ending with its difficulty levels
    and input fields (for ``jointopt`` listings and instruction proposals)."""
    out: dict[str, str] = {}
    for name, fam in _REGISTRY.items():
        levels = "; ".join(f"{k}: {v}" for k, v in fam.levels.items())
        out[name] = (
            f"{fam.description} Difficulty levels: {levels}. "
            f"Input fields: {fam.field!r} and 'question'."
        )
    return out


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{name} must be an integer >= {minimum}",
            where=name,
            value=value,
            fix=f"pass an integer {name} >= {minimum}",
        )
    return value


def _check_levels(levels: object, fam: FamilySpec) -> tuple[int, ...]:
    known = tuple(fam.levels)
    if isinstance(levels, (int, str)) or not isinstance(levels, Iterable):
        raise ConfigError(
            "levels must be a sequence of difficulty levels",
            where="levels",
            value=levels,
            fix=f"pass e.g. levels=(1,) or levels={known}",
        )
    out = tuple(levels)
    if not out:
        raise ConfigError(
            "levels must not be empty",
            where="levels",
            value=levels,
            fix=f"pass one or more of {known}",
        )
    for level in out:
        if isinstance(level, bool) or not isinstance(level, int) or level not in known:
            raise ConfigError(
                f"difficulty level of family {fam.name!r} must be one of {known}",
                where="levels",
                value=level,
                fix=f"pass levels among {known}",
            )
    if len(set(out)) != len(out):
        raise ConfigError(
            "levels contains a level twice",
            where="levels",
            value=out,
            fix="list each level once",
        )
    return out


def _draw(
    fam: FamilySpec,
    level: int,
    rng: random.Random,
    count: int,
    taken: set[str],
    parameter: str,
) -> list[tuple[str, str]]:
    """``count`` problems of ``level`` whose content is not in ``taken`` (updated)."""
    out: list[tuple[str, str]] = []
    attempts = 0
    budget = 200 + 100 * count
    while len(out) < count:
        attempts += 1
        if attempts > budget:
            raise ConfigError(
                f"family {fam.name!r} level {level} ({fam.levels[level]}) has too few distinct "
                f"problems for {count} items (found {len(out)})",
                where=parameter,
                value=count,
                fix="ask for fewer items per level, or use several seeds",
            )
        value, target = fam.generate(level, rng)
        if value in taken:
            continue
        taken.add(value)
        out.append((value, target))
    return out


def _example(fam: FamilySpec, ident: str, level: int, value: str, target: str) -> Example:
    """One generated problem as an Example: the family's field and its question."""
    return Example(
        id=ident,
        inputs={fam.field: value, "question": fam.question(value)},
        target=target,
        difficulty=str(level),
    )


def _demos(fam: FamilySpec, level_list: tuple[int, ...], n_demos: int, seed: int,
           taken: set[str]) -> list[Example]:
    """``n_demos`` demonstrations drawn round-robin over the levels, none in ``taken``."""
    family = fam.name
    per_level = {lv: sum(1 for i in range(n_demos) if level_list[i % len(level_list)] == lv)
                 for lv in level_list}
    drawn_demos = {
        lv: _draw(fam, lv, problem_stream(family, "demos", seed, lv), k, taken, "n_demos")
        for lv, k in per_level.items()
    }
    demos: list[Example] = []
    cursor = dict.fromkeys(level_list, 0)
    for i in range(n_demos):
        level = level_list[i % len(level_list)]
        value, target = drawn_demos[level][cursor[level]]
        ident = f"{family}-demo-L{level}-{cursor[level]:04d}"
        demos.append(_example(fam, ident, level, value, target))
        cursor[level] += 1
    return demos


def make_task(
    family: str,
    *,
    levels: Iterable[int] | None = None,
    n_per_level: int = 10,
    seed: int = 0,
    n_demos: int = 8,
) -> Task:
    """Generate a built-in task.

    Args:
        family: one of :data:`FAMILIES`.
        levels: difficulty levels to include (1..3; ``word_problems`` 1..4); None: all
            levels of the family.
        n_per_level: evaluation examples per level (distinct problems).
        seed: the seed; the same arguments always give the same task. Each level has its
            own random stream, so level 1 is the same whichever other levels are asked for,
            and a larger ``n_per_level`` extends a smaller one.
        n_demos: size of the few-shot demonstration pool, drawn round-robin over ``levels``
            from a separate random stream and never equal (by content) to an example.

    Returns:
        A :class:`Task` with ids such as ``"reverse_words-L1-0003"`` (demos:
        ``"reverse_words-demo-L1-0000"``) and ``difficulty`` set to ``"1"``/``"2"``/``"3"``.

    Raises:
        ConfigError: unknown family, a level outside 1..3, ``n_per_level < 1``,
            ``n_demos < 0``, a non-integer seed, or more items than a level has problems.
    """
    if not isinstance(family, str) or family not in _REGISTRY:
        raise ConfigError(
            f"unknown task family.{did_you_mean(family, FAMILIES)}",
            where="family",
            value=family,
            fix=f"use one of {list(FAMILIES)}",
        )
    fam = _REGISTRY[family]
    level_list = _check_levels(tuple(fam.levels) if levels is None else levels, fam)
    n_per_level = _check_int("n_per_level", n_per_level, 1)
    n_demos = _check_int("n_demos", n_demos, 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(
            "seed must be an integer", where="seed", value=seed, fix="pass e.g. seed=0"
        )
    taken: set[str] = set()
    examples: list[Example] = []
    for level in level_list:
        drawn = _draw(fam, level, problem_stream(family, "examples", seed, level), n_per_level,
                      taken, "n_per_level")
        examples.extend(
            _example(fam, f"{family}-L{level}-{i:04d}", level, value, target)
            for i, (value, target) in enumerate(drawn)
        )

    demos = _demos(fam, level_list, n_demos, seed, taken)

    return Task(
        name=family,
        description=fam.description,
        fields=(fam.field, "question"),
        examples=tuple(examples),
        demos=tuple(demos),
        extractor=fam.extractor,
        matcher=fam.matcher,
        verifier=fam.verifier,
    )
