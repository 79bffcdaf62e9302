"""Tests of jointopt.tasks: examples, tasks, extraction, matching and built-in families."""

from __future__ import annotations

import pickle
import re

import pytest

from jointopt.errors import ConfigError, DataError
from jointopt.tasks import (
    FAMILIES,
    AnswerExtractor,
    AnswerMatcher,
    Example,
    Task,
    describe_families,
    make_task,
)

# --------------------------------------------------------------------------- Example / Task


def _task(examples, demos=(), **kw):
    return Task(
        name="t",
        description="d",
        fields=("q",),
        examples=tuple(examples),
        demos=tuple(demos),
        extractor=kw.pop("extractor", AnswerExtractor("exact")),
        matcher=kw.pop("matcher", AnswerMatcher("normalized")),
        **kw,
    )


def test_example_is_frozen_hashable_and_compares_with_dicts():
    ex = Example("a", {"q": "1"}, "x")
    assert ex.inputs == {"q": "1"}
    assert ex == Example("a", {"q": "1"}, "x")
    assert hash(ex) == hash(Example("a", {"q": "1"}, "x"))
    with pytest.raises(TypeError):
        ex.inputs["q"] = "2"  # type: ignore[index]
    with pytest.raises(AttributeError):
        ex.target = "y"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(ex)) == ex
    assert ex.to_dict() == {"id": "a", "inputs": {"q": "1"}, "target": "x", "difficulty": None}


def test_example_inputs_are_copied_not_aliased():
    raw = {"q": "1"}
    ex = Example("a", raw, "x")
    raw["q"] = "changed"
    assert ex.inputs["q"] == "1"


@pytest.mark.parametrize(
    "kwargs, where",
    [
        ({"id": "", "inputs": {"q": "1"}, "target": "x"}, "Example.id"),
        ({"id": "a", "inputs": {"q": 1}, "target": "x"}, "inputs['q']"),
        ({"id": "a", "inputs": {"q": "1"}, "target": 3}, "target"),
        ({"id": "a", "inputs": {"q": "1"}, "target": "x", "difficulty": 1}, "difficulty"),
    ],
)
def test_example_rejects_wrong_types(kwargs, where):
    with pytest.raises(DataError) as err:
        Example(**kwargs)
    assert where in str(err.value)
    assert "fix:" in str(err.value)


def test_task_validates_fields_ids_and_demo_leaks():
    good = Example("a", {"q": "1"}, "x")
    with pytest.raises(DataError, match=r"lacks input field 'q'.*\['z'\]"):
        _task([Example("b", {"z": "1"}, "x")])
    with pytest.raises(DataError, match="duplicate example id"):
        _task([good, Example("a", {"q": "2"}, "y")])
    with pytest.raises(DataError, match="same id"):
        _task([good], demos=[Example("a", {"q": "9"}, "y")])
    with pytest.raises(DataError, match="same inputs as evaluation example 'a'"):
        _task([good], demos=[Example("d", {"q": "1"}, "x")])


def test_task_methods():
    ex = Example("a", {"q": "1"}, "Paris")
    other = Example("b", {"q": "2"}, "Rome")
    task = _task([ex, other], extractor=AnswerExtractor("first_line"))
    assert task.extract("Answer: paris.\nmore") == "paris"
    assert task.is_correct(ex, "paris")
    assert not task.is_correct(ex, "rome")
    assert not task.is_correct(ex, None)
    assert task.canonical(" PARIS. ") == task.canonical("paris") == "paris"
    assert task.canonical(None) is None
    assert task.canonical("...") is None  # nothing left to vote on
    assert task.verify(ex, "paris") is None  # no verifier
    sub = task.subset([other])
    assert sub.examples == (other,)
    assert sub.name == task.name and sub.matcher == task.matcher
    assert task.examples == (ex, other)  # unchanged
    assert set(task.by_difficulty()) == {None}


# ------------------------------------------------------------------------------ extraction

