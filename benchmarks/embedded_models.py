"""An embedded model on the real engine: preparation, load time, memory, and two-digit
additions answered directly and step by step through jointopt's vLLM backend.

Prints the CPU (model name, vector flags), then for the model given (default
``qwen2.5-coder-0.5b-instruct``): the time to prepare it (0 when already prepared), the
engine's load time and resident memory (this process plus the engine processes), and for
N two-digit addition word problems x n samples at temperature 0.7: accuracy of one sample,
majority of n, mean completion tokens and generated tokens/s, for a direct-answer prompt
and a step-by-step prompt. One engine at a time: run it under
``flock /tmp/jointopt-engine.lock``.

Last line: ``ratio=<step-by-step majority accuracy / direct majority accuracy>``.

    .venv/bin/python benchmarks/embedded_models.py [--model NAME] [--problems 12] [--n 4]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import time
from collections import Counter

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

DIRECT = ("Answer with the final number only, nothing else.")
STEPS = ("Solve the problem step by step, then give the final line as 'Answer: <number>'.")


def problems(count: int, seed: int = 0) -> list[tuple[str, int]]:
    """Two-digit addition word problems with their answers."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        out.append((f"A shop sold {a} apples in the morning and {b} apples in the afternoon. "
                    "How many apples did it sell that day?", a + b))
    return out


def last_number(text: str) -> int | None:
    """The answer after 'Answer:' when present, else the last integer in the text."""
    found = re.findall(r"Answer:\s*\**\s*(-?\d[\d,]*)", text) or re.findall(r"-?\d[\d,]*", text)
    return int(found[-1].replace(",", "")) if found else None


def engine_memory(backend: object) -> str:
    """Resident (RSS) and proportional (PSS: shared pages split between the processes)
    memory of this process and of the engine's processes, MiB."""
    import psutil

    from jointopt.backends.vllm_process import engine_processes

    engine = {p.pid for p in engine_processes(backend._llm)} - {os.getpid()}  # noqa: SLF001
    sizes = {}
    for label, pids in (("this process", {os.getpid()}), ("engine processes", engine)):
        rss = pss = 0
        for pid in pids:
            try:
                full = psutil.Process(pid).memory_full_info()
            except psutil.Error:
                continue
            rss += full.rss
            pss += getattr(full, "pss", full.rss)
        sizes[label] = (rss / 2**20, pss / 2**20)
    total = [sum(v[i] for v in sizes.values()) for i in (0, 1)]
    parts = "; ".join(f"{label} RSS {rss:.0f} PSS {pss:.0f}"
                      for label, (rss, pss) in sizes.items())
    return f"RSS {total[0]:.0f} MiB, PSS {total[1]:.0f} MiB ({parts})"


def cell(backend: object, items: list[tuple[str, int]], system: str, n: int,
         max_tokens: int) -> dict[str, float]:
    """Accuracy of one sample, majority of n, mean tokens and tok/s for one prompt style."""
    from jointopt.core.generation import ChatMessage, GenerationRequest

    requests = [GenerationRequest(messages=(ChatMessage("system", system),
                                            ChatMessage("user", question)),
                                  n=n, temperature=0.7, max_tokens=max_tokens, logprobs=False)
                for question, _ in items]
    started = time.perf_counter()
    results = backend.generate(requests)  # type: ignore[attr-defined]
    wall = time.perf_counter() - started
    single = majority = tokens = 0
    for (_, answer), result in zip(items, results):
        picks = [last_number(c.text) for c in result.completions]
        single += sum(p == answer for p in picks) / len(picks)
        top = Counter(p for p in picks if p is not None).most_common(1)
        majority += bool(top) and top[0][0] == answer
        tokens += sum(c.num_tokens for c in result.completions)
    count = len(items)
    return {"acc1": single / count, "maj": majority / count,
            "tokens": tokens / (count * n), "tok_s": tokens / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--problems", type=int, default=12)
    parser.add_argument("--n", type=int, default=4)
    args = parser.parse_args()

    from jointopt.backends.cpu_engine import read_cpu_info
    from jointopt.backends.model_prepare import prepare_model
    from jointopt.backends.vllm import VLLMBackend

    info = read_cpu_info()
    flags = sorted(f for f in info.flags if f.startswith(("avx", "amx", "fma")))
    print(f"cpu: {info.model_name}; flags: {' '.join(flags)}; {os.cpu_count()} cpus")
    done = prepare_model(args.model)
    print(f"prepare: {done.describe()}")
    started = time.perf_counter()
    backend = VLLMBackend(args.model, seed=0, max_model_len=1024)
    load = time.perf_counter() - started
    print(f"engine: {backend.engine_choice.describe() if backend.engine_choice else 'gpu'}")
    print(f"load: {load:.1f} s; memory after load: {engine_memory(backend)}")
    items = problems(args.problems)
    try:
        direct = cell(backend, items, DIRECT, args.n, 16)
        steps = cell(backend, items, STEPS, args.n, 256)
        print(f"memory after generating: {engine_memory(backend)}")
    finally:
        backend.close()
    for name, row in (("direct", direct), ("step-by-step", steps)):
        print(f"{name:13s} acc@1 {row['acc1']:.2f}  majority@{args.n} {row['maj']:.2f}  "
              f"mean tokens {row['tokens']:.0f}  {row['tok_s']:.0f} generated tok/s")
    ratio = (steps["maj"] / direct["maj"] if direct["maj"]
             else float("inf") if steps["maj"] else float("nan"))
    print(f"ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
