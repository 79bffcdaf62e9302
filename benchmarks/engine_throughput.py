"""The engine at this machine's best: raw vLLM sweep vs jointopt's automatic choices.

Prints the CPU it ran on (model name and vector flags), then

1. a small sweep of the raw engine (``vllm.LLM`` + ``llm.generate`` on pre-rendered
   prompts) over dtype, KV-cache block size, ``max_num_seqs`` and a prefix warm-up pass;
2. jointopt's evaluation of the very same requests (``VLLMBackend`` with no settings
   given: dtype, threads and KV cache chosen from the hardware);
3. each result against an estimate of the compute ceiling: FLOPs per token
   (2 x parameters) x tokens/s / peak FLOP/s of the cores used.

Every configuration runs in its own process, one after the other (never two engines at
once), on the same batch: 48 few-shot word-reversal chat prompts x n=4, temperature 0.7,
max_tokens 32 — the shape of one quickstart trial. Each engine first generates the batch
once untimed (memory pools and prefix cache warm; the "prefix warm-up" variant warms with a
``max_tokens=1`` pass over the prompts instead). Throughput = generated tokens / wall time
of the generate call, median over the timed rounds.

Last line: ``ratio=<jointopt tok/s / best raw tok/s>`` (goal >= 0.95).

    .venv/bin/python benchmarks/engine_throughput.py [--quick] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: FLOPs per cycle per core for fused multiply-adds, by (vector ISA, dtype): two FMA
#: pipes x lanes x 2. AVX-512 on Zen 4 is double-pumped 256-bit, so counted as AVX2-wide;
#: native BF16 dot products double the fp32 rate. An estimate: real decode on small
#: models is bound by memory and per-step overhead long before this.
FLOPS_PER_CYCLE = {
    ("AVX-512", "float32"): 32, ("AVX-512", "bfloat16"): 64,
    ("AMX", "float32"): 32, ("AMX", "bfloat16"): 64,
    ("AVX2", "float32"): 32, ("AVX2", "bfloat16"): 32,
}


def _child_env(dtype_free: bool = True) -> dict[str, str]:
    """The engine environment jointopt sets (binding, iomp, KV cache), for raw runs too."""
    from jointopt.backends.cpu_engine import choose_cpu_engine, read_cpu_info
    from jointopt.backends.vllm_env import cpu_env

    env = dict(os.environ)
    env.update(cpu_env())
    env.update(choose_cpu_engine(read_cpu_info()).env())
    return env


def run_raw(args: argparse.Namespace) -> dict:
    """One raw-vLLM configuration: load, optional prefix warm-up, timed rounds."""
    import vllm

    from engine_overhead import build_requests
    from jointopt.backends.models import resolve_model

    requests = build_requests(count=48, n=4)
    requests = [dataclasses.replace(r, max_tokens=32) for r in requests]
    path = resolve_model(args.model)
    started = time.perf_counter()
    kwargs = dict(model=path, seed=0, dtype=args.dtype, max_model_len=1024,
                  enforce_eager=True, block_size=args.block_size)
    if args.max_num_seqs:
        kwargs["max_num_seqs"] = args.max_num_seqs
    llm = vllm.LLM(**kwargs)
    load = time.perf_counter() - started
    tok = llm.get_tokenizer()
    prompts = [tok.apply_chat_template([{"role": m.role, "content": m.content}
                                        for m in r.messages],
                                       tokenize=False, add_generation_prompt=True)
               for r in requests]
    params = vllm.SamplingParams(n=4, temperature=0.7, max_tokens=32, logprobs=0,
                                 flat_logprobs=True)
    tk = {"add_special_tokens": False}
    if args.warmup:
        llm.generate(prompts, vllm.SamplingParams(max_tokens=1), use_tqdm=False,
                     tokenization_kwargs=tk)
    else:
        llm.generate(prompts, params, use_tqdm=False, tokenization_kwargs=tk)
    rates, prompt_tokens = [], 0
    for _ in range(args.rounds):
        t = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False, tokenization_kwargs=tk)
        elapsed = time.perf_counter() - t
        rates.append(sum(len(o.token_ids) for out in outs for o in out.outputs) / elapsed)
        prompt_tokens = sum(len(out.prompt_token_ids) for out in outs)
    return {"load_s": load, "tok_s": statistics.median(rates), "rates": rates,
            "prompt_tokens": prompt_tokens}


def run_jointopt(args: argparse.Namespace) -> dict:
    """jointopt's path on the same requests: the backend with its automatic choices."""
    from engine_overhead import build_requests
    from jointopt.backends.vllm import VLLMBackend

    requests = build_requests(count=48, n=4)
    requests = [dataclasses.replace(r, max_tokens=32) for r in requests]
    started = time.perf_counter()
    cpu = {"threads": args.threads} if args.threads else None
    backend = VLLMBackend(args.model, seed=0, max_model_len=1024, cpu=cpu)
    load = time.perf_counter() - started
    backend.generate(requests)  # warm-up, as for the raw runs
    rates = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        results = backend.generate(requests)
        elapsed = time.perf_counter() - t
        rates.append(sum(r.completion_tokens for r in results) / elapsed)
    choice = backend.engine_choice
    out = {"load_s": load, "tok_s": statistics.median(rates), "rates": rates,
           "prompt_tokens": sum(r.prompt_tokens for r in results),
           "dtype": choice.dtype if choice else "?",
           "describe": choice.describe() if choice else "GPU"}
    backend.close()
    return out


