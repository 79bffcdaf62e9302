"""The Strategy extension point.

A strategy answers one example by asking a backend for generations. It is written as a
generator: it *yields* a list of :class:`GenerationRequest` and *receives* the list of
:class:`GenerationResult` for them, as many rounds as it needs, then *returns* a
:class:`StrategyOutcome`. The evaluator runs the generators of all examples of a trial
side by side and sends each round of every example to the engine as one batch, so
strategies never call an engine and never see each other. Every result a strategy
receives is counted in its cost: there is no way to generate tokens off the books.
"""

from __future__ import annotations

import dataclasses
import difflib
from abc import ABC, abstractmethod
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from jointopt.errors import StrategyError
from jointopt.core.generation import ChatMessage, Completion, GenerationRequest, GenerationResult
from jointopt.core.seeds import stable_seed

if TYPE_CHECKING:
    from jointopt.core.pool_data import PoolData
    from jointopt.core.prompts import PromptTemplate
    from jointopt.strategies.pool import Expected, PoolSample
    from jointopt.tasks import Example, Task

__all__ = [
    "Strategy",
    "StrategyContext",
    "StrategyOutcome",
    "Candidate",
    "Run",
    "check_int",
    "check_float",
    "check_choice",
    "completions_of",
    "example_context",
    "example_seed",
    "require_verifier",
]

Run = Generator[list[GenerationRequest], list[GenerationResult], "StrategyOutcome"]


@dataclass(frozen=True)
class StrategyContext:
    """Everything a strategy needs to answer one example.

    Attributes:
        example: the input (its ``target`` must not be read by strategies).
        task: answer extraction, canonical forms and the optional serve-time verifier.
        messages: the rendered chat prompt.
        temperature: sampling temperature for this example's allocation.
        max_tokens: completion-token cap per generation.
        seed: base seed for this example; strategies derive request seeds from it.
        answer_regex: template-specific answer pattern tried before task extraction.
        model: the model that answers (the bin's ``model``); None is the policy's own.
    """

    example: "Example"
    task: "Task"
    messages: tuple[ChatMessage, ...]
    temperature: float
    max_tokens: int
    seed: int = 0
    answer_regex: str | None = None
    model: str | None = None

    def request(self, n: int = 1, **overrides: Any) -> GenerationRequest:
        """A request for this prompt with the allocation's sampling parameters."""
        params: dict[str, Any] = dict(
            messages=self.messages,
            n=n,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            logprobs=True,
            seed=self.seed,
            model=self.model,
        )
        params.update(overrides)
        return GenerationRequest(**params)

    def extract(self, text: str) -> str | None:
        """The answer in a completion, canonicalised so equal answers compare equal."""
        if self.answer_regex:
            import re

            match = re.search(self.answer_regex, text)
            if match:
                text = match.group(1) if match.groups() else match.group(0)
        return self.task.canonical(self.task.extract(text))

    def verify(self, answer: str | None) -> bool | None:
        """The task's serve-time verifier on an answer, or None if the task has none."""
        if self.task.verifier is None:
            return None
        if answer is None:
            return False
        return bool(self.task.verifier(self.example, answer))


def example_seed(base: int, example_id: str) -> int:
    """The seed of one example: derived from the run's ``base`` seed and the example id."""
    return stable_seed(base, example_id, sep="|")


def example_context(template: "PromptTemplate", task: "Task", example: "Example", *,
                    temperature: float, max_tokens: int, seed: int = 0,
                    model: str | None = None) -> StrategyContext:
    """The context in which a strategy answers ``example`` with ``template`` (the example's
    seed is derived from ``seed`` and its id, as in every evaluation; ``model``: the
    model that answers, None for the policy's own)."""
    from jointopt.core.prompts import render_messages

    return StrategyContext(
        example=example, task=task, messages=render_messages(template, task, example),
        temperature=temperature, max_tokens=max_tokens, seed=example_seed(seed, example.id),
        answer_regex=template.answer_regex, model=model,
    )


@dataclass(frozen=True)
class Candidate:
    """One completion read as an answer."""

    text: str
    answer: str | None
    score: float | None = None


@dataclass(frozen=True)
class StrategyOutcome:
    """A strategy's final answer and the candidates it considered."""

    answer: str | None
    candidates: tuple[Candidate, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)


