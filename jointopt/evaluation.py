"""Score a Policy on a task: per-example records and the trial's objectives.

All examples advance together: each round, the requests of every example still running
go to the backend as one batch.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .backends.base import Backend
from .errors import StrategyError
from .generation import GenerationRequest, GenerationResult
from .policy import Policy
from .prompts import render_messages, validate_template
from .strategies import Strategy, StrategyContext, StrategyOutcome, make_strategy
from .strategies.base import Run
from .tasks import Task

__all__ = ["ExampleRecord", "EvaluationResult", "evaluate", "drive", "check_policy"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExampleRecord:
    """What answering one example cost and whether it was right."""

    example_id: str
    bin: str
    answer: str | None
    correct: bool
    prompt_tokens: int
    completion_tokens: int
    engine_calls: int
    completions: int
    cached: int
    wall_time: float

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class EvaluationResult:
    """Objectives of a policy on a task, with the per-example records behind them."""

    accuracy: float
    mean_tokens: float
    mean_prompt_tokens: float
    mean_completion_tokens: float
    wall_time: float
    generated: int
    cached: int
    records: tuple[ExampleRecord, ...]

    def metrics(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "mean_tokens": self.mean_tokens,
            "mean_prompt_tokens": self.mean_prompt_tokens,
            "mean_completion_tokens": self.mean_completion_tokens,
            "wall_time_s": self.wall_time,
            "completions_generated": float(self.generated),
            "completions_cached": float(self.cached),
        }


def _seed(base: int, example_id: str) -> int:
    digest = hashlib.sha256(f"{base}|{example_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31)


def drive(
    backend: Backend, runs: Sequence[Run]
) -> list[tuple[StrategyOutcome, list[GenerationResult]]]:
    """Run strategy generators side by side; one backend call per round.

    Returns, per run, its outcome and every result it received (its full cost).
    """
    received: list[list[GenerationResult]] = [[] for _ in runs]
    outcomes: list[StrategyOutcome | None] = [None] * len(runs)
    pending: dict[int, list[GenerationRequest]] = {}

    def advance(i: int, results: list[GenerationResult] | None) -> None:
        try:
            requests = runs[i].send(results)
        except StopIteration as stop:
            if not isinstance(stop.value, StrategyOutcome):
                raise StrategyError("strategy returned no StrategyOutcome",
                                    value=stop.value) from None
            outcomes[i] = stop.value
            return
        if not requests:
            raise StrategyError("strategy yielded an empty round of requests", value=requests)
        pending[i] = list(requests)

    for i in range(len(runs)):
        advance(i, None)
    while pending:
        order = sorted(pending)
        batch = [req for i in order for req in pending[i]]
        results = backend.generate(batch)
        if len(results) != len(batch):
            raise StrategyError("backend returned a wrong number of results",
                                value=(len(results), len(batch)))
        pending_now = {i: pending.pop(i) for i in order}
        offset = 0
        for i in order:
            size = len(pending_now[i])
            chunk = results[offset: offset + size]
            offset += size
            received[i].extend(chunk)
            advance(i, chunk)
    return [(outcome, got) for outcome, got in zip(outcomes, received)]  # type: ignore[misc]


def check_policy(policy: Policy, task: Task) -> dict[str, Strategy]:
    """Validate a policy against a task before any compute; returns a strategy per bin."""
    validate_template(policy.prompt, task)
    strategies = {}
    for name, allocation in policy.bins.items():
        strategy = make_strategy(allocation.strategy, dict(allocation.params),
                                 where=f"bins.{name}.strategy")
        strategy.check_task(task)
        strategies[name] = strategy
    return strategies


def evaluate(policy: Policy, task: Task, backend: Backend, *, seed: int = 0) -> EvaluationResult:
    """Answer every example of ``task`` with ``policy`` and score the answers."""
    strategies = check_policy(policy, task)
    start = time.perf_counter()
    bins, runs = [], []
    for example in task.examples:
        bin_name, allocation = policy.allocation_for(example)
        ctx = StrategyContext(
            example=example,
            task=task,
            messages=render_messages(policy.prompt, task, example),
            temperature=allocation.temperature,
            max_tokens=allocation.max_tokens,
            seed=_seed(seed, example.id),
            answer_regex=policy.prompt.answer_regex,
        )
        bins.append(bin_name)
        runs.append(strategies[bin_name].run(ctx))
    driven = drive(backend, runs)
    wall = time.perf_counter() - start

    records = []
    for example, bin_name, (outcome, results) in zip(task.examples, bins, driven):
        records.append(ExampleRecord(
            example_id=example.id,
            bin=bin_name,
            answer=outcome.answer,
            correct=task.is_correct(example, outcome.answer),
            prompt_tokens=sum(r.prompt_tokens for r in results),
            completion_tokens=sum(r.completion_tokens for r in results),
            engine_calls=len(results),
            completions=sum(len(r.completions) for r in results),
            cached=sum(r.cached for r in results),
            wall_time=sum(r.wall_time for r in results),
        ))
    count = max(len(records), 1)
    completions = sum(r.completions for r in records)
    cached = sum(r.cached for r in records)
    result = EvaluationResult(
        accuracy=sum(r.correct for r in records) / count,
        mean_tokens=sum(r.tokens for r in records) / count,
        mean_prompt_tokens=sum(r.prompt_tokens for r in records) / count,
        mean_completion_tokens=sum(r.completion_tokens for r in records) / count,
        wall_time=wall,
        generated=completions - cached,
        cached=cached,
        records=tuple(records),
    )
    log.info("evaluated %s: accuracy=%.3f tokens=%.1f (%d generated, %d cached) in %.1fs",
             policy.prompt.id, result.accuracy, result.mean_tokens, result.generated,
             result.cached, wall)
    return result
