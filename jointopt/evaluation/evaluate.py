"""Score a Policy on a task: per-example records and the trial's objectives.

All examples advance together: each round, the requests of every example still running
go to the backend as one batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from jointopt.backends.base import Backend
from jointopt.errors import StrategyError
from jointopt.core.generation import GenerationRequest, GenerationResult
from jointopt.core.policy import Policy
from jointopt.core.prompts import validate_template
from jointopt.strategies import Strategy, StrategyContext, StrategyOutcome, make_strategy
from jointopt.strategies.base import Run, example_context
from jointopt.strategies.pool import pool_samples
from jointopt.tasks import Task

__all__ = ["ExampleRecord", "EvaluationResult", "evaluate", "drive", "check_policy",
           "policy_contexts",
           "example_context", "pool_samples"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExampleRecord:
    """What answering one example cost and whether it was right.

    For a strategy scored from a sample pool (``pooled``), ``correct`` is the exact
    expected accuracy over random subsets of the pool (a probability), ``completion_tokens``
    the expected completion tokens, and ``answer`` is None; otherwise ``correct`` is 0 or 1.
    """

    example_id: str
    bin: str
    answer: str | None
    correct: float
    prompt_tokens: float
    completion_tokens: float
    engine_calls: int
    completions: int
    cached: int
    wall_time: float
    pooled: bool = False

    @property
    def tokens(self) -> float:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class EvaluationResult:
    """Objectives of a policy on a task, with the per-example records behind them.

    ``generated`` / ``cached``: completions produced by the engine / served from the
    sample store during this evaluation (pools included).
    """

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


def policy_run(policy: Policy, strategies: dict[str, Strategy], task: Task, example,
               seed: int = 0) -> tuple[Run, str | None]:
    """The generator that answers one example with a policy, and its bin when it is
    known before running (``None`` when the difficulty source probes: see
    ``outcome.info["bin"]``)."""
    source = policy.difficulty.source_class()
    if source.probes:
        allocation = next(iter(policy.bins.values()))
        bin_name = None
    else:
        bin_name, allocation = policy.allocation_for(example)
    ctx = example_context(policy.prompt, task, example, temperature=allocation.temperature,
                          max_tokens=allocation.max_tokens, seed=seed)
    if bin_name is None:
        return source.run(policy, strategies, ctx), None
    return strategies[bin_name].run(ctx), bin_name


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


def _pool_size(ctx: StrategyContext, k: int, pool_size: int) -> int:
    # Greedy decoding gives the same completion every time: one sample is the pool.
    return 1 if ctx.temperature == 0 else max(pool_size, k)


def _score_from_pool(strategy: Strategy, ctx: StrategyContext, result: GenerationResult,
                     k: int, bin_name: str) -> ExampleRecord:
    completions = list(result.completions)
    greedy = len(completions) < k  # a greedy pool: every draw is this one completion
    if greedy:
        completions = completions * k
    expected = strategy.score_pool(pool_samples(ctx, completions), completions, ctx)
    # k greedy samples are one generation and k - 1 copies (see GenerationResult.copies).
    completion_tokens = completions[0].num_tokens if greedy else expected.completion_tokens
    return ExampleRecord(
        example_id=ctx.example.id, bin=bin_name, answer=None,
        correct=float(expected.accuracy), prompt_tokens=result.prompt_tokens,
        completion_tokens=float(completion_tokens), engine_calls=1,
        completions=k, cached=result.cached, wall_time=result.wall_time, pooled=True,
    )


def policy_contexts(policy: Policy, task: Task, seed: int = 0
                    ) -> tuple[list[StrategyContext], list[str]]:
    """The context of every example of ``task`` under ``policy`` (its bin's temperature
    and max_tokens) and the example's bin (by label; probing sources pick theirs later)."""
    bins, contexts = [], []
    for example in task.examples:
        bin_name, allocation = policy.allocation_for(example)
        contexts.append(example_context(policy.prompt, task, example,
                                        temperature=allocation.temperature,
                                        max_tokens=allocation.max_tokens, seed=seed))
        bins.append(bin_name)
    return contexts, bins


def evaluate(policy: Policy, task: Task, backend: Backend, *, seed: int = 0,
             pool_size: int | None = None) -> EvaluationResult:
    """Answer every example of ``task`` with ``policy`` and score the answers.

    Args:
        pool_size: when set, parallel strategies (``Strategy.pool_k()`` not None) are not
            run but scored from a pool of ``max(pool_size, k)`` samples per example with
            the exact expected accuracy over random k-subsets (see :mod:`jointopt.strategies.pool`).
            With a :class:`~jointopt.backends.CachedBackend`, pools are shared by every
            trial with the same prompt, temperature and max_tokens, so most trials
            generate nothing. None runs every strategy as it would run in serving.
    """
    strategies = check_policy(policy, task)
    start = time.perf_counter()
    contexts, bins = policy_contexts(policy, task, seed)

    source = policy.difficulty.source_class()
    probed = source.probes  # the bin is picked while running: nothing is scored from pools
    pooled = [i for i, b in enumerate(bins)
              if not probed and pool_size is not None and strategies[b].pool_k() is not None]
    records: list[ExampleRecord | None] = [None] * len(contexts)
    all_results: list[GenerationResult] = []
    if pooled:
        ks = {i: strategies[bins[i]].pool_k() for i in pooled}
        requests = [contexts[i].request(n=_pool_size(contexts[i], ks[i], pool_size))
                    for i in pooled]
        results = backend.generate(requests)
        all_results.extend(results)
        for i, result in zip(pooled, results):
            records[i] = _score_from_pool(strategies[bins[i]], contexts[i], result, ks[i],
                                          bins[i])
    direct = [i for i in range(len(contexts)) if records[i] is None]
    driven = drive(backend, [
        source.run(policy, strategies, contexts[i]) if probed
        else strategies[bins[i]].run(contexts[i]) for i in direct])
    for i, (outcome, results) in zip(direct, driven):
        if probed:
            bins[i] = outcome.info["bin"]
        all_results.extend(results)
        example = contexts[i].example
        records[i] = ExampleRecord(
            example_id=example.id,
            bin=bins[i],
            answer=outcome.answer,
            correct=float(task.is_correct(example, outcome.answer)),
            prompt_tokens=sum(r.prompt_tokens for r in results),
            completion_tokens=sum(r.completion_tokens for r in results),
            engine_calls=len(results),
            completions=sum(len(r.completions) for r in results),
            cached=sum(r.cached for r in results),
            wall_time=sum(r.wall_time for r in results),
        )
    wall = time.perf_counter() - start
    final = [r for r in records if r is not None]
    count = max(len(final), 1)
    cached = sum(r.cached for r in all_results)
    generated = sum(len(r.completions) - r.copies for r in all_results) - cached
    result = EvaluationResult(
        accuracy=sum(r.correct for r in final) / count,
        mean_tokens=sum(r.tokens for r in final) / count,
        mean_prompt_tokens=sum(r.prompt_tokens for r in final) / count,
        mean_completion_tokens=sum(r.completion_tokens for r in final) / count,
        wall_time=wall,
        generated=generated,
        cached=cached,
        records=tuple(final),
    )
    log.info("evaluated %s: accuracy=%.3f tokens=%.1f (%d generated, %d cached) in %.1fs",
             policy.prompt.id, result.accuracy, result.mean_tokens, result.generated,
             result.cached, wall)
    return result
