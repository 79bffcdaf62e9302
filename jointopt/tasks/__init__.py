"""Tasks: examples, answer extraction and scoring, built-in generated families, loaders.

>>> from jointopt.tasks import make_task
>>> task = make_task("reverse_words", levels=(1,), n_per_level=2, n_demos=1)
>>> task.examples[0].id
'reverse_words-L1-0000'
>>> task.is_correct(task.examples[0], task.extract("Answer: " + task.examples[0].target))
True
"""

from __future__ import annotations

from jointopt.tasks.base import Example, FrozenInputs, Task
from jointopt.tasks.extraction import AnswerExtractor, AnswerMatcher, ExtractorKind, MatcherKind, parse_number
from jointopt.tasks.families import FAMILIES, LEVELS, describe_families, make_task
from jointopt.tasks.loaders import DatasetFormat, load_examples, make_dataset_task

__all__ = [
    "Example",
    "FrozenInputs",
    "Task",
    "AnswerExtractor",
    "AnswerMatcher",
    "ExtractorKind",
    "MatcherKind",
    "parse_number",
    "FAMILIES",
    "LEVELS",
    "describe_families",
    "make_task",
    "DatasetFormat",
    "load_examples",
    "make_dataset_task",
]
