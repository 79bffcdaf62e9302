"""Settings and their free variants.

A trial's *setting* is what costs generation: its prompt, model and, per difficulty bin,
temperature and max_tokens. Its *free variants* are what is scored from the samples the
setting draws anyway: every pool-scored strategy of the search space (``pool_k()`` not
None) at every value of its enumerable parameters (``n``, scorer, weighting), and with
difficulty bins every per-bin choice among them. Once a setting's pools hold the largest
``k`` of its variants, every variant is scored exactly from them, with no generation.

:func:`score_variants` scores them from one batch of pool requests;
:func:`setting_front` combines per-bin choices (accuracy and tokens add up over
examples, so the exact front of all combinations is a merge of per-bin fronts);
:mod:`jointopt.search.derived` records them in the study.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jointopt.backends.base import Backend
from jointopt.core.policy import Policy
from jointopt.errors import StrategyError
from jointopt.core.cost import TokenCost
from jointopt.evaluation.evaluate import ExampleRecord, policy_contexts, priced
from jointopt.evaluation.pooled import pools_for, score_pooled
from jointopt.strategies import Strategy, get_strategy_class, make_strategy
from jointopt.tasks import Task

__all__ = ["Variant", "free_variants", "max_pool_k", "setting_key", "VariantScores",
           "score_variants", "setting_front", "pooled_setting", "objective_cost"]

#: A parameter range with more values than this is not expanded (it stays sampled).
MAX_VALUES = 64


@dataclass(frozen=True)
class Variant:
    """One pool-scored strategy with its parameter values."""

    strategy: str
    params: tuple[tuple[str, object], ...]

    def make(self) -> Strategy:
        return make_strategy(self.strategy, dict(self.params), where=self.strategy)

    def label(self) -> str:
        inner = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.strategy}({inner})"


def _values(spec: object) -> list | None:
    """Every value a space parameter takes, or None when it is not enumerable."""
    from jointopt.search.space import Choice, FloatRange, IntRange

    if isinstance(spec, Choice):
        return list(spec.choices)
    if isinstance(spec, IntRange):
        count = (spec.high - spec.low) // spec.step + 1
        return list(range(spec.low, spec.high + 1, spec.step)) if count <= MAX_VALUES else None
    if isinstance(spec, FloatRange):
        return [spec.low] if spec.low == spec.high else None
    return [spec.value]  # Fixed


def free_variants(strategies: Mapping[str, Mapping[str, object]]) -> tuple[Variant, ...]:
    """Every pool-scored variant of a space's ``strategies`` (name -> parameter -> Param);
    strategies with a non-enumerable parameter, or not scored from pools, are left out."""
    out: list[Variant] = []
    for name, params in strategies.items():
        cls = get_strategy_class(name, where=f"strategies.{name}")
        grids = {pname: _values(spec) for pname, spec in params.items()}
        if any(v is None for v in grids.values()):
            continue
        names = list(grids)
        for combo in itertools.product(*(grids[p] for p in names)):
            values = dict(zip(names, combo))
            try:
                strategy = cls(**values)
            except StrategyError:
                continue
            if strategy.pool_k() is None:
                break
            out.append(Variant(name, tuple(values.items())))
    return tuple(out)


def max_pool_k(variants: Sequence[Variant]) -> int:
    """The pool size every variant can be scored from (0 without variants)."""
    return max((v.make().pool_k() or 0 for v in variants), default=0)


def setting_key(policy: Policy) -> str:
    """Identity of a policy's setting: prompt and, per bin, the model that answers it,
    temperature, max_tokens and thinking spec (absent when the bin does not think)."""
    bins = {}
    for name, a in sorted(policy.bins.items()):
        bins[name] = [a.temperature, a.max_tokens, policy.model_of(a) or policy.model]
        if a.thinking is not None:
            bins[name].append(a.thinking.to_dict())
    return json.dumps([policy.prompt.id, policy.model, bins], sort_keys=True)


def pooled_setting(policy: Policy) -> bool:
    """Every bin's strategy of ``policy`` is scored from pools, and bins are known before
    running (no probing difficulty source): its setting can be expanded. A bin with a
    thinking phase is never scored from pools (its samples are two-phase)."""
    if policy.difficulty.source_class().probes:
        return False
    return all(not a.thinks and make_strategy(a.strategy, dict(a.params)).pool_k() is not None
               for a in policy.bins.values())


@dataclass(frozen=True)
class VariantScores:
    """Per-example records of every variant on the examples of one setting.

    ``records[j][i]``: variant ``j`` on example ``i`` (in the order scored); ``bins[i]``
    the example's bin.
    """

    variants: tuple[Variant, ...]
    bins: tuple[str, ...]
    records: tuple[tuple[ExampleRecord, ...], ...]
    example_ids: tuple[str, ...]


def score_variants(policy: Policy, variants: Sequence[Variant], task: Task, backend: Backend,
                   *, seed: int = 0, pool_size: int = 1,
                   costs: Mapping[str, TokenCost] | None = None) -> VariantScores:
    """Score every variant on ``task``'s examples from the pools of ``policy``'s setting:
    one fetch of all pools (of ``max(pool_size, largest k)`` samples, as
    :func:`~jointopt.evaluation.evaluate.evaluate` draws them; a sample bank's recorded
    arrays when the backend has them), then each variant's strategy scores them in one
    batch per bin. Values equal ``evaluate`` of the variant's policy with that pool size,
    ``costs`` included (each record priced at the model of its bin)."""
    strategies = [v.make() for v in variants]
    ks = [s.pool_k() or 1 for s in strategies]
    size = max([pool_size, *ks])
    contexts, bins = policy_contexts(policy, task, seed)
    everyone = list(range(len(contexts)))
    requests = [c.request(n=1 if c.temperature == 0 else size) for c in contexts]
    pools = pools_for(backend, requests, contexts, policy.prompt.id)[0] if contexts else []
    per_variant = []
    for strategy, k in zip(strategies, ks):
        scored = score_pooled({b: strategy for b in set(bins)}, bins, contexts, everyone,
                              dict.fromkeys(everyone, k), pools)
        per_variant.append(tuple(priced(scored[i], contexts[i], costs, policy.model)
                                 for i in everyone))
    return VariantScores(tuple(variants), tuple(bins), tuple(per_variant),
                         tuple(c.example.id for c in contexts))


def objective_cost(record: ExampleRecord) -> float:
    """The second objective of one example: its cost when priced, else its tokens."""
    return record.tokens if record.cost is None else record.cost


def setting_front(scores: VariantScores, bin_names: Sequence[str], *,
                  limit: int = 256) -> list[dict[str, int]]:
    """Per-bin variant choices (bin -> variant index) to record for a setting.

    One bin: every variant. Several bins: the exact Pareto front (accuracy up, tokens
    or, for priced records, cost down) of all combinations, found by merging per-bin fronts (sums of per-example
    values), at most ``limit`` of them (evenly spread along the front)."""
    if len(bin_names) == 1:
        return [{bin_names[0]: j} for j in range(len(scores.variants))]
    partial: list[tuple[float, float, dict[str, int]]] = [(0.0, 0.0, {})]
    for b in bin_names:
        rows = [i for i, name in enumerate(scores.bins) if name == b]
        options = [(math.fsum(scores.records[j][i].correct for i in rows),
                    math.fsum(objective_cost(scores.records[j][i]) for i in rows), j)
                   for j in range(len(scores.variants))]
        merged = [(a + c, t + u, {**choice, b: j})
                  for a, t, choice in partial for c, u, j in options]
        partial = _front(merged)
    if len(partial) > limit:
        step = (len(partial) - 1) / (limit - 1)
        partial = [partial[round(i * step)] for i in range(limit)]
    return [choice for _, _, choice in partial]


def _front(points: list[tuple[float, float, dict[str, int]]]
           ) -> list[tuple[float, float, dict[str, int]]]:
    out, best = [], -math.inf
    for point in sorted(points, key=lambda p: (round(p[1], 6), -round(p[0], 9))):
        if round(point[0], 9) > best:
            out.append(point)
            best = round(point[0], 9)
    return out
