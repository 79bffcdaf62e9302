"""Scoring pool-scored (parallel) strategies: pools as arrays, one batch per bin.

A pool comes from the backend's recorded arrays when it has them (a sample bank:
:meth:`~jointopt.backends.base.Backend.pool_data`), else from generated completions
(:func:`pool_data_of`); each bin's strategy scores all its examples' pools at once
(:meth:`~jointopt.strategies.base.Strategy.score_pool_batch`), or one by one from
completions when it cannot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jointopt.backends.base import Backend
from jointopt.core.generation import GenerationRequest, GenerationResult
from jointopt.strategies import Strategy, StrategyContext

if TYPE_CHECKING:
    from jointopt.core.pool_data import PoolData
    from jointopt.evaluation.evaluate import ExampleRecord

__all__ = ["pool_data_of", "pools_for", "score_pooled"]


def pool_data_of(ctx: StrategyContext, result: GenerationResult) -> "PoolData":
    """The completions of one example as a pool (answers, correctness, tokens, logprobs)."""
    from jointopt.core.pool_data import pool_data_from_samples

    comps = result.completions
    answers = [ctx.extract(c.text) for c in comps]
    return pool_data_from_samples(
        answers, [ctx.task.is_correct(ctx.example, a) for a in answers],
        [c.num_tokens for c in comps], mean_logprob=[c.mean_logprob for c in comps],
        sum_logprob=[c.sum_logprob for c in comps], prompt_tokens=result.prompt_tokens,
        completions=tuple(comps), cached=result.cached)


def pools_for(backend: Backend, requests: list[GenerationRequest],
           contexts: list[StrategyContext], prompt_id: str) -> tuple[list["PoolData"], int]:
    """The pools of ``requests``: from the backend's arrays when it has them (a sample
    bank), else from generated completions. Also returns the completions generated."""
    pools = backend.pool_data(requests, [(prompt_id, c.example.id) for c in contexts])
    if pools is not None:
        return list(pools), 0
    results = backend.generate(requests)
    generated = sum(len(r.completions) - r.copies - r.cached for r in results)
    out = []
    for ctx, result in zip(contexts, results):
        pool = pool_data_of(ctx, result)
        out.append(pool)
    return out, generated


def score_pooled(strategies: dict[str, Strategy], bins: list[str], contexts, pooled,
                  ks: dict[int, int], pools: list["PoolData"]) -> "dict[int, ExampleRecord]":
    """Records of the pool-scored examples, scored bin by bin (one batch per strategy)."""
    # A greedy pool holds one sample: every draw is this one completion, and k greedy
    # samples are one generation and k - 1 copies (see GenerationResult.copies).
    greedy = {i for i, p in zip(pooled, pools) if p.samples < ks[i]}
    pools = [p.repeated(ks[i]) if i in greedy else p for i, p in zip(pooled, pools)]
    by_bin: dict[str, list[int]] = {}
    for j, i in enumerate(pooled):
        by_bin.setdefault(bins[i], []).append(j)
    from jointopt.evaluation.evaluate import ExampleRecord

    records: dict[int, ExampleRecord] = {}
    for bin_name, members in by_bin.items():
        strategy = strategies[bin_name]
        group = [pools[j] for j in members]
        ctxs = [contexts[pooled[j]] for j in members]
        expected = strategy.score_pool_batch(group, ctxs)
        if expected is None:
            expected = [_score_one(strategy, pool, ctx) for pool, ctx in zip(group, ctxs)]
        for j, exp in zip(members, expected):
            i = pooled[j]
            records[i] = ExampleRecord(
                example_id=contexts[i].example.id, bin=bin_name, answer=None,
                correct=float(exp.accuracy), prompt_tokens=pools[j].prompt_tokens,
                completion_tokens=float(pools[j].mean_completion_tokens if i in greedy
                                        else exp.completion_tokens), engine_calls=1,
                completions=ks[i], cached=pools[j].cached, wall_time=0.0, pooled=True)
    return records


def _score_one(strategy: Strategy, pool: "PoolData", ctx: StrategyContext):
    from jointopt.errors import BackendError
    from jointopt.strategies.pool import PoolSample
    from jointopt.strategies.pool_arrays import expanded_groups

    if pool.completions is None:
        raise BackendError(
            f"strategy {strategy.name!r} is scored from completions, and this pool holds "
            "only answers and counts", where=f"example {ctx.example.id}",
            fix="search the strategies scored from arrays (single, majority, best_of_n, "
                "weighted_vote), or replay a bank recorded with texts")
    samples = [PoolSample(answer=pool.answers[g], correct=bool(pool.correct[g]),
                          completion_tokens=c.num_tokens, mean_logprob=c.mean_logprob,
                          sum_logprob=c.sum_logprob)
               for g, c in zip(expanded_groups(pool).tolist(), pool.completions)]
    return strategy.score_pool(samples, list(pool.completions), ctx)
