"""Contract tests of the thinking phase (budget forcing and the engine's own budget) on
the scripted backend: token accounting, exact budgets, answers from the answer part."""

from __future__ import annotations

import pytest

from jointopt.backends import ScriptedBackend
from jointopt.backends.scripted import tokenize
from jointopt.core.generation import ChatMessage
from jointopt.core.thinking import ThinkingSpec
from jointopt.errors import StrategyError
from jointopt.evaluation.evaluate import drive
from jointopt.strategies import StrategyContext
from jointopt.strategies.parallel import MajorityVote, SingleSample
from jointopt.strategies.sequential import RevisionChain
from jointopt.strategies.thinking import (
    MAX_EXTENSIONS,
    ThinkingStrategy,
    resolve_engine,
    with_thinking,
)
from jointopt.testing import StrategyContract, toy_task

SPEC = ThinkingSpec(budget=6, engine="forcing", answer_max_tokens=4)
#: Ten thought tokens, a stray number in the thought, then the model's own end marker.
THOUGHT = "so the sum is 7 or maybe not , check again"


def _responder(thought=THOUGHT, answer="42 is it", extension="and more words"):
    def respond(request, index, rng):
        if request.continuation.endswith(SPEC.answer_cue):
            return answer
        if request.continuation.endswith(SPEC.continue_cue):
            return f"{extension} {index} </think> late"
        return f"{thought} {index} </think> ignored"
    return respond


def _ctx(max_tokens=16, continuation_free=True):
    task = toy_task()
    return StrategyContext(example=task.examples[1], task=task,
                           messages=(ChatMessage("user", "What is 1 + 2?"),),
                           temperature=0.7, max_tokens=max_tokens)


def _seen(inner):
    """Wrap a run to record the results the strategy itself receives."""
    seen = []

    def run():
        results = yield inner.send(None)
        while True:
            seen.append(results)
            try:
                results = yield inner.send(results)
            except StopIteration as stop:
                return stop.value
    return run(), seen


class TestThinkingForcingSingle(StrategyContract):
    @pytest.fixture
    def strategy(self):
        return ThinkingStrategy(SingleSample(), SPEC)

    def test_bad_parameters_are_rejected_by_name(self, strategy):
        pytest.skip("a wrapper built from a strategy and a ThinkingSpec, not from params")


class TestThinkingForcingMajorityWithMin(StrategyContract):
    @pytest.fixture
    def strategy(self):
        return ThinkingStrategy(MajorityVote(n=3),
                                ThinkingSpec(budget=40, min=30, engine="forcing"))

    def test_bad_parameters_are_rejected_by_name(self, strategy):
        pytest.skip("a wrapper built from a strategy and a ThinkingSpec, not from params")


def test_forcing_counts_thought_forced_end_and_answer_with_resent_prefix():
    backend = ScriptedBackend(_responder())
    inner, seen = _seen(SingleSample().run(_ctx()))
    (outcome, raw), = drive(backend, [with_thinking(inner, SPEC)])
    thought_result, answer_result = raw
    thought = thought_result.completions[0]
    # the thought: budget tokens exactly, the start marker as continuation, the end as stop
    assert thought_result.request.continuation == SPEC.start
    assert thought_result.request.stop == ("</think>",)
    assert thought_result.request.max_tokens == SPEC.budget == thought.num_tokens
    assert thought.text == "".join(tokenize(THOUGHT)[:6])
    # the answer: prompt + start + thought + forced end + cue resent, answer with its own cap
    request = answer_result.request
    assert request.continuation == SPEC.start + thought.text + SPEC.end + SPEC.answer_cue
    assert request.max_tokens == 4
    assert answer_result.prompt_tokens == backend.prompt_tokens(request)
    assert answer_result.prompt_tokens > thought_result.prompt_tokens + thought.num_tokens
    # the strategy sees one result: answer text, thought apart, every token of both phases
    (merged,), = seen
    completion = merged.completions[0]
    assert completion.text == "42 is it" and completion.thinking_text == thought.text
    assert completion.thinking_tokens == 6 and completion.answer_tokens == 3
    assert merged.prompt_tokens == sum(r.prompt_tokens for r in raw)
    assert merged.completion_tokens == sum(r.completion_tokens for r in raw)
    assert merged.thinking_tokens == 6
    assert outcome.answer == "42"
    assert outcome.info["thinking_tokens"] == 6 and outcome.info["thinking_engine"] == "forcing"


