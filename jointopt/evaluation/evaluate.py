"""Score a Policy on a task: per-example records and the trial's objectives.

All examples advance together: each round, the requests of every example still running
go to the backend as one batch.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jointopt.backends.base import Backend
from jointopt.errors import StrategyError
from jointopt.core.cost import TokenCost
from jointopt.core.generation import GenerationRequest, GenerationResult
from jointopt.core.policy import Policy
from jointopt.core.prompts import validate_template
from jointopt.strategies import Strategy, StrategyContext, StrategyOutcome, make_strategy
from jointopt.strategies.base import Run, example_context
from jointopt.strategies.pool import pool_samples
from jointopt.tasks import Task

__all__ = ["ExampleRecord", "EvaluationResult", "evaluate", "drive", "check_policy",
           "policy_contexts", "priced",
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
    #: Completion tokens spent thinking (part of ``completion_tokens``).
    thinking_tokens: float = 0.0
    #: Completion tokens served from a sample store rather than generated (part of
    #: ``completion_tokens``; 0 for pool-scored records, whose tokens are an expectation).
    reused_tokens: float = 0.0
    #: What answering cost in the study's cost unit (None: no cost model given).
    cost: float | None = None

    @property
    def tokens(self) -> float:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class EvaluationResult:
    """Objectives of a policy on a task, with the per-example records behind them.

    ``generated`` / ``cached``: completions produced by the engine / served from the
    sample store during this evaluation (pools included); ``tokens_generated`` /
    ``tokens_reused``: their completion tokens (a two-phase thinking sample whose thought
    was served and whose answer was generated counts each part where it came from).
    """

    accuracy: float
    mean_tokens: float
    mean_prompt_tokens: float
    mean_completion_tokens: float
    wall_time: float
    generated: int
    cached: int
    records: tuple[ExampleRecord, ...]
    #: Mean cost per example in the cost model's unit (None: no cost model given).
    mean_cost: float | None = None
    #: Completion tokens the engine generated / the sample store served (all examples).
    tokens_generated: int = 0
    tokens_reused: int = 0

    @property
    def mean_thinking_tokens(self) -> float:
        """Mean completion tokens spent thinking per example."""
        return sum(r.thinking_tokens for r in self.records) / max(len(self.records), 1)

    def metrics(self) -> dict[str, float]:
        extra = {} if self.mean_cost is None else {"mean_cost": self.mean_cost}
        return {**extra,
            "accuracy": self.accuracy,
            "mean_tokens": self.mean_tokens,
            "mean_prompt_tokens": self.mean_prompt_tokens,
            "mean_completion_tokens": self.mean_completion_tokens,
            "wall_time_s": self.wall_time,
            "completions_generated": float(self.generated),
            "completions_cached": float(self.cached),
            "completion_tokens_generated": float(self.tokens_generated),
            "completion_tokens_reused": float(self.tokens_reused),
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
                          max_tokens=allocation.max_tokens, seed=seed,
                          model=policy.model_of(allocation))
    if bin_name is None:
        return source.run(policy, strategies, ctx), None
    return strategies[bin_name].run(ctx), bin_name


def check_policy(policy: Policy, task: Task, backend: Backend | None = None
                 ) -> dict[str, Strategy]:
    """Validate a policy against a task before any compute; returns a strategy per bin.

    A bin whose allocation thinks gets its strategy wrapped in a
    :class:`~jointopt.strategies.thinking.ThinkingStrategy`, with the engine ``backend``
    offers (its ``thinking_markers()``; forcing without a backend).
    """
    from jointopt.strategies.thinking import ThinkingStrategy

    validate_template(policy.prompt, task)
    markers = backend.thinking_markers() if backend is not None else None
    strategies: dict[str, Strategy] = {}
    for name, allocation in policy.bins.items():
        strategy = make_strategy(allocation.strategy, dict(allocation.params),
                                 where=f"bins.{name}.strategy")
        strategy.check_task(task)
        if allocation.thinks:
            strategy = ThinkingStrategy(strategy, allocation.thinking, markers,
                                        where=f"bins.{name}.thinking.engine")
        strategies[name] = strategy
    return strategies


def _pool_size(ctx: StrategyContext, k: int, pool_size: int) -> int:
    # Greedy decoding gives the same completion every time: one sample is the pool.
    return 1 if ctx.temperature == 0 else max(pool_size, k)


def _cost(costs: Mapping[str, TokenCost] | None, default: str,
          results: Sequence[GenerationResult]) -> float | None:
    """What ``results`` cost, each at the price of the model its request names."""
    if costs is None:
        return None
    return sum(costs[r.request.model or default].of(r.prompt_tokens, r.completion_tokens)
               for r in results)


def priced(record: ExampleRecord, ctx: StrategyContext,
           costs: Mapping[str, TokenCost] | None, default: str) -> ExampleRecord:
    """A pool-scored ``record`` with its ``cost``: its expected tokens at the price of the
    model of its context (``default`` when the context names none); as is without costs."""
    if costs is None:
        return record
    rate = costs[ctx.model or default]
    return dataclasses.replace(record, cost=rate.of(record.prompt_tokens,
                                                    record.completion_tokens))


def policy_contexts(policy: Policy, task: Task, seed: int = 0
                    ) -> tuple[list[StrategyContext], list[str]]:
    """The context of every example of ``task`` under ``policy`` (its bin's model,
    temperature and max_tokens) and the example's bin (by label; probing sources pick
    theirs later)."""
    bins, contexts = [], []
    for example in task.examples:
        bin_name, allocation = policy.allocation_for(example)
        contexts.append(example_context(policy.prompt, task, example,
                                        temperature=allocation.temperature,
                                        max_tokens=allocation.max_tokens, seed=seed,
                                        model=policy.model_of(allocation)))
        bins.append(bin_name)
    return contexts, bins


def evaluate(policy: Policy, task: Task, backend: Backend, *, seed: int = 0,
             pool_size: int | None = None,
             costs: Mapping[str, TokenCost] | None = None) -> EvaluationResult:
    """Answer every example of ``task`` with ``policy`` and score the answers.

    Args:
        pool_size: when set, parallel strategies (``Strategy.pool_k()`` not None) are not
            run but scored from a pool of ``max(pool_size, k)`` samples per example with
            the exact expected accuracy over random k-subsets (see :mod:`jointopt.strategies.pool`).
            With a :class:`~jointopt.backends.CachedBackend`, pools are shared by every
            trial with the same prompt, temperature and max_tokens, so most trials
            generate nothing. None runs every strategy as it would run in serving.
        costs: model name -> its :class:`~jointopt.core.cost.TokenCost`, for every model
            the policy calls (``policy.models``); each record then carries its ``cost``
            and the result the ``mean_cost``. None: no costs.
    """
    from jointopt.evaluation.pooled import pools_for, score_pooled

    strategies = check_policy(policy, task, backend)
    start = time.perf_counter()
    contexts, bins = policy_contexts(policy, task, seed)

    source = policy.difficulty.source_class()
    probed = source.probes  # the bin is picked while running: nothing is scored from pools
    pooled = [i for i, b in enumerate(bins)
              if not probed and pool_size is not None and strategies[b].pool_k() is not None]
    records: list[ExampleRecord | None] = [None] * len(contexts)
    all_results: list[GenerationResult] = []
    pool_generated = pool_cached = pool_new = pool_reused = 0
    if pooled:
        ks = {i: strategies[bins[i]].pool_k() for i in pooled}
        requests = [contexts[i].request(n=_pool_size(contexts[i], ks[i], pool_size))
                    for i in pooled]
        pools, pool_generated = pools_for(backend, requests, [contexts[i] for i in pooled],
                                          policy.prompt.id)
        pool_cached = sum(p.cached for p in pools)
        pool_new, pool_reused = _pool_tokens(pools)
        for i, record in score_pooled(strategies, bins, contexts, pooled, ks, pools).items():
            records[i] = record
        for i in pooled:
            records[i] = priced(records[i], contexts[i], costs, policy.model)
    direct = [i for i in range(len(contexts)) if records[i] is None]
    driven = drive(backend, [
        source.run(policy, strategies, contexts[i]) if probed
        else strategies[bins[i]].run(contexts[i]) for i in direct])
    for i, (outcome, results) in zip(direct, driven):
        if probed:
            bins[i] = outcome.info["bin"]
        all_results.extend(results)
        records[i] = dataclasses.replace(_run_record(contexts[i], bins[i], outcome, results),
                                         cost=_cost(costs, policy.model, results))
    wall = time.perf_counter() - start
    final = [r for r in records if r is not None]
    count = max(len(final), 1)
    cached = sum(r.cached for r in all_results) + pool_cached
    generated = sum(len(r.completions) - r.copies - r.cached for r in all_results) + pool_generated
    run_reused = sum(r.reused_tokens for r in all_results)
    new_tokens = sum(r.completion_tokens for r in all_results) - run_reused + pool_new
    result = EvaluationResult(
        accuracy=sum(r.correct for r in final) / count,
        mean_tokens=sum(r.tokens for r in final) / count,
        mean_prompt_tokens=sum(r.prompt_tokens for r in final) / count,
        mean_completion_tokens=sum(r.completion_tokens for r in final) / count,
        wall_time=wall,
        generated=generated,
        cached=cached,
        records=tuple(final),
        mean_cost=None if costs is None else sum(r.cost or 0.0 for r in final) / count,
        tokens_generated=new_tokens,
        tokens_reused=run_reused + pool_reused,
    )
    log.info("evaluated %s: accuracy=%.3f tokens=%.1f (%d generated, %d cached) in %.1fs",
             policy.prompt.id, result.accuracy, result.mean_tokens, result.generated,
             result.cached, wall)
    return result


def _pool_tokens(pools) -> tuple[int, int]:
    """Completion tokens of the pools' samples the engine generated / the store served (a
    bank's recorded pools are served)."""
    new = reused = 0
    for pool in pools:
        if pool.completions is None:
            reused += round(pool.mean_completion_tokens * pool.samples)
            continue
        tokens = [c.num_tokens for c in pool.completions]
        reused += sum(tokens[: pool.cached])
        new += sum(tokens[pool.cached:])
    return new, reused


def _run_record(ctx: StrategyContext, bin_name: str, outcome: StrategyOutcome,
                results: Sequence[GenerationResult]) -> ExampleRecord:
    """The record of an example answered by running its strategy (every result is cost)."""
    example = ctx.example
    return ExampleRecord(
        example_id=example.id,
        bin=bin_name,
        answer=outcome.answer,
        correct=float(ctx.task.is_correct(example, outcome.answer)),
        prompt_tokens=sum(r.prompt_tokens for r in results),
        completion_tokens=sum(r.completion_tokens for r in results),
        engine_calls=len(results),
        completions=sum(len(r.completions) for r in results),
        cached=sum(r.cached for r in results),
        wall_time=sum(r.wall_time for r in results),
        thinking_tokens=float(outcome.info.get("thinking_tokens", 0)),
        reused_tokens=float(sum(r.reused_tokens for r in results)),
    )
