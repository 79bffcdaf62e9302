"""The vLLM backend's thinking-budget path without an engine: reading the reasoning
config, the sampling parameters, and splitting completions into thought and answer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from jointopt.backends.vllm import THINKING_OVERSHOOT, VLLMBackend
from jointopt.backends.vllm_outputs import reasoning_markers, split_thinking
from jointopt.core.generation import ChatMessage, Completion, GenerationRequest
from jointopt.errors import BackendError

#: A toy vocabulary: one token per word; "</think>" is token 9, or tokens 7 and 8.
VOCAB = {1: "so", 2: " 3", 3: " plus", 4: " 4", 9: "</think>", 5: " 7", 6: "\n", 7: "</thi",
         8: "nk>"}


def _decode(ids):
    return "".join(VOCAB[i] for i in ids)


def _completion(ids):
    return Completion(text=_decode(ids), token_ids=tuple(ids), finish_reason="stop",
                      logprobs=tuple(-0.1 * (k + 1) for k in range(len(ids))))


def test_split_after_the_end_marker():
    done = split_thinking(_completion([1, 2, 3, 4, 9, 6, 5]), (9,), "</think>", _decode)
    assert done.thinking_text == "so 3 plus 4</think>" and done.text == "\n 7"
    assert done.thinking_token_ids == (1, 2, 3, 4, 9) and done.token_ids == (6, 5)
    assert done.logprobs == pytest.approx((-0.6, -0.7))
    assert done.num_tokens == 7 and done.thinking_tokens == 5


def test_split_finds_a_marker_tokenised_another_way_by_its_text():
    done = split_thinking(_completion([1, 2, 7, 8, 5]), (9,), "</think>", _decode)
    assert done.thinking_token_ids == (1, 2, 7, 8) and done.text == " 7"


def test_without_a_marker_everything_is_thought():
    done = split_thinking(_completion([1, 2, 3]), (9,), "</think>", _decode)
    assert done.text == "" and done.token_ids == () and done.thinking_tokens == 3


def _llm(enabled=True, start=(11,), end=(9,)):
    config = SimpleNamespace(enabled=enabled, reasoning_start_token_ids=list(start),
                             reasoning_end_token_ids=list(end))
    return SimpleNamespace(llm_engine=SimpleNamespace(
        vllm_config=SimpleNamespace(reasoning_config=config)))


def test_reasoning_markers_from_the_engine_config():
    tokenizer = SimpleNamespace(decode=lambda ids: {11: "<think>", 9: "</think>"}[ids[0]])
    assert reasoning_markers(_llm(), tokenizer) == ("<think>", "</think>", (9,))
    assert reasoning_markers(_llm(enabled=False), tokenizer) is None
    assert reasoning_markers(SimpleNamespace(), tokenizer) is None


def _backend(reasoning):
    """A VLLMBackend shell (no engine) whose SamplingParams records its arguments."""
    backend = object.__new__(VLLMBackend)
    backend._vllm = SimpleNamespace(SamplingParams=lambda **kw: kw)
    backend._on_cpu, backend._reasoning = True, reasoning
    backend._path, backend._seed = "model-folder", 0
    return backend


def test_sampling_params_carry_the_budget_and_room_for_marker_and_answer():
    backend = _backend(("<think>", "</think>", (9, 10)))
    request = GenerationRequest(messages=(ChatMessage("user", "q"),), max_tokens=8,
                                thinking_budget=32, continuation="<think>")
    params = backend.sampling_params(request)
    assert params["thinking_token_budget"] == 32
    assert params["max_tokens"] == 32 + THINKING_OVERSHOOT + 2 + 8
    assert backend.thinking_markers() == ("<think>", "</think>")
    plain = backend.sampling_params(GenerationRequest(messages=request.messages, max_tokens=8))
    assert plain["thinking_token_budget"] is None and plain["max_tokens"] == 8


def test_a_budget_without_a_reasoning_config_is_refused_before_the_engine():
    backend = _backend(None)
    assert backend.thinking_markers() is None
    request = GenerationRequest(messages=(ChatMessage("user", "q"),), thinking_budget=4)
    with pytest.raises(BackendError) as err:
        backend.generate([request])
    assert "requests[0].thinking_budget" in str(err.value) and "reasoning" in str(err.value)


def test_reasoning_config_mapping_becomes_the_engine_config():
    pytest.importorskip("vllm")
    backend = _backend(None)
    kwargs = backend._llm_kwargs("float32", 512, None, None, 0.9, {
        "reasoning_config": {"reasoning_start_str": "<think>", "reasoning_end_str": "</think>"}})
    assert kwargs["reasoning_config"].reasoning_end_str == "</think>"


# --------------------------------------------------------------------------- real engine


@pytest.mark.engine_process
def test_engine_budget_and_forcing_on_the_real_engine():
    """A thinking policy evaluated end to end on vLLM: the engine's own budget where the
    engine has a reasoning config, budget forcing on the same engine otherwise."""
    pytest.importorskip("vllm")
    from jointopt.backends.models import DEFAULT_ALIAS, is_prepared
    from jointopt.core.policy import Allocation, Policy
    from jointopt.core.prompts import PromptTemplate
    from jointopt.evaluation.evaluate import evaluate
    from jointopt.tasks import make_task

    if not is_prepared(DEFAULT_ALIAS):
        pytest.skip("the embedded model is not prepared")
    # The shared engine is closed before this test (engine_process): it starts its own.
    backend = VLLMBackend(DEFAULT_ALIAS, seed=0, max_model_len=1024, engine_kwargs={
        "reasoning_config": {"reasoning_start_str": "<think>", "reasoning_end_str": "</think>"}})
    try:
        assert backend.thinking_markers() == ("<think>", "</think>")
        end_tokens = len(backend._reasoning[2])
        task = make_task("word_problems", levels=(1,), n_per_level=3, n_demos=0)
        prompt = PromptTemplate(id="p", user="{{ question }}")
        for engine_name in ("vllm", "forcing"):
            policy = Policy(model=DEFAULT_ALIAS, prompt=prompt, bins={"all": Allocation(
                "majority", temperature=0.7, max_tokens=8, params={"n": 2},
                thinking={"budget": 12, "engine": engine_name})})
            result = evaluate(policy, task, backend)
            assert len(result.records) == 3
            for record in result.records:
                # forcing: the budget exactly; vLLM: its overshoot and the end marker too
                extra = THINKING_OVERSHOOT + end_tokens if engine_name == "vllm" else 0
                limit = 2 * (12 + extra)
                assert 0 < record.thinking_tokens <= limit
                assert record.completion_tokens > record.thinking_tokens or engine_name == "vllm"
        request = GenerationRequest(messages=(ChatMessage("user", "What is 17 + 25?"),),
                                    max_tokens=6, temperature=0.7, thinking_budget=10,
                                    continuation="<think>")
        (completion,) = backend.generate([request])[0].completions
        assert completion.thinking_tokens <= 10 + THINKING_OVERSHOOT + end_tokens
        assert completion.answer_tokens <= 6 + THINKING_OVERSHOOT
        if completion.answer_tokens:  # an answer follows the (natural or forced) end marker
            assert completion.thinking_text.endswith("</think>")
    finally:
        backend.close()
