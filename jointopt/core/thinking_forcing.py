"""Two-phase budget forcing over generation requests: the protocol both the thinking
strategy (:mod:`jointopt.strategies.thinking`) and a backend that emulates an engine
thinking budget (the OpenAI-compatible backend against a server without vLLM's
``thinking_token_budget``) run.

Per request ``R`` with ``n`` samples and a :class:`~jointopt.core.thinking.ThinkingSpec`:

1. *thought*: ``R`` with ``continuation = start``, ``max_tokens = budget``, stop at the end
   marker (``R``'s own stop strings do not apply to the thought), ``n`` samples;
2. *extensions* (only with ``min`` > 0): a thought that stopped before ``min`` tokens is
   resent with ``continue_cue`` appended and continued with the budget it has left, at
   most :data:`MAX_EXTENSIONS` times;
3. *answer*: ``R`` with ``continuation = start + thought + end + answer_cue +
   R.continuation`` and ``max_tokens = answer_max_tokens`` (else ``R.max_tokens``), one
   sample per thought (samples whose contexts are equal share one request).

The functions are generators of request rounds: each ``yield`` hands a list of requests
to the caller and receives their results; :func:`run_rounds` drives one against a
``generate`` function. The prompt, the thought and the cues resent in steps 2 and 3 are
counted as prompt tokens of those requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

from jointopt.core.generation import Completion, GenerationRequest, GenerationResult
from jointopt.core.thinking import ThinkingSpec

__all__ = ["MAX_EXTENSIONS", "finish_forcing", "force", "run_rounds", "thought_request"]

#: Most times a thought shorter than ``min`` is extended with the continue cue.
MAX_EXTENSIONS = 4

Rounds = Generator[list[GenerationRequest], list[GenerationResult], object]


@dataclass
class _Thought:
    """One sample's thought while it is being generated."""

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


def thought_request(request: GenerationRequest, spec: ThinkingSpec) -> GenerationRequest:
    """The first-phase request of ``request``: its thought, up to the budget."""
    return dataclasses.replace(request, continuation=spec.start, max_tokens=spec.budget,
                               stop=(spec.stop,), thinking_budget=None)


def force(requests: Sequence[GenerationRequest], spec: ThinkingSpec) -> Rounds:
    """All phases of ``requests`` under ``spec``; returns one merged result per request."""
    got = yield [thought_request(r, spec) for r in requests]
    answers = yield from finish_forcing(dict(enumerate(zip(requests, got))), spec)
    return [answers[i] for i in range(len(requests))]


def finish_forcing(thoughts: dict[int, tuple[GenerationRequest, GenerationResult]],
                   spec: ThinkingSpec) -> Rounds:
    """Extensions and answers of requests whose thoughts (``thought_request`` results)
    are in; returns ``{key: merged result}`` with every phase's prompt tokens."""
    forced: dict[int, _Forced] = {}
    for i, (request, result) in thoughts.items():
        state = _Forced(request, [_Thought(c.text, list(c.token_ids), c.finish_reason,
                                           reused=len(c.token_ids) if j < result.cached else 0)
                                  for j, c in enumerate(result.completions)],
                        cached=result.cached, copies=result.copies)
        state.charge(result)
        forced[i] = state
    yield from _extend(forced, spec)
    return (yield from _answer(forced, spec))


def run_rounds(rounds: Rounds, generate: Callable[[list[GenerationRequest]],
                                                  list[GenerationResult]]) -> object:
    """Drive a generator of request rounds with ``generate``; returns its value."""
    try:
        requests = rounds.send(None)
        while True:
            requests = rounds.send(generate(list(requests)))
    except StopIteration as stop:
        return stop.value


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
            max_tokens=spec.budget - len(thought.ids), stop=(spec.stop,),
            thinking_budget=None)
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
        max_tokens=spec.answer_cap(forced[i].request.max_tokens), thinking_budget=None)
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
    """The result the caller sees: its request, each sample's answer with its thought,
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
