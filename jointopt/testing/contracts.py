"""Ready-made contract test suites for the extension points.

Every Backend, Strategy, Scorer, DifficultySource and Exporter must pass its contract. Use them with pytest by
subclassing and supplying a fixture::

    from jointopt.testing import StrategyContract

    class TestMyStrategy(StrategyContract):
        @pytest.fixture
        def strategy(self):
            return MyStrategy(n=3)

        bad_params = [({"n": 0}, "n")]

The suites run on :class:`~jointopt.backends.scripted.ScriptedBackend` and the
:func:`toy_task`, so they are offline and fast.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from jointopt.backends.base import Backend
from jointopt.backends.scripted import ScriptedBackend
from jointopt.errors import StrategyError
from jointopt.evaluation.evaluate import drive
from jointopt.core.generation import ChatMessage, GenerationRequest, GenerationResult
from jointopt.strategies.base import Strategy, StrategyContext, StrategyOutcome
from jointopt.testing.difficulty_contract import DifficultySourceContract
from jointopt.testing.export_contract import ExporterContract, example_context
from jointopt.tasks import AnswerExtractor, AnswerMatcher, Example, Task

__all__ = [
    "BackendContract",
    "DifficultySourceContract",
    "ExporterContract",
    "example_context",
    "StrategyContract",
    "ScorerContract",
    "RecordingBackend",
    "toy_task",
    "noisy_responder",
    "reverse_words_responder",
    "scripted_backend",
]


def _toy_verifier(example: Example, answer: str) -> bool:
    return answer.strip().isdigit()


def toy_task(n: int = 6) -> Task:
    """A tiny arithmetic task whose scripted answers are right part of the time."""
    examples = tuple(
        Example(id=f"toy-{i}", inputs={"question": f"What is {i} + {i + 1}?"},
                target=str(2 * i + 1), difficulty=str(1 + i % 3))
        for i in range(n)
    )
    demos = (Example(id="demo-0", inputs={"question": "What is 10 + 20?"}, target="30"),)
    return Task(
        name="toy_sum", description="Add two numbers.", fields=("question",),
        examples=examples, demos=demos,
        extractor=AnswerExtractor(kind="last_number"),
        matcher=AnswerMatcher(kind="numeric"),
        verifier=_toy_verifier,
    )


def noisy_responder(p_correct: float = 0.6):
    """A responder for :func:`toy_task` prompts: right with probability ``p_correct``,
    otherwise off by one or rambling; revision prompts echo the previous answer."""

    def respond(request: GenerationRequest, index: int, rng: random.Random) -> str:
        text = request.messages[-1].content
        numbers = [int(tok) for tok in text.replace("?", " ").split() if tok.isdigit()]
        previous = request.messages[-2] if len(request.messages) > 1 else None
        if len(numbers) < 2 and previous is not None and previous.role == "assistant":
            return previous.content  # a revision turn: echo the previous attempt
        truth = sum(numbers[-2:]) if len(numbers) >= 2 else 0
        roll = rng.random()
        if roll < p_correct:
            return f"The answer is {truth}."
        if roll < p_correct + (1 - p_correct) / 2:
            return f"I think {truth + rng.choice([-1, 1])}"
        return "Let me think about this " * rng.randint(1, 4)

    return respond


def reverse_words_responder(request: GenerationRequest, index: int, rng: random.Random) -> str:
    """A responder for the ``reverse_words`` task family: reverses the word list, right more
    often with demonstrations in the prompt (0.8) than without (0.35)."""
    words = request.messages[-1].content.split(":")[-1].strip().split(", ")
    p_right = 0.8 if len(request.messages) > 3 else 0.35
    if rng.random() < p_right:
        return ", ".join(reversed(words))
    return ", ".join(rng.sample(words, len(words)))


_RESPONDERS = {"echo": None, "reverse_words": reverse_words_responder,
               "thinking": "jointopt.testing.thinking:thinking_responder"}


class _InstrumentedScripted(ScriptedBackend):
    """A ScriptedBackend that can be slow and that records what it generates."""

    def __init__(self, responder: Any, model_id: str, delay: float,
                 log_file: str | None, busy_file: str | None) -> None:
        super().__init__(responder, model_id=model_id)
        self.delay = delay
        self.log_file = log_file
        self.busy_file = busy_file

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import hashlib
        import os
        import time
        from pathlib import Path

        busy = Path(self.busy_file) if self.busy_file else None
        if busy is not None:
            busy.write_text(str(os.getpid()))
        try:
            if self.delay:
                time.sleep(self.delay)
            results = super().generate(requests)
            if self.log_file:
                lines = []
                for r in requests:
                    key = hashlib.sha256(f"{self.model_id}|{r.sampling_key()}".encode())
                    lines += [f"{os.getpid()} {key.hexdigest()[:24]} {r.offset + i}\n"
                              for i in range(r.n)]
                # one write per call: appends of several processes do not interleave
                fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, "".join(lines).encode())
                finally:
                    os.close(fd)
            return results
        finally:
            if busy is not None:
                busy.unlink(missing_ok=True)


def scripted_backend(*, model: str | None = None, seed: int | None = None,
                     max_model_len: int | None = None,
                     engine_kwargs: dict[str, Any] | None = None) -> ScriptedBackend:
    """A :class:`ScriptedBackend` built from a study config, so whole studies (also in
    worker processes) run offline: ``model: {backend: scripted, engine: {...}}``, or the
    registry path ``backend: "jointopt.testing:scripted_backend"``.

    Options (``model.engine``):
        responder: ``echo`` (default), ``noisy`` (:func:`noisy_responder`, with
            ``p_correct``), ``reverse_words`` (:func:`reverse_words_responder`),
            ``thinking`` (:func:`jointopt.testing.thinking.thinking_responder`) or a
            ``package.module:function`` path to a responder.
        p_correct: probability of a right answer for ``noisy``.
        model_id: identifier in cache keys (default ``scripted``).
        delay: seconds every ``generate`` call sleeps (a slow engine).
        log_file: file that gets one line ``<pid> <request key> <sample index>`` per
            generated completion (appended; counts engine work across processes and runs).
        busy_file: file that exists while a ``generate`` call is in progress.
    """
    import importlib

    options = dict(engine_kwargs or {})
    known = {"responder", "p_correct", "model_id", "delay", "log_file", "busy_file"}
    unknown = sorted(set(options) - known)
    if unknown:
        from jointopt.errors import BackendError

        raise BackendError("unknown option for the scripted backend", where="model.engine",
                           value=unknown, fix=f"known options: {', '.join(sorted(known))}")
    name = options.get("responder", "echo")
    if name == "noisy":
        responder = noisy_responder(float(options.get("p_correct", 0.6)))
    elif name in _RESPONDERS and not isinstance(_RESPONDERS[name], str):
        responder = _RESPONDERS[name]
    else:
        name = _RESPONDERS.get(name, name)
        module, _, attr = str(name).partition(":")
        responder = getattr(importlib.import_module(module), attr)
    return _InstrumentedScripted(responder, str(options.get("model_id", "scripted")),
                                 float(options.get("delay", 0.0)), options.get("log_file"),
                                 options.get("busy_file"))


class RecordingBackend(Backend):
    """Wraps a backend and keeps every result it returned (for accounting checks)."""

    name = "recording"

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.batches: list[list[GenerationResult]] = []

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        results = self.inner.generate(requests)
        self.batches.append(results)
        return results

    @property
    def total_tokens(self) -> int:
        return sum(r.total_tokens for batch in self.batches for r in batch)


def _contexts(task: Task, seed: int = 0) -> list[StrategyContext]:
    return [
        StrategyContext(example=ex, task=task,
                        messages=(ChatMessage("user", ex.inputs["question"]),),
                        temperature=0.7, max_tokens=24, seed=seed + i)
        for i, ex in enumerate(task.examples)
    ]


class StrategyContract:
    """Tests every :class:`Strategy` must pass. Provide a ``strategy`` fixture and
    ``bad_params``: a list of (params, name-of-the-offending-parameter)."""

    bad_params: list[tuple[dict[str, Any], str]] = []

    @pytest.fixture
    def strategy(self) -> Strategy:  # pragma: no cover - supplied by subclasses
        raise NotImplementedError("define a `strategy` fixture")

    def _run(self, strategy: Strategy, seed: int = 0):
        task = toy_task()
        backend = RecordingBackend(ScriptedBackend(noisy_responder()))
        contexts = _contexts(task, seed)
        outcomes = drive(backend, [strategy.run(ctx) for ctx in contexts])
        return task, backend, outcomes

    def test_returns_an_outcome_per_example(self, strategy: Strategy) -> None:
        task, _, outcomes = self._run(strategy)
        assert len(outcomes) == len(task.examples)
        for outcome, results in outcomes:
            assert isinstance(outcome, StrategyOutcome)
            assert results, "a strategy must generate at least once"

    def test_token_accounting_is_exact(self, strategy: Strategy) -> None:
        _, backend, outcomes = self._run(strategy)
        counted = sum(r.total_tokens for _, results in outcomes for r in results)
        assert counted == backend.total_tokens
        for _, results in outcomes:
            for r in results:
                assert r.prompt_tokens > 0
                assert len(r.completions) == r.request.n

    def test_respects_its_budget_cap(self, strategy: Strategy) -> None:
        _, _, outcomes = self._run(strategy)
        for _, results in outcomes:
            assert sum(len(r.completions) for r in results) <= strategy.max_completions()
            for r in results:
                assert all(c.num_tokens <= r.request.max_tokens for c in r.completions)

    def test_deterministic_under_a_seed(self, strategy: Strategy) -> None:
        _, _, first = self._run(strategy, seed=3)
        _, _, second = self._run(strategy, seed=3)
        assert [o.answer for o, _ in first] == [o.answer for o, _ in second]
        assert ([sum(r.total_tokens for r in res) for _, res in first]
                == [sum(r.total_tokens for r in res) for _, res in second])

    def test_answers_are_canonical_or_none(self, strategy: Strategy) -> None:
        task, _, outcomes = self._run(strategy)
        for outcome, _ in outcomes:
            assert outcome.answer is None or outcome.answer == task.canonical(outcome.answer)

    def test_bad_parameters_are_rejected_by_name(self, strategy: Strategy) -> None:
        cls = type(strategy)
        with pytest.raises(StrategyError) as info:
            cls(no_such_parameter=1)
        assert "no_such_parameter" in str(info.value)
        for params, name in self.bad_params:
            with pytest.raises(StrategyError) as info:
                cls(**params)
            assert name in str(info.value)
            assert repr(params[name]) in str(info.value)


class BackendContract:
    """Tests every :class:`Backend` must pass. Provide a ``backend`` fixture."""

    @pytest.fixture
    def backend(self) -> Backend:  # pragma: no cover - supplied by subclasses
        raise NotImplementedError("define a `backend` fixture")

    @staticmethod
    def _request(text: str, **kw: Any) -> GenerationRequest:
        return GenerationRequest(messages=(ChatMessage("user", text),), **kw)

    def test_declares_its_study_settings(self, backend: Backend) -> None:
        """Capabilities are class attributes a study reads without building an engine."""
        from jointopt.backends.base import OPTIONAL_SETTINGS

        cls = type(backend)
        assert set(cls.settings_keys) <= set(OPTIONAL_SETTINGS)
        assert isinstance(cls.loads_model, bool)
        assert callable(cls.from_settings) and callable(cls.check_settings)

    def test_one_result_per_request_in_order(self, backend: Backend) -> None:
        requests = [self._request(f"Say the number {i}.", n=1 + i % 3, max_tokens=8,
                                  temperature=0.7) for i in range(5)]
        results = backend.generate(requests)
        assert len(results) == len(requests)
        for request, result in zip(requests, results):
            assert result.request == request
            assert len(result.completions) == request.n
            assert result.prompt_tokens > 0

    def test_token_ids_and_finish_reasons(self, backend: Backend) -> None:
        result = backend.generate([self._request("Count from one to fifty.", n=2,
                                                 max_tokens=3, temperature=0.7)])[0]
        for c in result.completions:
            assert 1 <= c.num_tokens <= 3
            assert c.finish_reason in ("stop", "length")
        assert any(c.finish_reason == "length" for c in result.completions)

    def test_logprobs_when_asked(self, backend: Backend) -> None:
        on, off = backend.generate([
            self._request("Name a colour.", max_tokens=6, logprobs=True),
            self._request("Name a colour.", max_tokens=6, logprobs=False),
        ])
        for c in on.completions:
            assert c.logprobs is not None and len(c.logprobs) == c.num_tokens
            assert all(lp <= 0.0 for lp in c.logprobs)
        for c in off.completions:
            assert c.logprobs is None

    def test_model_id_is_stable(self, backend: Backend) -> None:
        assert backend.model_id and backend.model_id == backend.model_id


class ScorerContract:
    """Tests every :class:`Scorer` must pass. Provide a ``scorer`` fixture."""

    @pytest.fixture
    def scorer(self):  # pragma: no cover - supplied by subclasses
        raise NotImplementedError("define a `scorer` fixture")

    def test_scores_are_floats_and_none_answers_lose(self, scorer) -> None:
        task = toy_task()
        ctx = _contexts(task)[0]
        backend = ScriptedBackend(noisy_responder(1.0))
        completion = backend.generate([ctx.request(n=1)])[0].completions[0]
        good = scorer.score(ctx, completion, ctx.extract(completion.text))
        none = scorer.score(ctx, completion, None)
        assert isinstance(good, float) and isinstance(none, float)
        assert none < good

    def test_does_not_read_the_target(self, scorer) -> None:
        task = toy_task()
        ctx = _contexts(task)[0]
        backend = ScriptedBackend(noisy_responder(1.0))
        completion = backend.generate([ctx.request(n=1)])[0].completions[0]
        answer = ctx.extract(completion.text)
        from dataclasses import replace

        other = replace(ctx, example=replace(ctx.example, target="-12345"))
        assert scorer.score(ctx, completion, answer) == scorer.score(other, completion, answer)