def child(args: argparse.Namespace) -> None:
    result = run_raw(args) if args.child == "raw" else run_jointopt(args)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(extra: list[str], model: str, rounds: int) -> dict:
    cmd = [sys.executable, __file__, "--model", model, "--rounds", str(rounds), *extra]
    # Raw runs get the engine variables jointopt would set; jointopt's own run sets them
    # itself (and adapts them to the machine's load), so it starts from a plain environment.
    env = _child_env() if "raw" in extra else dict(os.environ)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
    raise SystemExit(f"configuration {extra} failed (exit {proc.returncode}):\n{tail}")


HOG = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def busy(args: argparse.Namespace) -> None:
    """Throughput idle and next to one CPU-bound process: jointopt's automatic choice (pinned
    threads when idle, unpinned passive ones when the cores are busy) and one fewer thread
    set in the config. Last line: ``ratio=<automatic busy / automatic idle>``."""
    from jointopt.backends.cpu_engine import read_cpu_info

    cores = len(read_cpu_info().cpus)
    print(f"{cores} CPUs usable; one other process spins on the CPU in the 'busy' rows")
    rows = []
    settings = [0] + ([cores - 1] if cores > 1 else [])
    for threads in settings:
        for hog in (False, True):
            extra = ["--child", "jointopt"] + (["--threads", str(threads)] if threads else [])
            proc = subprocess.Popen([sys.executable, "-c", HOG]) if hog else None
            try:
                result = spawn(extra, args.model, args.rounds)
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait()
            label = (f"threads={threads} (config), " if threads else "automatic, ") + \
                ("busy" if hog else "idle")
            rows.append((label, result))
            print(f"  {label}: {result['tok_s']:.1f} tok/s "
                  f"(rounds {' '.join(f'{x:.0f}' for x in result['rates'])})\n"
                  f"    {result['describe']}", flush=True)
    idle, busy_default = rows[0][1]["tok_s"], rows[1][1]["tok_s"]
    print(f"automatic: busy/idle = {busy_default / idle:.2f} "
          f"(in proportion to the CPU left: {(cores - 1) / cores:.2f})")
    print(f"ratio={busy_default / idle:.3f}")