def test_answer_is_read_from_the_answer_part_only():
    backend = ScriptedBackend(_responder(thought="the answer is 3", answer="no idea"))
    (outcome, _), = drive(backend, [with_thinking(SingleSample().run(_ctx()), SPEC)])
    assert outcome.answer is None  # the 3 in the thought is never read


@pytest.mark.parametrize("budget", [1, 5, 11, 40])
def test_budget_is_respected_exactly(budget):
    spec = ThinkingSpec(budget=budget, engine="forcing")
    natural = len(tokenize(f"{THOUGHT} 0 "))  # the thought up to the end marker
    (outcome, raw), = drive(ScriptedBackend(_responder()),
                            [with_thinking(SingleSample().run(_ctx()), spec)])
    assert raw[0].completions[0].num_tokens == min(budget, natural)
    assert raw[0].completions[0].finish_reason == ("length" if budget < natural else "stop")
    assert outcome.info["thinking_tokens"] == min(budget, natural)


def test_budget_zero_answers_directly():
    ctx = _ctx()
    spec = ThinkingSpec(budget=0)
    (outcome, raw), = drive(ScriptedBackend(_responder()),
                            [with_thinking(SingleSample().run(ctx), spec)])
    assert [r.request for r in raw] == [ctx.request(n=1)]
    assert raw[0].thinking_tokens == 0 and "thinking_tokens" not in outcome.info
    strategy = ThinkingStrategy(MajorityVote(n=3), spec)
    assert strategy.max_completions() == 3


def test_minimum_thinking_extends_a_short_thought_with_the_continue_cue():
    spec = ThinkingSpec(budget=40, min=14, engine="forcing")
    (outcome, raw), = drive(ScriptedBackend(_responder(thought="short")),
                            [with_thinking(SingleSample().run(_ctx()), spec)])
    first, *extensions, answer = raw
    assert first.completions[0].num_tokens == 2  # "short 0"
    assert extensions and all(r.request.continuation.endswith(spec.continue_cue)
                              for r in extensions)
    assert extensions[0].request.max_tokens == 40 - 2
    thought_tokens = sum(r.completion_tokens for r in [first, *extensions])
    assert thought_tokens >= 14 and thought_tokens <= 40
    assert len(extensions) <= MAX_EXTENSIONS
    assert outcome.info["thinking_tokens"] == thought_tokens
    assert spec.continue_cue + "and more words" in answer.request.continuation


def test_samples_think_apart_and_equal_contexts_share_one_answer_request():
    backend = ScriptedBackend(_responder())
    (outcome, raw), = drive(backend, [with_thinking(MajorityVote(n=3).run(_ctx()), SPEC)])
    assert raw[0].request.n == 3  # one thought request with native n
    # thoughts cut at 6 tokens are equal here (the index comes later): one answer request
    assert [r.request.n for r in raw[1:]] == [3]
    budget = ThinkingSpec(budget=20, engine="forcing")
    (_, raw), = drive(backend, [with_thinking(MajorityVote(n=3).run(_ctx()), budget)])
    assert [r.request.n for r in raw[1:]] == [1, 1, 1]  # distinct thoughts, distinct answers


def test_rounds_of_all_examples_stay_batched():
    backend = ScriptedBackend(_responder())
    runs = [with_thinking(MajorityVote(n=2).run(_ctx()), SPEC) for _ in range(5)]
    drive(backend, runs)
    assert backend.calls == 2  # all thoughts in one call, all answers in the next


def test_revision_gets_a_thinking_phase_on_every_round():
    (outcome, raw), = drive(ScriptedBackend(_responder()),
                            [with_thinking(RevisionChain(rounds=2).run(_ctx()), SPEC)])
    assert len(raw) == 4 and outcome.answer == "42"
    assert raw[2].request.messages[-2].content == "42 is it"  # the answer part is revised


