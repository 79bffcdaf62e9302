"""Timings of jointopt.strategies.pool on synthetic pools (no engine).

    .venv/bin/python benchmarks/bank_math.py

For each pool size N and answer spread, times the cold majority table (every k at
once, cache cleared), the per-k calls that follow (cache warm), best-of for every k and
a weighted vote at k = N/4 (exact or resampled, as the bank decides).
"""

from __future__ import annotations

import time

import numpy as np

import jointopt.strategies.pool as bank
from jointopt.strategies.pool import PoolSample, expected_best_of, expected_majority
from jointopt.strategies.pool_weighted import expected_weighted


def pool(seed: int, n: int, n_answers: int, p_none: float = 0.1) -> list[PoolSample]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(n_answers))
    good = set(rng.choice(n_answers, size=max(1, n_answers // 3), replace=False).tolist())
    out = []
    for _ in range(n):
        if rng.random() < p_none:
            out.append(PoolSample(None, False, int(rng.integers(50, 500))))
            continue
        a = int(rng.choice(n_answers, p=probs))
        lp = float(-rng.random())
        out.append(PoolSample(f"x{a}", a in good, int(rng.integers(50, 500)),
                              mean_logprob=lp, sum_logprob=lp * 200, score=float(rng.random())))
    return out


def ms(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    print(f"{'N':>5} {'answers':>8} {'groups':>6} {'majority all k cold':>20} "
          f"{'warm':>8} {'best-of all k':>14} {'weighted k=N/4':>22}")
    for n in (32, 64, 128, 256, 512, 1000):
        for n_answers in (3, 10, n // 2, n):
            p = pool(n + n_answers, n, n_answers)
            groups = len({s.answer for s in p if s.answer is not None})

            def cold():
                bank._majority_table.cache_clear()
                for k in range(1, n + 1):
                    expected_majority(p, k)

            def warm():
                for k in range(1, n + 1):
                    expected_majority(p, k)

            def best_of():
                for k in range(1, n + 1):
                    expected_best_of(p, k)

            k = max(1, n // 4)
            method = expected_weighted(p, k).method
            repeat = 3 if n <= 256 else 1
            print(f"{n:>5} {n_answers:>8} {groups:>6} {ms(cold, repeat):>17.1f} ms "
                  f"{ms(warm, repeat):>5.1f} ms {ms(best_of, repeat):>11.1f} ms "
                  f"{ms(lambda: expected_weighted(p, k), repeat):>8.1f} ms {method}")


if __name__ == "__main__":
    main()
