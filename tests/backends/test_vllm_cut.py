"""Cutting a vLLM sample at a smaller max_tokens (no engine: the tokenizer is a stand-in)."""

from __future__ import annotations

from jointopt.backends.vllm_outputs import cut_completion
from jointopt.core.generation import Completion

VOCAB = {1: "The", 2: " answer", 3: " is", 4: " 7", 5: "."}


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def test_a_cut_keeps_the_first_tokens_their_text_and_logprobs():
    full = Completion(text="The answer is 7.", token_ids=(1, 2, 3, 4, 5), finish_reason="stop",
                      logprobs=(-0.1, -0.2, -0.3, -0.4, -0.5))
    cut = cut_completion(full, 3, decode)
    assert cut == Completion(text="The answer is", token_ids=(1, 2, 3), finish_reason="length",
                             logprobs=(-0.1, -0.2, -0.3))
    assert cut_completion(full, 5, decode) is full
    assert cut_completion(full, 9, decode) is full
