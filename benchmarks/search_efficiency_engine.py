"""Search efficiency on the embedded engine: generation spent until the exhaustive front
is found.

    flock /tmp/jointopt-engine.lock .venv/bin/python benchmarks/search_efficiency_engine.py \
        [POOLS.npz]   # keeps the drawn pools there; a later run re-reads them

A small real grid: the quickstart's 5 prompts x temperatures {0.4, 0.7, 1.0} x majority
vote with n in 1..8 (n = 1: a single sample), max_tokens 32, on 30 word-reversal
examples, with SmolLM2-135M-Instruct on vLLM. Every setting's pools (8 samples per
example) are drawn once from the engine; the methods of
``benchmarks/search_efficiency.py`` then run over these pools with generation accounted
as the engine counted it (prompt tokens once per pool request, completion tokens per
sample), so the exhaustive front is known exactly. Reported: the fraction of the
exhaustive pooled cost each method spends until its scored policies hold the whole
exhaustive front (hypervolume ratio 1), medians over 10 sampler seeds. Last line:
``ratio=<jointopt's fraction>`` (goal <= 0.4).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEMPERATURES, N_MAX, MAX_TOKENS, SEEDS = (0.4, 0.7, 1.0), 8, 32, 10


def record_pools(engine, plan):
    """acc / tok [setting, question, n-1], sample tokens, prompt tokens per (setting,
    question), and the settings, from one engine batch per setting."""
    from jointopt.core.policy import Allocation, Policy
    from jointopt.evaluation.evaluate import policy_contexts
    from jointopt.strategies.pool import majority_curve, pool_samples

    task = plan.task
    settings = [(p, t) for p in plan.space.prompts for t in TEMPERATURES]
    shape = (len(settings), len(task.examples))
    acc, tok = np.zeros((*shape, N_MAX)), np.zeros((*shape, N_MAX))
    sample_tokens, prompt_tokens = np.zeros((*shape, N_MAX)), np.zeros(shape)
    ks = np.arange(1, N_MAX + 1)
    for s, (prompt, temperature) in enumerate(settings):
        policy = Policy(model="m", prompt=prompt,
                        bins={"all": Allocation("single", temperature, MAX_TOKENS)})
        contexts, _ = policy_contexts(policy, task, seed=0)
        results = engine.generate([c.request(n=N_MAX) for c in contexts])
        for q, (ctx, result) in enumerate(zip(contexts, results)):
            pool = pool_samples(ctx, result.completions)
            acc[s, q] = majority_curve(pool)
            sample_tokens[s, q] = [c.num_tokens for c in result.completions]
            prompt_tokens[s, q] = result.prompt_tokens
            tok[s, q] = result.prompt_tokens + ks * sample_tokens[s, q].mean()
    strata = [str(e.difficulty) for e in task.examples]
    return acc, tok, sample_tokens, prompt_tokens, strata, settings


def first_full(curve, total: float) -> float:
    """Fraction of ``total`` spent when the hypervolume ratio first reaches 1."""
    return next((cost / total for cost, hv in curve if hv >= 1 - 1e-9), float("nan"))


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import search_efficiency as bench

    from jointopt.backends.models import DEFAULT_ALIAS
    from jointopt.backends.vllm import VLLMBackend
    from jointopt.search.config import load_config
    from jointopt.search.plan import plan_study

    logging.disable(logging.WARNING)
    config = load_config(ROOT / "experiments/quickstart.yaml", {
        "tracking": {"enabled": False},
        "task": {"builtin": {"family": "reverse_words", "n_per_level": 10, "seed": 0}}})
    plan = plan_study(config)
    start = time.perf_counter()
    saved = Path(sys.argv[1]) if len(sys.argv) > 1 else None  # pools of an earlier run
    if saved is not None and saved.exists():
        data = np.load(saved)
        acc, tok, sample_tokens, prompt_tokens = (data[k] for k in ("acc", "tok", "samples",
                                                                   "prompts"))
        strata = [str(e.difficulty) for e in plan.task.examples]
        settings = [(p, t) for p in plan.space.prompts for t in TEMPERATURES]
    else:
        engine = VLLMBackend(DEFAULT_ALIAS, seed=0, max_model_len=1024)
        try:
            acc, tok, sample_tokens, prompt_tokens, strata, settings = record_pools(engine,
                                                                                    plan)
        finally:
            engine.close()
        if saved is not None:
            np.savez(saved, acc=acc, tok=tok, samples=sample_tokens, prompts=prompt_tokens)
    bank = bench.Bank.from_pools(acc, tok, sample_tokens, prompt_tokens, strata, MAX_TOKENS)
    front = bench._front(bank, {(i, n) for i in range(bank.settings) for n in range(N_MAX)})
    print(f"{len(settings)} settings x {bank.questions} examples x {N_MAX} samples drawn in "
          f"{time.perf_counter() - start:.0f}s; {bank.settings * N_MAX} policies, exhaustive "
          f"front {len(front)} points over {len({i for i, _ in front})} settings; "
          f"exhaustive pooled cost {bank.exhaustive:.0f} tokens")
    runs = {"jointopt": lambda s: bench.run_jointopt(bank, s),
            "jointopt_sampler_first": lambda s: bench.run_jointopt(bank, s, queue_first=False,
                                                                   trials=200),
            "tpe": lambda s: bench.run_plain(bank, s, "tpe", 200),
            "random": lambda s: bench.run_plain(bank, s, "random", 200)}
    found = {}
    for name, run in runs.items():
        curves = [run(seed) for seed in range(SEEDS)]
        fractions = [first_full(c, bank.exhaustive) for c in curves]
        found[name] = float(np.nanmedian(fractions)) if not all(map(np.isnan, fractions)) \
            else float("nan")
        at_30 = np.median([bench.at_fraction(c, 0.3 * bank.exhaustive) for c in curves])
        print(f"{name:>22}: whole front found at {found[name]:.3f} of the exhaustive pooled "
              f"cost (median; found in {sum(not np.isnan(f) for f in fractions)}/{SEEDS} "
              f"seeds), HV ratio at <= 0.30: {at_30:.4f}")
    print(f"ratio={found['jointopt']:.4f}")


if __name__ == "__main__":
    main()
