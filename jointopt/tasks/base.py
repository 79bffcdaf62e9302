"""The two data objects of the task layer: :class:`Example` and :class:`Task`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jointopt.errors import DataError
from jointopt.tasks.extraction import AnswerExtractor, AnswerMatcher

__all__ = ["Example", "Task", "FrozenInputs"]


class FrozenInputs(Mapping[str, str]):
    """A read-only, hashable ``{field: value}`` mapping (the ``inputs`` of an :class:`Example`).

    It compares equal to any mapping with the same items, so ``example.inputs == {"a": "1"}``
    works; it cannot be changed after construction, which keeps :class:`Example` truly frozen.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str]) -> None:
        self._data: dict[str, str] = dict(data)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._data)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenInputs, (self._data,))


@dataclass(frozen=True)
class Example:
    """One input of a task together with its reference answer.

    Attributes:
        id: unique identifier inside its dataset (e.g. ``"reverse_words-L1-0003"``).
        inputs: input fields by name; they are the template variables. Keys and values are
            strings. Stored as a read-only :class:`FrozenInputs`.
        target: the reference answer.
        difficulty: the difficulty bin label when known (``"1"``, ``"2"``, ``"3"`` for the
            built-in families), else ``None``.

    Raises:
        DataError: when a value has the wrong type or the id is empty.
    """

    id: str
    inputs: Mapping[str, str]
    target: str
    difficulty: str | None = None

    def __post_init__(self) -> None:
        where = f"example {self.id!r}"
        if not isinstance(self.id, str) or not self.id:
            raise DataError(
                "an example id must be a non-empty string",
                where="Example.id",
                value=self.id,
                fix="give every example a unique, non-empty string id",
            )
        if not isinstance(self.inputs, Mapping):
            raise DataError(
                "inputs must be a mapping of field name to string",
                where=f"{where}.inputs",
                value=self.inputs,
                fix="pass a dict such as {'question': '...'}",
            )
        for key, val in self.inputs.items():
            if not isinstance(key, str) or not isinstance(val, str):
                raise DataError(
                    "input field names and values must be strings",
                    where=f"{where}.inputs[{key!r}]",
                    value=val,
                    fix="convert the value to a string (the loaders do this for you)",
                )
        if not isinstance(self.target, str):
            raise DataError(
                "the target must be a string",
                where=f"{where}.target",
                value=self.target,
                fix="convert the reference answer to a string",
            )
        if self.difficulty is not None and not isinstance(self.difficulty, str):
            raise DataError(
                "difficulty must be a string label or None",
                where=f"{where}.difficulty",
                value=self.difficulty,
                fix="use labels such as '1', '2', '3' or 'easy'",
            )
        if not isinstance(self.inputs, FrozenInputs):
            object.__setattr__(self, "inputs", FrozenInputs(self.inputs))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"id", "inputs", "target", "difficulty"}``."""
        return {
            "id": self.id,
            "inputs": dict(self.inputs),
            "target": self.target,
            "difficulty": self.difficulty,
        }


@dataclass(frozen=True)
class Task:
    """A task: what to ask, on which examples, and how answers are read and scored.

    Attributes:
        name: short identifier (``"reverse_words"``).
        description: one paragraph saying what the task is (used to propose instructions).
        fields: the input field names every example provides (template variables).
        examples: evaluation examples.
        demos: few-shot demonstration pool, disjoint from ``examples`` (by id and by inputs).
        extractor: reads the answer out of a model completion.
        matcher: compares an answer with a target and gives its canonical form for voting.
        verifier: optional serve-time check ``verifier(example, answer) -> bool`` that looks
            only at ``example.inputs`` and the extracted answer, never at ``example.target``.
            It must be a module-level function (picklable) when tasks cross processes.

    Raises:
        DataError: an example lacks a field, ids repeat, or a demo duplicates an example.
    """

    name: str
    description: str
    fields: tuple[str, ...]
    examples: tuple[Example, ...]
    demos: tuple[Example, ...]
    extractor: AnswerExtractor
    matcher: AnswerMatcher
    verifier: Callable[[Example, str], bool] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "examples", tuple(self.examples))
        object.__setattr__(self, "demos", tuple(self.demos))
        if not isinstance(self.name, str) or not self.name:
            raise DataError(
                "a task needs a non-empty name",
                where="Task.name",
                value=self.name,
                fix="name the task, e.g. 'my_qa'",
            )
        if not self.fields:
            raise DataError(
                "a task needs at least one input field",
                where=f"task {self.name!r}: fields",
                value=self.fields,
                fix="list the input field names, e.g. ('question',)",
            )
        for kind, group in (("examples", self.examples), ("demos", self.demos)):
            seen: set[str] = set()
            for ex in group:
                if not isinstance(ex, Example):
                    raise DataError(
                        f"{kind} must be Example objects",
                        where=f"task {self.name!r}: {kind}",
                        value=ex,
                        fix="build examples with jointopt.tasks.Example or load_examples()",
                    )
                missing = [f for f in self.fields if f not in ex.inputs]
                if missing:
                    raise DataError(
                        f"example lacks input field {missing[0]!r}; fields present: "
                        f"{sorted(ex.inputs)}",
                        where=f"task {self.name!r}: {kind} {ex.id!r}",
                        value=dict(ex.inputs),
                        fix=f"give every example the fields {list(self.fields)}",
                    )
                if ex.id in seen:
                    raise DataError(
                        f"duplicate example id in {kind}",
                        where=f"task {self.name!r}: {kind}",
                        value=ex.id,
                        fix="make example ids unique",
                    )
                seen.add(ex.id)
        example_ids = {ex.id for ex in self.examples}
        example_inputs = {ex.inputs: ex.id for ex in self.examples}
        for demo in self.demos:
            if demo.id in example_ids:
                raise DataError(
                    "a demo has the same id as an evaluation example",
                    where=f"task {self.name!r}: demos",
                    value=demo.id,
                    fix="demos must be disjoint from the examples; rename or remove the demo",
                )
            if demo.inputs in example_inputs:
                raise DataError(
                    f"demo {demo.id!r} has the same inputs as evaluation example "
                    f"{example_inputs[demo.inputs]!r} (the answer would leak into the prompt)",
                    where=f"task {self.name!r}: demos",
                    value=demo.id,
                    fix="remove that item from the demos",
                )
        if self.verifier is not None and not callable(self.verifier):
            raise DataError(
                "the verifier must be callable as verifier(example, answer) -> bool",
                where=f"task {self.name!r}: verifier",
                value=self.verifier,
                fix="pass a function or None",
            )

    def extract(self, text: str) -> str | None:
        """The answer inside a model completion, or ``None`` when there is none."""
        return self.extractor.extract(text)

    def canonical(self, answer: str | None) -> str | None:
        """Canonical form of an answer for voting (``None`` for no answer or an empty one)."""
        if answer is None:
            return None
        norm = self.matcher.normalize(answer)
        return norm if norm else None

    def is_correct(self, example: Example, answer: str | None) -> bool:
        """Whether ``answer`` (already extracted) matches ``example.target``."""
        return self.matcher.matches(answer, example.target)

    def verify(self, example: Example, answer: str | None) -> bool | None:
        """Run the serve-time verifier: ``None`` when the task has none, ``False`` for no answer."""
        if self.verifier is None:
            return None
        if answer is None:
            return False
        return bool(self.verifier(example, answer))

    def subset(self, examples: Iterable[Example]) -> Task:
        """The same task evaluated on other examples (demos, extractor, matcher unchanged)."""
        return dataclasses.replace(self, examples=tuple(examples))

    def by_difficulty(self) -> dict[str | None, tuple[Example, ...]]:
        """The examples grouped by difficulty label, in first-seen order."""
        groups: dict[str | None, list[Example]] = {}
        for ex in self.examples:
            groups.setdefault(ex.difficulty, []).append(ex)
        return {k: tuple(v) for k, v in groups.items()}