# ------------------------------------------------------------------ the engine's own budget

MARKERS = ("<think>", "</think>")


def _native_backend(thought=THOUGHT, answer="42 is it"):
    return ScriptedBackend(lambda request, index, rng: f"{thought} {index} </think> {answer}",
                           thinking_markers=MARKERS)


@pytest.mark.parametrize("budget", [3, 50])
def test_engine_budget_splits_thought_and_answer(budget):
    spec = ThinkingSpec(budget=budget, answer_max_tokens=5)
    backend = _native_backend()
    strategy = ThinkingStrategy(SingleSample(), spec, backend.thinking_markers())
    assert strategy.engine == "vllm"
    (outcome, raw), = drive(backend, [strategy.run(_ctx())])
    (result,) = raw
    assert result.request.thinking_budget == budget
    assert result.request.continuation == "<think>" and result.request.max_tokens == 5
    completion = result.completions[0]
    natural = len(tokenize(f"{THOUGHT} 0 "))
    end = len(tokenize("</think>"))
    assert completion.thinking_tokens == min(budget, natural) + end
    assert completion.thinking_text.endswith("</think>")
    assert completion.text == " 42 is it" and outcome.answer == "42"
    assert result.completion_tokens == completion.thinking_tokens + completion.answer_tokens
    assert outcome.info["thinking_tokens"] == completion.thinking_tokens


def test_engine_budget_falls_back_to_forcing_for_requests_with_a_continuation():
    backend = _native_backend()
    from jointopt.core.generation import GenerationRequest

    def inner():
        yield [GenerationRequest(messages=(ChatMessage("user", "q"),), continuation="Step 1:")]
        from jointopt.strategies.base import StrategyOutcome
        return StrategyOutcome(None)
    (_, raw), = drive(backend, [with_thinking(inner(), SPEC, "vllm", MARKERS)])
    assert raw[0].request.thinking_budget is None and raw[0].request.stop == ("</think>",)
    assert raw[1].request.continuation.endswith(SPEC.answer_cue + "Step 1:")


def test_engine_choice():
    auto, forcing = ThinkingSpec(budget=8), ThinkingSpec(budget=8, engine="forcing")
    assert resolve_engine(auto, MARKERS) == "vllm"
    assert resolve_engine(auto, None) == "forcing"
    assert resolve_engine(forcing, MARKERS) == "forcing"
    with pytest.raises(StrategyError) as err:
        resolve_engine(ThinkingSpec(budget=8, engine="vllm"), None, "bins.hard.thinking.engine")
    assert "bins.hard.thinking.engine" in str(err.value) and "reasoning" in str(err.value)


def test_scripted_backend_refuses_an_engine_budget_without_markers():
    from jointopt.errors import BackendError

    strategy = ThinkingStrategy(SingleSample(), ThinkingSpec(budget=4), MARKERS)
    with pytest.raises(BackendError, match="thinking_markers"):
        drive(ScriptedBackend(_responder()), [strategy.run(_ctx())])


def test_sample_store_passes_engine_budget_requests_through_and_stores_forcing(tmp_path):
    from jointopt.backends.cached import CachedBackend, SampleStore

    store = SampleStore(tmp_path / "s.sqlite")
    cached = CachedBackend(_native_backend(), store)
    assert cached.thinking_markers() == MARKERS
    native = ThinkingStrategy(MajorityVote(n=2), ThinkingSpec(budget=3), MARKERS)
    forcing = ThinkingStrategy(MajorityVote(n=2), SPEC, MARKERS)
    outcomes = drive(cached, [native.run(_ctx()), forcing.run(_ctx())])
    (native_result,) = outcomes[0][1]
    end = len(tokenize("</think>"))
    assert all(c.thinking_tokens == 3 + end for c in native_result.completions)  # kept split
    assert cached.generated >= 2 + 2 + 1  # native samples, thoughts, answers
    stored = store.count()
    assert stored >= 3 and all(r.request.thinking_budget is None for r in outcomes[1][1])
    again = drive(cached, [forcing.run(_ctx())])
    assert [r.cached for r in again[0][1]] == [r.request.n for r in again[0][1]]
    assert store.count() == stored
