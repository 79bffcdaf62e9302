"""Prompt templates: rendering, validation against the task, sandboxing."""

from __future__ import annotations

import pytest

from jointopt.errors import TemplateError
from jointopt.core.prompts import PromptTemplate, render_messages, validate_template
from jointopt.tasks import make_task


@pytest.fixture
def task():
    return make_task("reverse_words", levels=(1,), n_per_level=3, n_demos=4)


def test_fewshot_renders_demos_as_turns(task):
    t = PromptTemplate(id="fs", system="Answer only.", user="{{ question }}", shots=2)
    msgs = render_messages(t, task, task.examples[0])
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2].content == task.demos[0].target
    assert msgs[-1].content == task.examples[0].inputs["question"]


def test_unknown_variable_is_named_with_the_fields_and_a_suggestion(task):
    t = PromptTemplate(id="typo", user="{{ questoin }}")
    with pytest.raises(TemplateError) as info:
        validate_template(t, task)
    msg = str(info.value)
    assert "questoin" in msg and "did you mean {{ question }}" in msg and "words" in msg


def test_too_many_shots_is_refused(task):
    with pytest.raises(TemplateError, match="demonstrations"):
        validate_template(PromptTemplate(id="fs", user="{{ question }}", shots=9), task)


def test_syntax_errors_name_the_part():
    with pytest.raises(TemplateError, match=r"prompt 'bad'\.user"):
        PromptTemplate(id="bad", user="{{ question ")


@pytest.mark.parametrize("text", [
    "{{ question.__class__.__mro__ }}",
    "{{ ''.__class__.__base__.__subclasses__() }}",
    "{{ question.upper.__globals__ }}",
])
def test_sandbox_refuses_python_internals(task, text):
    t = PromptTemplate(id="evil", user=text)
    with pytest.raises(TemplateError):
        validate_template(t, task)


def test_round_trip_through_dict():
    t = PromptTemplate(id="x", user="{{ q }}", system="s", shots=1, answer_regex="A: (.+)")
    assert PromptTemplate.from_dict(t.to_dict()) == t


@pytest.mark.parametrize("text", ["{{ 'a' * 10**9 }}", "{{ [1] * 1000000 }}",
                                  "{{ 7 ** 100000 }}"])
def test_sandbox_refuses_templates_that_exhaust_memory(task, text):
    with pytest.raises(TemplateError, match="unsafe|too large|at most"):
        validate_template(PromptTemplate(id="big", user=text), task)


def test_small_arithmetic_still_renders(task):
    t = PromptTemplate(id="ok", user="{{ '-' * 3 }} {{ 2 ** 3 }} {{ question }}")
    assert render_messages(t, task, task.examples[0])[-1].content.startswith("--- 8 ")