FIRST_LINE_CASES = [
    ("Answer: c, b, a", "c, b, a"),
    ("c b a", "c b a"),
    ("[c, b, a]", "c, b, a"),
    ('"c, b, a"', "c, b, a"),
    ("**Answer:** c, b, a.", "c, b, a"),
    ("Answer:\n[c, b, a]", "c, b, a"),
    ("Sure! Here are the words in reverse order:\n\nc, b, a\nHope this helps", "c, b, a"),
    ("```\nc, b, a\n```", "c, b, a"),
    ("The reversed list is: c, b, a", "c, b, a"),
    ("The answer is c, b, a.", "c, b, a"),
    ("  \n\n  blue, river\n", "blue, river"),
    ("f(x)", "f(x)"),  # an unpaired bracket is kept
    ("", None),
    ("   \n\t\n", None),
    ("```\n```", None),
]


@pytest.mark.parametrize("text, expected", FIRST_LINE_CASES)
def test_first_line_extractor(text, expected):
    assert AnswerExtractor("first_line").extract(text) == expected


LAST_NUMBER_CASES = [
    ("The sum of 3 + 5 + 2 is 10.", "10"),
    ("10", "10"),
    ("Answer: 3 + 5 = 8", "8"),  # an expression after the marker is not the answer
    ("The answer is 12.\nThe sequence 3, 5, 7 goes on", "12"),  # explicit marker wins
    ("#### 42", "42"),
    ("1,234 apples", "1234"),
    ("3,5,7", "7"),
    ("from 3-5", "5"),  # a hyphen between numbers is not a minus
    ("Answer: -7", "-7"),
    ("\u22124", "-4"),
    ("x = 17.5.", "17.5"),
    ("The next number is 11", "11"),
    ("no numbers here", None),
    ("", None),
]


@pytest.mark.parametrize("text, expected", LAST_NUMBER_CASES)
def test_last_number_extractor(text, expected):
    assert AnswerExtractor("last_number").extract(text) == expected


CHOICE_CASES = [
    ("The answer is (B).", "B"),
    ("A good choice is C", "C"),  # leading article is not option A
    ("(C) because it is larger", "C"),
    ("D", "D"),
    ("answer: c", "C"),
    ("Answer: B because it fits", "B"),
    ("the answer is a bit unclear, maybe B", "B"),
    ("I think D is right", "D"),
    ("nothing to see", None),
    ("", None),
]


@pytest.mark.parametrize("text, expected", CHOICE_CASES)
def test_choice_letter_extractor(text, expected):
    assert AnswerExtractor("choice_letter").extract(text) == expected