def check_int(where: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """Validate an integer parameter, naming it in the error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise StrategyError(
            "must be an integer", where=where, value=value, fix=f"use an integer >= {minimum}"
        )
    if value < minimum or (maximum is not None and value > maximum):
        rng = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise StrategyError(f"`{where.rsplit('.', 1)[-1]}` must be {rng}", where=where,
                            value=value, fix=f"use a value {rng}")
    return value


def check_float(where: str, value: Any, minimum: float, maximum: float | None = None) -> float:
    """Validate a real-valued parameter, naming it in the error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StrategyError("must be a number", where=where, value=value,
                            fix=f"use a number >= {minimum}")
    if value < minimum or (maximum is not None and value > maximum):
        rng = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise StrategyError(f"`{where.rsplit('.', 1)[-1]}` must be {rng}", where=where,
                            value=value, fix=f"use a value {rng}")
    return float(value)


def require_verifier(task: "Task", where: str, value: Any, alternatives: str) -> None:
    """Raise :class:`StrategyError` when a parameter needs the task's serve-time verifier
    and the task has none; ``alternatives`` names the values that work without one."""
    if task.verifier is None:
        raise StrategyError(
            f"task {task.name!r} has no serve-time verifier", where=where, value=value,
            fix=f"use {alternatives}, or give the task a verifier",
        )


def check_choice(where: str, value: Any, choices: Sequence[str]) -> str:
    """Validate a categorical parameter, suggesting the closest valid choice."""
    if value not in choices:
        close = difflib.get_close_matches(str(value), list(choices), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise StrategyError(f"unknown value for `{where.rsplit('.', 1)[-1]}`", where=where,
                            value=value, fix=f"{hint}choose one of: {', '.join(choices)}")
    return value


class Strategy(ABC):
    """Base class of inference strategies.

    Subclasses set :attr:`name`, declare a frozen dataclass :attr:`Params` whose
    ``__post_init__`` validates every field with :func:`check_int` & co., and implement
    :meth:`run` and :meth:`max_completions`. ``jointopt.testing.StrategyContract`` is the
    test suite every strategy passes.
    """

    #: Registry name used in search spaces and policy files.
    name: ClassVar[str]
    #: Frozen dataclass of the strategy's parameters.
    Params: ClassVar[type]

    def __init__(self, **params: Any) -> None:
        self.params = self.parse_params(params)

    @classmethod
    def param_names(cls) -> list[str]:
        """The names of the strategy's parameters (the fields of :attr:`Params`)."""
        return [f.name for f in dataclasses.fields(cls.Params)]

    @classmethod
    def parse_params(cls, params: Mapping[str, Any]) -> Any:
        """Build and validate :attr:`Params`; unknown names raise :class:`StrategyError`."""
        known = cls.param_names()
        for key in params:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise StrategyError(
                    f"unknown parameter for strategy {cls.name!r}",
                    where=f"{cls.name}.{key}",
                    value=params[key],
                    fix=f"{hint}known parameters: {', '.join(known) or '(none)'}",
                )
        return cls.Params(**params)

    def check_task(self, task: "Task") -> None:
        """Raise :class:`StrategyError` if the strategy cannot run on ``task`` (hook)."""

    @abstractmethod
    def max_completions(self) -> int:
        """Upper bound on the completions one example may cost (the budget cap)."""

    def models(self) -> tuple[str, ...]:
        """Models the strategy calls by name besides the bin's own (a cascade's
        ``escalate_to``); a runtime needs a backend for each. None by default."""
        return ()

    def pool_k(self) -> int | None:
        """Samples used, if the strategy is a function of i.i.d. samples of one prompt.

        Such *parallel* strategies are scored from a shared sample pool (see
        :mod:`jointopt.strategies.pool`) by :meth:`score_pool` instead of being run; others return None.
        """
        return None

    def score_pool(self, pool: Sequence["PoolSample"], completions: Sequence[Completion],
                   ctx: StrategyContext) -> "Expected":
        """Expected accuracy and completion tokens over random ``pool_k()``-subsets of ``pool``.

        ``completions[i]`` is the completion behind ``pool[i]`` (for scorers that need it).
        """
        raise NotImplementedError(f"strategy {self.name!r} cannot be scored from a pool")

    def score_pool_batch(self, pools: Sequence["PoolData"],
                         contexts: Sequence[StrategyContext]) -> list["Expected"] | None:
        """:meth:`score_pool` for the pools of many examples at once, from their arrays
        (:class:`~jointopt.core.pool_data.PoolData`); ``contexts[i]`` answers ``pools[i]``.

        Returns None when the strategy scores pools only one by one from completions
        (the default); the evaluator then calls :meth:`score_pool` per example.
        """
        return None

    @abstractmethod
    def run(self, ctx: StrategyContext) -> Run:
        """Answer one example (a generator; see the module docstring)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


def completions_of(results: Sequence[GenerationResult]) -> list[Completion]:
    """All completions of a round, in order."""
    return [c for r in results for c in r.completions]
