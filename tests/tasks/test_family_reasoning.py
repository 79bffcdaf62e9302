"""Tests of the families where thinking pays: word_problems and letter_count."""

from __future__ import annotations

import re

import pytest

from jointopt.errors import ConfigError
from jointopt.tasks import Example, describe_families, make_task
from jointopt.testing.thinking import solve_story

NEW = ("word_problems", "letter_count")
FIELD = {"word_problems": "problem", "letter_count": "count_in"}


def _solve_story(text: str) -> tuple[int, int]:
    """The final stock and the number of steps, read sentence by sentence (the solver of
    the scripted thinking model, independent of the generator)."""
    stock, steps = solve_story(text)
    assert stock is not None and stock >= 0, text
    return stock, steps


def _solve(family: str, inputs) -> str:
    value = inputs[FIELD[family]]
    if family == "word_problems":
        return str(_solve_story(value)[0])
    letter, phrase = re.search(r'letter "(.)" in "([^"]*)"', value).groups()
    return str(sum(1 for ch in phrase if ch == letter))


def test_listing_names_the_levels():
    described = describe_families()
    assert "4: 4 steps, three-digit stock" in described["word_problems"]
    assert "3: 6 words" in described["letter_count"]


def test_word_problems_have_level_many_steps_and_growing_operands():
    task = make_task("word_problems", n_per_level=15, n_demos=0)
    assert [e.difficulty for e in task.examples] == [str(lv) for lv in (1, 2, 3, 4)
                                                      for _ in range(15)]
    kinds = set()
    for ex in task.examples:
        story = ex.inputs["problem"]
        assert ex.inputs["question"] == story and story.endswith("have now?")
        stock, steps = _solve_story(story)
        assert steps == int(ex.difficulty)
        assert ex.target == str(stock)
        start = int(re.search(r"has (\d+) ", story).group(1))
        assert len(str(start)) == (2 if ex.difficulty in "12" else 3)
        assert ex.target not in re.findall(r"\d+", story)  # copying a number is never right
        kinds.update(k for k in ("finds", "gives", "buys", "sells") if k in story)
        if ex.difficulty == "1":
            assert "boxes" not in story and "bag" not in story
    assert kinds == {"finds", "gives", "buys", "sells"}


def test_letter_count_levels():
    task = make_task("letter_count", n_per_level=20, n_demos=0)
    for ex in task.examples:
        letter, phrase = re.search(r'letter "(.)" in "([^"]*)"', ex.inputs["count_in"]).groups()
        assert len(phrase.split()) == {"1": 2, "2": 4, "3": 6}[ex.difficulty]
        assert ex.target == str(phrase.count(letter)) and int(ex.target) >= 1
        assert ex.inputs["count_in"] in ex.inputs["question"]
    assert max(int(e.target) for e in task.examples) >= 3


@pytest.mark.parametrize("family", NEW)
def test_deterministic_and_level_streams_independent(family):
    assert make_task(family, seed=2) == make_task(family, seed=2)
    assert make_task(family, seed=2).examples != make_task(family, seed=3).examples
    full = make_task(family, n_per_level=4, n_demos=0)
    only2 = make_task(family, levels=(2,), n_per_level=4, n_demos=0)
    assert only2.examples == full.examples[4:8]


@pytest.mark.parametrize("family", NEW)
def test_checker_accepts_right_and_rejects_wrong(family):
    task = make_task(family, n_per_level=10)
    for ex in task.examples:
        right = _solve(family, ex.inputs)
        assert task.is_correct(ex, task.extract(f"So the answer is {right}."))
        for wrong in (str(int(right) + 1), str(int(right) - 1), "banana"):
            assert not task.is_correct(ex, task.extract(wrong))


@pytest.mark.parametrize("family", NEW)
def test_verifier_never_reads_the_target(family):
    task = make_task(family, n_per_level=10)
    for ex in task.examples:
        right = _solve(family, ex.inputs)
        blind = Example(ex.id, ex.inputs, target="WRONG", difficulty=ex.difficulty)
        assert task.verifier(ex, right) and task.verifier(blind, right)
        assert task.verify(blind, None) is False


def _infeasible(family: str, ex: Example) -> list[str]:
    value = ex.inputs[FIELD[family]]
    if family == "word_problems":
        shown = re.findall(r"\d+", value)
        ceiling = sum(eval("*".join(re.findall(r"\d+", s)) or "0")  # noqa: S307 - digits only
                      for s in re.split(r"(?<=[.?])\s+", value))
        return [shown[0], shown[-1], str(ceiling + 1), "-5", "12.5", "banana"]
    phrase = re.search(r'in "([^"]*)"', value).group(1)
    return ["0", str(len(phrase.replace(" ", "")) + 1), "2.5", "banana"]


@pytest.mark.parametrize("family", NEW)
def test_verifier_rejects_infeasible_answers(family):
    task = make_task(family, n_per_level=10)
    for ex in task.examples:
        for bad in _infeasible(family, ex):
            assert not task.verifier(ex, bad), (ex, bad)


@pytest.mark.parametrize("family", NEW)
def test_verifier_checks_feasibility_not_correctness(family):
    """Some wrong answers pass: the verifier helps best-of-N without giving the answer."""
    task = make_task(family, n_per_level=10)
    passed_wrong = 0
    for ex in task.examples:
        right = int(_solve(family, ex.inputs))
        wrong = str(right + 1)
        passed_wrong += bool(task.verifier(ex, wrong)) and not task.is_correct(ex, wrong)
    assert passed_wrong >= len(task.examples) // 2


def test_word_problem_verifier_without_a_story():
    assert not make_task("word_problems", levels=(1,), n_per_level=1).verifier(
        Example("x", {"problem": "no numbers here"}, "1"), "3")


@pytest.mark.parametrize(
    "family, levels, needle",
    [("word_problems", (5,), "(1, 2, 3, 4)"), ("letter_count", (4,), "(1, 2, 3)"),
     ("digit_sum", (4,), "'digit_sum'")],
)
def test_levels_are_checked_per_family(family, levels, needle):
    with pytest.raises(ConfigError) as err:
        make_task(family, levels=levels)
    assert needle in str(err.value) and "levels" in str(err.value)
