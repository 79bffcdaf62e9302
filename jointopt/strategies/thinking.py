"""A thinking phase for any strategy.

:func:`with_thinking` wraps the run of any strategy (a generator of request rounds, see
:mod:`jointopt.strategies.base`): every request the strategy yields is answered in two
parts, a thought of at most ``budget`` tokens and then the answer, and the strategy gets
back one result per request, as without thinking, whose completions hold the answer in
``text`` (answers are read from it alone) and the thought in ``thinking_text``. The
strategy never sees the extra rounds; the evaluator still sends each round of every
example to the engine as one batch, and every token of every phase is counted, because
the evaluator counts what the wrapper receives from the backend.

Engines (:class:`~jointopt.core.thinking.ThinkingSpec`):

``forcing`` (every backend): the two phases of
:mod:`jointopt.core.thinking_forcing` (thought up to the budget, stopped at the end
marker; extensions up to ``min``; then the answer after ``end + answer_cue``). The prompt,
the thought and the cues are resent: they are counted as prompt tokens of those requests
(the engine's prefix cache makes them cheap in time, not in the count). The thought is at
most ``budget`` generated tokens, exactly.

``vllm``: one request per ``R`` with ``continuation = <engine start marker>`` and
``thinking_budget = budget``; the engine forces its end marker when the budget is spent
and the backend splits each completion into thought and answer. Requests that already
carry a continuation (tree-search prefixes, revision contexts) use forcing, since the
thought must precede the whole answer.

Budget 0 answers directly: the strategy's requests go out unchanged.

Sample reuse across budgets (``forcing``, through a
:class:`~jointopt.backends.CachedBackend` over a backend that can cut): the thought
request of budget ``B'`` is the thought request of budget ``B`` with a smaller
``max_tokens``, so once the store holds thoughts drawn at ``B > B'`` it serves them cut
to their first ``B'`` tokens. Sampling is autoregressive: the first ``B'`` tokens of a
thought capped at ``B`` are distributed exactly as a thought capped at ``B'`` (with
seeded sampling they are the same tokens), and a thought that reached the end marker
within ``B'`` tokens ends there under both caps. So

- a thought that ended by itself within ``B'`` tokens is the same thought, its answer
  request is the same request, and the whole sample (thought and answer) is reused;
- a thought longer than ``B'`` is cut (finish ``length``); its forced end and answer
  follow a context no draw at ``B`` had, so the answer is generated (the prompt and the
  cut thought are resent and counted as prompt tokens, as always).

Only the prefix is shared: the answer after a forced end is not, nor is anything at a
budget larger than the store's pools (drawn anew). The policy's cost counts every token
either way; ``GenerationResult.reused_tokens`` says how many were served from the store
rather than generated. The ``vllm`` engine's completions are not stored (the engine
forces its end inside one request, and its answers follow the engine's own forced end,
not a forcing continuation), so its budgets share nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from dataclasses import dataclass
from typing import Literal

from jointopt.core.generation import GenerationRequest, GenerationResult
from jointopt.core.thinking import ThinkingSpec
from jointopt.core.thinking_forcing import MAX_EXTENSIONS, finish_forcing, thought_request
from jointopt.errors import StrategyError
from jointopt.strategies.base import Run, Strategy, StrategyContext, StrategyOutcome

__all__ = ["MAX_EXTENSIONS", "ThinkingStrategy", "resolve_engine", "with_thinking"]

Round = Generator[list[GenerationRequest], list[GenerationResult], list[GenerationResult]]


def resolve_engine(spec: ThinkingSpec, markers: tuple[str, str] | None,
                   where: str = "thinking.engine") -> Literal["vllm", "forcing"]:
    """The engine a spec runs with on a backend whose ``thinking_markers()`` is ``markers``.

    Raises:
        StrategyError: ``engine: vllm`` on a backend without a thinking budget.
    """
    if spec.engine == "forcing" or (spec.engine == "auto" and markers is None):
        return "forcing"
    if markers is None:
        raise StrategyError(
            "the backend has no thinking budget of its own (no reasoning config)",
            where=where, value=spec.engine,
            fix="use engine: forcing or auto, or start vLLM with a reasoning parser or "
                "reasoning start/end strings (model.engine.reasoning_config)")
    return "vllm"


def with_thinking(inner: Run, spec: ThinkingSpec, engine: Literal["vllm", "forcing"] = "forcing",
                  markers: tuple[str, str] | None = None) -> Run:
    """``inner`` with a thinking phase before every answer (see the module docstring).

    The outcome's ``info`` gains ``thinking_budget``, ``thinking_engine`` and
    ``thinking_tokens`` (the generated thought tokens of all its samples, which are part
    of the completion tokens the evaluator counts).

    Args:
        inner: the strategy's run for one example.
        spec: the allocation's thinking spec.
        engine: ``forcing`` or ``vllm`` (see :func:`resolve_engine`).
        markers: the backend's ``thinking_markers()`` (needed for ``vllm``).
    """
    if spec.budget == 0:
        return (yield from inner)
    if engine == "vllm" and markers is None:
        raise StrategyError("the vllm thinking engine needs the backend's markers",
                            where="thinking.engine", value=engine,
                            fix="pass backend.thinking_markers(), or use forcing")
    thinking_tokens = 0
    try:
        requests = inner.send(None)
        while True:
            results = yield from _think_round(list(requests), spec, engine, markers)
            thinking_tokens += sum(r.thinking_tokens for r in results)
            requests = inner.send(results)
    except StopIteration as stop:
        outcome = stop.value
    if not isinstance(outcome, StrategyOutcome):
        return outcome  # the evaluator reports a strategy without an outcome
    info = {**dict(outcome.info), "thinking_budget": spec.budget, "thinking_engine": engine,
            "thinking_tokens": thinking_tokens}
    return dataclasses.replace(outcome, info=info)


class ThinkingStrategy(Strategy):
    """A strategy whose every request gets a thinking phase (:func:`with_thinking`).

    Built by the evaluator for a bin whose allocation thinks; not a registry entry. It is
    never scored from a sample pool (``pool_k()`` is None): its samples are two-phase.

    Args:
        inner: the bin's strategy.
        spec: the bin's thinking spec.
        markers: the backend's ``thinking_markers()``.
        where: the field named in errors (e.g. ``bins.hard.thinking.engine``).

    Raises:
        StrategyError: ``engine: vllm`` on a backend without a thinking budget.
    """

    name = "thinking"

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, inner: Strategy, spec: ThinkingSpec,
                 markers: tuple[str, str] | None = None,
                 where: str = "thinking.engine") -> None:
        self.inner, self.spec, self.markers = inner, spec, markers
        self.engine = resolve_engine(spec, markers, where)
        self.params = inner.params

    def check_task(self, task) -> None:
        self.inner.check_task(task)

    def max_completions(self) -> int:
        """The inner strategy's samples, each a thought, its extensions and an answer."""
        per_sample = 2 + (MAX_EXTENSIONS if self.spec.min else 0)
        return self.inner.max_completions() * (per_sample if self.spec.budget else 1)

    def run(self, ctx: StrategyContext) -> Run:
        return with_thinking(self.inner.run(ctx), self.spec, self.engine, self.markers)

    def __repr__(self) -> str:
        return f"ThinkingStrategy({self.inner!r}, budget={self.spec.budget}, {self.engine})"


def _think_round(requests: list[GenerationRequest], spec: ThinkingSpec, engine: str,
                 markers: tuple[str, str] | None) -> Round:
    """Answer one round of a strategy's requests with a thinking phase each."""
    native = [engine == "vllm" and not r.continuation for r in requests]
    first = [_native(r, spec, markers) if nat else thought_request(r, spec)
             for r, nat in zip(requests, native)]
    got = yield first
    thoughts = {i: (request, result) for i, (request, result) in enumerate(zip(requests, got))
                if not native[i]}
    answers = yield from finish_forcing(thoughts, spec)
    return [dataclasses.replace(got[i], request=r) if native[i] else answers[i]
            for i, r in enumerate(requests)]


def _native(request: GenerationRequest, spec: ThinkingSpec,
            markers: tuple[str, str] | None) -> GenerationRequest:
    start = markers[0] if markers else spec.start
    return dataclasses.replace(request, continuation=start, thinking_budget=spec.budget,
                               max_tokens=spec.answer_cap(request.max_tokens))