def model_params(model: str) -> int:
    """Parameter count from the safetensors headers of the model folder."""
    from jointopt.backends.models import resolve_model

    total = 0
    for file in Path(resolve_model(model)).glob("*.safetensors"):
        with open(file, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                count = 1
                for dim in meta["shape"]:
                    count *= dim
                total += count
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per configuration")
    parser.add_argument("--quick", action="store_true",
                        help="sweep only the dtype (block size 32), 2 raw configurations")
    parser.add_argument("--child", choices=["raw", "jointopt"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    parser.add_argument("--block-size", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--max-num-seqs", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--busy", action="store_true",
                        help="instead: jointopt's throughput next to one CPU-bound process")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.busy:
        busy(args)
        return

    from jointopt.backends.cpu_engine import choose_cpu_engine, read_cpu_info

    info = read_cpu_info()
    auto = choose_cpu_engine(info)
    print(f"CPU: {info.model_name}, {len(info.cpus)} CPUs usable ({auto.bind}), "
          f"{info.memory_gib:.1f} GiB, {info.mhz or 0:.0f} MHz")
    print(f"CPU flags: {' '.join(info.vector_flags()) or '(none of AVX/AMX/FMA)'}")
    print(f"jointopt's choice: {auto.describe()}")

    configs = [("bfloat16", 32, 0, False), ("float32", 32, 0, False)]
    if not args.quick:
        configs += [("bfloat16", 128, 0, False), ("float32", 128, 0, False)]
    rows = []
    for dtype, block, seqs, warm in configs:
        extra = ["--child", "raw", "--dtype", dtype, "--block-size", str(block)]
        rows.append((f"raw {dtype} block {block}", spawn(extra, args.model, args.rounds),
                     dtype))
        print(f"  {rows[-1][0]}: {rows[-1][1]['tok_s']:.1f} tok/s", flush=True)
    if not args.quick:
        best = max(rows, key=lambda r: r[1]["tok_s"])
        dtype = best[2]
        block = 128 if "block 128" in best[0] else 32
        for seqs, warm in ((64, False), (0, True), (512, False)):
            extra = ["--child", "raw", "--dtype", dtype, "--block-size", str(block)]
            extra += ["--max-num-seqs", str(seqs)] if seqs else []
            extra += ["--warmup"] if warm else []
            label = f"raw {dtype} block {block}" + (f" max_num_seqs {seqs}" if seqs else "") \
                + (" + prefix warm-up" if warm else "")
            rows.append((label, spawn(extra, args.model, args.rounds), dtype))
            print(f"  {label}: {rows[-1][1]['tok_s']:.1f} tok/s", flush=True)
    joint = spawn(["--child", "jointopt"], args.model, args.rounds)
    rows.append((f"jointopt ({joint['dtype']}, automatic)", joint, joint["dtype"]))

    params = model_params(args.model)
    peak_by_dtype = {d: auto.threads * (info.mhz or 0) * 1e6 * FLOPS_PER_CYCLE.get(
        (info.isa, d), 32) for d in ("float32", "bfloat16")}
    print(f"\nmodel: {args.model}, {params / 1e6:.0f}M parameters, "
          f"{2 * params / 1e9:.2f} GFLOP per token; batch 48 prompts x n=4, max_tokens 32, "
          f"{args.rounds} timed rounds")
    print(f"{'configuration':<46}{'load s':>8}{'tok/s':>9}{'of peak':>9}  rounds (tok/s)")
    for label, r, dtype in rows:
        peak = peak_by_dtype.get(dtype, peak_by_dtype["float32"])
        share = 2 * params * r["tok_s"] / peak if peak else float("nan")
        rounds = " ".join(f"{x:.0f}" for x in r["rates"])
        print(f"{label:<46}{r['load_s']:>8.1f}{r['tok_s']:>9.1f}{share:>9.2%}  {rounds}")
    print("('of peak' = 2 x parameters x generated tok/s / (cores x clock x FMA FLOPs per "
          "cycle); prompt tokens are left out, so it is a lower bound of the compute used)")
    best_raw = max(r["tok_s"] for label, r, _ in rows if label.startswith("raw"))
    print(f"jointopt: {joint['describe']}")
    print(f"ratio={joint['tok_s'] / best_raw:.3f}")


if __name__ == "__main__":
    main()
