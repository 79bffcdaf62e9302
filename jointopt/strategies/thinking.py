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

``forcing`` (every backend), per request ``R`` with ``n`` samples:

1. *thought*: ``R`` with ``continuation = start``, ``max_tokens = budget``, stop at the end
   marker (the strategy's own stop strings do not apply to the thought), ``n`` samples;
2. *extensions* (only with ``min`` > 0): a thought that stopped before ``min`` tokens is
   resent with ``continue_cue`` appended and continued with the budget it has left, at
   most :data:`MAX_EXTENSIONS` times;
3. *answer*: ``R`` with ``continuation = start + thought + end + answer_cue +
   R.continuation`` and ``max_tokens = answer_max_tokens`` (else ``R.max_tokens``), one
   sample per thought (samples whose contexts are equal share one request).

The prompt, the thought and the cues are resent in steps 2 and 3: they are counted as
prompt tokens of those requests (the engine's prefix cache makes them cheap in time, not
in the count). The thought is at most ``budget`` generated tokens, exactly.

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
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from jointopt.core.generation import Completion, GenerationRequest, GenerationResult
from jointopt.core.thinking import ThinkingSpec
from jointopt.errors import StrategyError
from jointopt.strategies.base import Run, Strategy, StrategyContext, StrategyOutcome

__all__ = ["MAX_EXTENSIONS", "ThinkingStrategy", "resolve_engine", "with_thinking"]

#: Most times a thought shorter than ``min`` is extended with the continue cue.
MAX_EXTENSIONS = 4

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


@dataclass
class _Thought:
    """One sample's thought while it is being generated (forcing)."""

    text: str = ""
    ids: list[int] = field(default_factory=list)
    finish: str = "stop"
    extensions: int = 0
    #: Tokens of the thought served from a sample store rather than generated.
    reused: int = 0


@dataclass
class _Forced:
    """The thoughts of one request and what its phases cost so far."""

    request: GenerationRequest
    thoughts: list[_Thought]
    prompt_tokens: int = 0
    wall_time: float = 0.0
    cached: int = 0
    copies: int = 0

    def charge(self, result: GenerationResult) -> None:
        self.prompt_tokens += result.prompt_tokens
        self.wall_time += result.wall_time


def _think_round(requests: list[GenerationRequest], spec: ThinkingSpec, engine: str,
                 markers: tuple[str, str] | None) -> Round:
    """Answer one round of a strategy's requests with a thinking phase each."""
    native = [engine == "vllm" and not r.continuation for r in requests]
    first = [_native(r, spec, markers) if nat else _thought_request(r, spec)
             for r, nat in zip(requests, native)]
    got = yield first
    forced: dict[int, _Forced] = {}
    for i, (request, result) in enumerate(zip(requests, got)):
        if native[i]:
            continue
        state = _Forced(request, [_Thought(c.text, list(c.token_ids), c.finish_reason,
                                           reused=len(c.token_ids) if j < result.cached else 0)
                                  for j, c in enumerate(result.completions)],
                        cached=result.cached, copies=result.copies)
        state.charge(result)
        forced[i] = state
    yield from _extend(forced, spec)
    answers = yield from _answer(forced, spec)
    return [dataclasses.replace(got[i], request=r) if native[i] else answers[i]
            for i, r in enumerate(requests)]


def _native(request: GenerationRequest, spec: ThinkingSpec,
            markers: tuple[str, str] | None) -> GenerationRequest:
    start = markers[0] if markers else spec.start
    return dataclasses.replace(request, continuation=start, thinking_budget=spec.budget,
                               max_tokens=spec.answer_cap(request.max_tokens))


def _thought_request(request: GenerationRequest, spec: ThinkingSpec) -> GenerationRequest:
    return dataclasses.replace(request, continuation=spec.start, max_tokens=spec.budget,
                               stop=(spec.stop,))


def _short(thought: _Thought, spec: ThinkingSpec) -> bool:
    return (len(thought.ids) < spec.min and thought.finish == "stop"
            and len(thought.ids) < spec.budget and thought.extensions < MAX_EXTENSIONS)


def _extend(forced: dict[int, _Forced], spec: ThinkingSpec) -> Generator:
    """Continue thoughts that stopped before ``spec.min`` tokens (s1-style), round by round."""
    while True:
        todo = [(state, j, thought) for state in forced.values()
                for j, thought in enumerate(state.thoughts) if _short(thought, spec)]
        if not todo:
            return
        requests = [dataclasses.replace(
            state.request, n=1, offset=state.request.offset + j,
            continuation=spec.start + thought.text + spec.continue_cue,
            max_tokens=spec.budget - len(thought.ids), stop=(spec.stop,))
            for state, j, thought in todo]
        got = yield requests
        for (state, _, thought), result in zip(todo, got):
            state.charge(result)
            piece = result.completions[0]
            thought.text += spec.continue_cue + piece.text
            thought.ids.extend(piece.token_ids)
            thought.finish = piece.finish_reason
            thought.reused += len(piece.token_ids) if result.cached else 0
            thought.extensions += 1


def _answer_context(state: _Forced, thought: _Thought, spec: ThinkingSpec) -> str:
    return spec.start + thought.text + spec.end + spec.answer_cue + state.request.continuation


def _answer(forced: dict[int, _Forced], spec: ThinkingSpec) -> Generator:
    """Generate every answer after its closed thought; equal contexts share one request."""
    groups: dict[tuple[int, str], list[int]] = {}
    for i, state in forced.items():
        for j, thought in enumerate(state.thoughts):
            groups.setdefault((i, _answer_context(state, thought, spec)), []).append(j)
    keys = list(groups)
    if not keys:
        return {}
    requests = [dataclasses.replace(
        forced[i].request, n=len(groups[(i, context)]), continuation=context,
        max_tokens=spec.answer_cap(forced[i].request.max_tokens))
        for i, context in keys]
    got = yield requests
    answers: dict[int, list[Completion | None]] = {
        i: [None] * len(state.thoughts) for i, state in forced.items()}
    reused: dict[int, list[bool]] = {i: [False] * len(s.thoughts) for i, s in forced.items()}
    answer_copies: dict[int, int] = dict.fromkeys(forced, 0)
    for (i, context), result in zip(keys, got):
        forced[i].charge(result)
        answer_copies[i] += result.copies
        for k, (j, completion) in enumerate(zip(groups[(i, context)], result.completions)):
            answers[i][j] = completion
            reused[i][j] = k < result.cached
    return {i: _merged(state, answers[i], answer_copies[i], reused[i])
            for i, state in forced.items()}


def _merged(state: _Forced, answers: Sequence[Completion | None], answer_copies: int,
            answer_reused: Sequence[bool]) -> GenerationResult:
    """The result the strategy sees: its request, each sample's answer with its thought,
    the prompt tokens of every phase, and the tokens of every phase served from a sample
    store (a thought cut from a larger budget's pool is reused, its answer generated)."""
    completions = tuple(
        dataclasses.replace(answer, thinking_text=thought.text,
                            thinking_token_ids=tuple(thought.ids))
        for thought, answer in zip(state.thoughts, answers))
    copies = min(state.copies, answer_copies)
    unique = len(completions) - copies
    reused = sum(thought.reused + (answer.answer_tokens if from_store else 0)
                 for thought, answer, from_store
                 in list(zip(state.thoughts, answers, answer_reused))[:unique])
    return GenerationResult(
        request=state.request, prompt_tokens=state.prompt_tokens, completions=completions,
        wall_time=state.wall_time, cached=state.cached, copies=copies, reused=reused)
