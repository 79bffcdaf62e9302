"""jointopt's overhead over raw vLLM on one realistic trial batch.

The batch: 24 few-shot chat prompts of the word-list reversal task x n=4, temperature 0.7,
max_tokens 16 (what one trial of a study sends). The engine is loaded once and warmed up;
then, alternating to spread noise evenly, it times

  (a) ``backend.generate(requests)`` through jointopt (rendering, SamplingParams, results);
  (b) raw ``llm.generate(prompts, sampling_params)`` on the same rendered prompts and the
      same parameters, prepared beforehand (not timed).

It prints a small table and, as the last line, ``ratio=<median a / median b>``.

    .venv/bin/python benchmarks/engine_overhead.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

from jointopt.backends.vllm import VLLMBackend
from jointopt.backends.vllm_outputs import completion_of as _completion
from jointopt.core.generation import ChatMessage, GenerationRequest

WORDS = (
    "apple river stone cloud tiger lamp garden window silver piano candle forest "
    "mirror rocket pencil island button castle dragon orange planet bridge violin"
).split()
SYSTEM = "Reply only with the final answer. Answer with the words separated by spaces."
SHOTS = (("cat dog", "dog cat"), ("red blue green", "green blue red"), ("sun moon", "moon sun"))


def build_requests(count: int = 48, n: int = 4, seed: int = 0) -> list[GenerationRequest]:
    """``count`` few-shot reversal prompts (2-4 words) with the trial's sampling settings."""
    rng = random.Random(seed)
    requests = []
    for i in range(count):
        words = rng.sample(WORDS, 2 + i % 3)
        messages = [ChatMessage("system", SYSTEM)]
        for question, answer in SHOTS:
            messages.append(ChatMessage("user", f"Reverse the order of these words: {question}"))
            messages.append(ChatMessage("assistant", answer))
        messages.append(ChatMessage("user", f"Reverse the order of these words: {' '.join(words)}"))
        requests.append(GenerationRequest(messages=tuple(messages), n=n, temperature=0.7,
                                          max_tokens=16, logprobs=True))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds of each (a) and (b)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()

    requests = build_requests()
    started = time.perf_counter()
    backend = VLLMBackend(args.model, seed=0)
    load = time.perf_counter() - started
    llm = backend.llm
    # (b)'s inputs, prepared outside the timing: the very prompts and parameters (a) sends.
    prompts = [backend.render(r) for r in requests]
    params = backend.sampling_params(requests[0])  # all 24 requests share the same settings
    tok_kwargs = backend._tokenization_kwargs

    def run_a() -> tuple[float, int]:
        t = time.perf_counter()
        results = backend.generate(requests)
        return time.perf_counter() - t, sum(r.completion_tokens for r in results)

    def run_b() -> tuple[float, int, list]:
        t = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False, tokenization_kwargs=tok_kwargs)
        elapsed = time.perf_counter() - t
        return elapsed, sum(len(o.token_ids) for out in outputs for o in out.outputs), outputs

    run_a()  # warm-up: first batch, prefix cache filled
    run_b()
    times = {"a": [], "b": []}
    tokens = {"a": [], "b": []}
    outputs: list = []
    # ABBA order: neither path always runs first (the engine's state after a batch,
    # e.g. its prefix cache and allocator, favours whichever runs second).
    for i in range(args.rounds):
        for which in ("ab" if i % 2 == 0 else "ba"):
            if which == "a":
                t, k = run_a()
            else:
                t, k, outputs = run_b()
            times[which].append(t)
            tokens[which].append(k)

    # jointopt's pure-Python share: render + SamplingParams + converting the outputs.
    t = time.perf_counter()
    backend._render_cache.clear()
    _ = [backend.render(r) for r in requests], [backend.sampling_params(r) for r in requests]
    _ = [tuple(_completion(o, True) for o in out.outputs) for out in outputs]
    wrapper_cold = time.perf_counter() - t
    t = time.perf_counter()
    _ = [backend.render(r) for r in requests], [backend.sampling_params(r) for r in requests]
    _ = [tuple(_completion(o, True) for o in out.outputs) for out in outputs]
    wrapper_warm = time.perf_counter() - t
    backend.close()

    print(f"model {backend.model_id}, engine load {load:.1f} s, "
          f"{len(requests)} prompts x n={requests[0].n}, max_tokens={requests[0].max_tokens}")
    print(f"{'path':<22}{'median s':>10}{'min s':>10}{'tokens':>8}{'tok/s':>8}")
    for key, label in (("a", "(a) jointopt"), ("b", "(b) raw vllm")):
        med = statistics.median(times[key])
        print(f"{label:<22}{med:>10.3f}{min(times[key]):>10.3f}"
              f"{statistics.median(tokens[key]):>8.0f}{statistics.median(tokens[key]) / med:>8.1f}")
    print(f"wrapper-only Python time per batch: {wrapper_cold * 1000:.1f} ms cold "
          f"(render cache empty), {wrapper_warm * 1000:.1f} ms warm")
    per_tok = [t / k for t, k in zip(times["a"], tokens["a"])], [
        t / k for t, k in zip(times["b"], tokens["b"])]
    print(f"per-token ratio (median s/token): "
          f"{statistics.median(per_tok[0]) / statistics.median(per_tok[1]):.3f}; "
          f"min-time ratio: {min(times['a']) / min(times['b']):.3f}")
    print(f"ratio={statistics.median(times['a']) / statistics.median(times['b']):.3f}")


if __name__ == "__main__":
    main()