def test_regex_and_exact_extractors():
    ex = AnswerExtractor("regex", pattern=r"(?i)answer:\s*(\w+)")
    assert ex.extract("answer: foo\nAnswer: bar") == "bar"  # last match
    assert ex.extract("no marker") is None
    named = AnswerExtractor("regex", pattern=r"=\s*(?P<val>\d+)", group="val")
    assert named.extract("2 + 2 = 4") == "4"
    whole = AnswerExtractor("regex", pattern=r"\d+", group=0)
    assert whole.extract("a 1 b 22") == "22"
    assert AnswerExtractor("exact").extract("  hi there \n") == "hi there"
    assert AnswerExtractor("exact").extract(" \n") is None
    assert pickle.loads(pickle.dumps(ex)).extract("answer: z") == "z"


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"kind": "regexp"}, "did you mean 'regex'"),
        ({"kind": "regex"}, "needs a pattern"),
        ({"kind": "regex", "pattern": "(unclosed"}, "(unclosed"),
        ({"kind": "regex", "pattern": r"\d+", "group": 1}, "group 1 does not exist"),
        ({"kind": "regex", "pattern": r"(\d+)", "group": "num"}, "no group named 'num'"),
        ({"kind": "last_number", "pattern": r"\d"}, "only applies"),
    ],
)
def test_extractor_config_errors(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        AnswerExtractor(**kwargs)
    assert needle.lower() in str(err.value).lower()


# -------------------------------------------------------------------------------- matching


def test_words_matcher():
    m = AnswerMatcher("words")
    assert m.normalize("[C, b,  A]") == "c b a"
    assert m.matches("c b a", "C, B, A")
    assert m.matches("'c', 'b', 'a'", "c, b, a")
    assert not m.matches("a b c", "c, b, a")
    assert not m.matches("c, b", "c, b, a")
    assert not m.matches("", "c")
    assert not m.matches(None, "c")


def test_numeric_matcher():
    m = AnswerMatcher("numeric")
    for same in ("17", "17.0", "17.", "$17", " 17 ", "1.7e1"):
        assert m.normalize(same) == "17", same
        assert m.matches(same, "17")
    assert m.normalize("1,234") == "1234"
    assert m.normalize("3/4") == "0.75"
    assert m.normalize("-2.50") == "-2.5"
    assert m.normalize("Seventeen") == "seventeen"  # not a number: normalized text
    assert not m.matches("18", "17")
    assert not m.matches("seventeen", "17")
    assert not m.matches(None, "17")
    assert m.matches("0.1", "0.1000000001")
    assert not AnswerMatcher("numeric", tolerance=0).matches("0.1", "0.1000000001")
    assert m.matches("Paris", "paris")  # a non-numeric target falls back to text


def test_exact_and_normalized_matchers():
    assert AnswerMatcher("exact").matches(" Paris ", "Paris")
    assert not AnswerMatcher("exact").matches("paris", "Paris")
    norm = AnswerMatcher("normalized")
    assert norm.normalize('  "The   Hague." ') == "the hague"
    assert norm.matches("the hague", "The Hague")
    assert norm.normalize("-5") == "-5"  # a sign is not edge punctuation
    assert not norm.matches("Hague", "The Hague")


@pytest.mark.parametrize(
    "kwargs", [{"kind": "fuzzy"}, {"kind": "numeric", "tolerance": -1}, {"kind": "numeric", "tolerance": float("nan")}]
)
def test_matcher_config_errors(kwargs):
    with pytest.raises(ConfigError):
        AnswerMatcher(**kwargs)


# ------------------------------------------------------------------------- built-in families

FIELD = {"reverse_words": "words", "next_term": "sequence", "digit_sum": "expression",
         "max_list": "numbers"}


def _solve(family: str, inputs) -> str:
    """The right answer computed from the inputs alone (independent of the generator)."""
    value = inputs[FIELD[family]]
    if family == "reverse_words":
        return ", ".join(reversed(value.split(", ")))
    nums = [int(x) for x in re.findall(r"-?\d+", value)]
    if family == "next_term":
        return str(nums[-1] + nums[1] - nums[0])
    if family == "digit_sum":
        return str(sum(nums))
    return str(max(nums))


def _wrong_answers(family: str, inputs) -> list[str]:
    """Feasible-looking wrong answers and infeasible ones."""
    value = inputs[FIELD[family]]
    right = _solve(family, inputs)
    if family == "reverse_words":
        return [value, right + ", extra", ", ".join(right.split(", ")[:-1])]
    return [str(int(right) + 1), str(int(right) - 1), "banana"]


#: The first four families, whose shape these tests know (tests/tasks/test_family_reasoning.py
#: has the others).
CLASSIC = ("reverse_words", "next_term", "digit_sum", "max_list")


def test_families_listing():
    assert set(FAMILIES) == set(CLASSIC) | {"word_problems", "letter_count"}
    described = describe_families()
    assert set(described) == set(FAMILIES)
    for name, text in described.items():
        assert "Difficulty levels: 1:" in text
    for name in CLASSIC:
        assert FIELD[name] in described[name]


@pytest.mark.parametrize("family", CLASSIC)
def test_family_is_deterministic_and_seed_dependent(family):
    a = make_task(family, seed=3)
    b = make_task(family, seed=3)
    c = make_task(family, seed=4)
    assert a == b
    assert [e.inputs for e in a.examples] != [e.inputs for e in c.examples]
    assert [e.inputs for e in a.demos] != [e.inputs for e in c.demos]


@pytest.mark.parametrize("family", CLASSIC)
def test_family_shape_ids_fields_and_disjoint_demos(family):
    task = make_task(family, n_per_level=7, n_demos=5, seed=1)
    assert task.name == family
    assert task.fields == (FIELD[family], "question")
    assert len(task.examples) == 21 and len(task.demos) == 5
    assert [e.difficulty for e in task.examples] == ["1"] * 7 + ["2"] * 7 + ["3"] * 7
    assert [d.difficulty for d in task.demos] == ["1", "2", "3", "1", "2"]
    assert task.examples[3].id == f"{family}-L1-0003"
    assert task.examples[7].id == f"{family}-L2-0000"
    ids = [e.id for e in task.examples + task.demos]
    assert len(set(ids)) == len(ids)
    contents = [e.inputs[FIELD[family]] for e in task.examples + task.demos]
    assert len(set(contents)) == len(contents)  # examples distinct, demos disjoint
    for ex in task.examples:
        assert set(ex.inputs) == {FIELD[family], "question"}
        assert ex.inputs[FIELD[family]] in ex.inputs["question"]
    assert pickle.loads(pickle.dumps(task)) == task  # crosses process boundaries


@pytest.mark.parametrize("family", CLASSIC)
def test_level_streams_are_independent_and_extend(family):
    full = make_task(family, levels=(1, 2, 3), n_per_level=5, n_demos=0)
    only2 = make_task(family, levels=(2,), n_per_level=5, n_demos=0)
    assert only2.examples == full.examples[5:10]
    more = make_task(family, levels=(1,), n_per_level=8, n_demos=0)
    assert more.examples[:5] == full.examples[:5]
    assert full.demos == ()


def _numbers(text):
    return [int(x) for x in re.findall(r"-?\d+", text)]


def test_reverse_words_levels():
    task = make_task("reverse_words", n_per_level=20)
    for ex in task.examples:
        words = ex.inputs["words"].split(", ")
        assert len(words) == {"1": 2, "2": 3, "3": 4}[ex.difficulty]
        assert len(set(words)) == len(words)
        assert all(w.isalpha() and w.islower() and len(w) <= 6 for w in words)
        assert ex.target == ", ".join(reversed(words))
        assert ex.inputs["question"] == f"Reverse the order of these words: {ex.inputs['words']}"


def test_next_term_levels():
    task = make_task("next_term", n_per_level=20)
    steps = {"1": set(), "2": set(), "3": set()}
    for ex in task.examples:
        terms = _numbers(ex.inputs["sequence"])
        assert len(terms) in (4, 5)
        diffs = {b - a for a, b in zip(terms, terms[1:])}
        assert len(diffs) == 1
        step = diffs.pop()
        steps[ex.difficulty].add(step)
        assert int(ex.target) == terms[-1] + step
        assert 0 < terms[0] <= 30
    assert steps["1"] == {1}
    assert steps["2"] <= set(range(2, 6)) and len(steps["2"]) > 1
    assert steps["3"] <= set(range(6, 16)) and len(steps["3"]) > 1


def test_digit_sum_levels():
    task = make_task("digit_sum", n_per_level=20)
    for ex in task.examples:
        ops = ex.inputs["expression"].split(" + ")
        assert len(ops) == {"1": 2, "2": 3, "3": 4}[ex.difficulty]
        assert all(len(o) == 1 and o.isdigit() for o in ops)
        assert ex.target == str(sum(int(o) for o in ops))
        assert ex.inputs["question"] == f"What is {ex.inputs['expression']}?"


def test_max_list_levels():
    task = make_task("max_list", n_per_level=20)
    for ex in task.examples:
        nums = _numbers(ex.inputs["numbers"])
        count, digits = {"1": (3, 1), "2": (5, 2), "3": (8, 2)}[ex.difficulty]
        assert len(nums) == count
        assert all(len(str(n)) == digits for n in nums)
        assert len(set(nums)) == count
        assert ex.target == str(max(nums))


@pytest.mark.parametrize("family", CLASSIC)
def test_checker_accepts_right_and_rejects_wrong(family):
    task = make_task(family, n_per_level=10)
    for ex in task.examples:
        right = _solve(family, ex.inputs)
        assert task.is_correct(ex, right), ex
        # read through the task's own extractor from a realistic completion
        assert task.is_correct(ex, task.extract(f"Answer: {right}")), ex
        for wrong in _wrong_answers(family, ex.inputs):
            assert not task.is_correct(ex, task.extract(wrong)), (ex, wrong)
        assert not task.is_correct(ex, None)


@pytest.mark.parametrize("family", CLASSIC)
def test_verifier_never_reads_the_target(family):
    task = make_task(family, n_per_level=10)
    assert task.verifier is not None
    for ex in task.examples:
        right = _solve(family, ex.inputs)
        # the same inputs with a wrong target: the verdicts must not change
        blind = Example(ex.id, ex.inputs, target="WRONG-TARGET", difficulty=ex.difficulty)
        for probe in (ex, blind):
            assert task.verifier(probe, right), (probe, right)
            assert task.verify(probe, right) is True
            assert task.verify(probe, None) is False


INFEASIBLE = {
    "reverse_words": lambda ex: [
        ex.inputs["words"],  # the input order unchanged
        ex.inputs["words"] + ", moon",  # a word too many
        "zebra, " + ", ".join(reversed(ex.inputs["words"].split(", ")[1:])),  # a foreign word
        "",
    ],
    "next_term": lambda ex: [
        str(_numbers(ex.inputs["sequence"])[-1]),  # repeats the last term
        str(_numbers(ex.inputs["sequence"])[0] - 1),  # goes backwards
        str(_numbers(ex.inputs["sequence"])[-1] + 10_000),  # far outside the span
        "12.5",
        "banana",
    ],
    "digit_sum": lambda ex: [
        str(9 * len(ex.inputs["expression"].split(" + ")) + 1),  # above the maximum sum
        "-1",
        str(max(_numbers(ex.inputs["expression"])) - 1),  # below the largest operand
        "3.5",
        "banana",
    ],
    "max_list": lambda ex: [
        str(max(_numbers(ex.inputs["numbers"])) + 1),  # not in the list
        "100",
        "banana",
    ],
}


@pytest.mark.parametrize("family", CLASSIC)
def test_verifier_rejects_infeasible_answers(family):
    task = make_task(family, n_per_level=10)
    for ex in task.examples:
        blind = Example(ex.id, ex.inputs, target=_solve(family, ex.inputs))
        for bad in INFEASIBLE[family](ex):
            assert not task.verifier(blind, bad), (ex, bad)


def test_verifiers_are_imperfect_where_they_should_be():
    """Verifiers check feasibility, not correctness: some wrong answers pass."""
    task = make_task("max_list", levels=(2,), n_per_level=3)
    ex = task.examples[0]
    smaller = sorted(_numbers(ex.inputs["numbers"]))[0]
    assert task.verifier(ex, str(smaller))
    assert not task.is_correct(ex, str(smaller))


def test_reverse_verifier_accepts_format_variants():
    task = make_task("reverse_words", levels=(3,), n_per_level=2)
    ex = task.examples[0]
    words = list(reversed(ex.inputs["words"].split(", ")))
    for text in (" ".join(words).upper(), "[" + ", ".join(words) + "]"):
        assert task.verify(ex, task.extract(text)) is True


@pytest.mark.parametrize(
    "kwargs, where, needle",
    [
        ({"family": "revers_words"}, "family", "did you mean 'reverse_words'"),
        ({"family": "nope"}, "family", "max_list"),
        ({"family": "digit_sum", "levels": (0,)}, "levels", "0"),
        ({"family": "digit_sum", "levels": (1, 4)}, "levels", "4"),
        ({"family": "digit_sum", "levels": ()}, "levels", "empty"),
        ({"family": "digit_sum", "levels": (1, 1)}, "levels", "twice"),
        ({"family": "digit_sum", "levels": 2}, "levels", "sequence"),
        ({"family": "digit_sum", "n_per_level": 0}, "n_per_level", "got 0"),
        ({"family": "digit_sum", "n_demos": -1}, "n_demos", "got -1"),
        ({"family": "digit_sum", "seed": "1"}, "seed", "'1'"),
        ({"family": "digit_sum", "levels": (1,), "n_per_level": 200}, "n_per_level", "too few"),
    ],
)
def test_make_task_errors(kwargs, where, needle):
    family = kwargs.pop("family")
    with pytest.raises(ConfigError) as err:
        make_task(family, **kwargs)
    text = str(err.value)
    assert text.startswith(where + ":")
    assert needle.lower() in text.lower()
    assert "fix:" in text
