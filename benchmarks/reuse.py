"""Sample reuse: tokens a 100-trial study generates with the sample bank, against what a
naive evaluation (every trial generating its own samples) would generate.

Runs experiments/reuse.yaml (parallel strategies only) on the vLLM engine with the
embedded model, with the bank and a fresh sample store. Then it evaluates every distinct
policy of the study naively (fresh samples, no store, the strategy run as in serving)
and compares the two Pareto fronts. For each policy on either front both accuracies are
proportions over the same examples, and the fronts agree when, for every such policy, the
99% confidence interval of their difference (Newcombe's hybrid score interval, built from
the two Wilson score intervals, which stay informative at 0 and 1) contains zero. The
bank's accuracy is treated as a binomial proportion too; that is conservative, never
optimistic: per example it averages the outcomes of k-subsets of i.i.d. samples, so its
variance is at most that of one fresh run's outcome, and this holds at k = pool size,
where the pool itself is the one draw.

    .venv/bin/python benchmarks/reuse.py [--trials 100] [--scripted]

Last line: ``ratio=<generated / naive>`` (goal <= 0.10).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def wilson(successes: float, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion (``successes`` may be fractional)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(a: float, b: float, n: int, level: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``a - b`` for two proportions over ``n`` each."""
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    (la, ua), (lb, ub) = wilson(a * n, n, z), wilson(b * n, n, z)
    d = a - b
    return (d - math.sqrt((a - la) ** 2 + (ub - b) ** 2),
            d + math.sqrt((ua - a) ** 2 + (b - lb) ** 2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--scripted", action="store_true",
                        help="use the scripted backend (offline smoke run, no engine)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    logging.basicConfig(level=logging.WARNING)

    from jointopt.backends import make_backend
    from jointopt.search.config import load_config
    from jointopt.evaluation.evaluate import evaluate
    from jointopt.search.study import run_study
    from jointopt.testing import RecordingBackend
    from jointopt.evaluation.stats import bootstrap

    out = Path(tempfile.mkdtemp(prefix="jointopt-reuse-"))
    config = load_config(ROOT / "experiments/reuse.yaml",
                         {"output_dir": str(out), "optimizer": {"n_trials": args.trials}})
    if args.scripted:
        sys.path.insert(0, str(ROOT / "tests"))
        from test_study import reverse_responder

        from jointopt.backends import ScriptedBackend

        engine = ScriptedBackend(reverse_responder)
    else:
        engine = make_backend("vllm", model=config.model.model, seed=config.model.seed,
                              max_model_len=config.model.max_model_len)
    try:
        counted = RecordingBackend(engine)  # sees only what reaches the engine
        start = time.perf_counter()
        result = run_study(config, backend=counted)
        study_time = time.perf_counter() - start
        generated = counted.total_tokens
        n_examples = len(config.task.builtin.levels) * config.task.builtin.n_per_level
        naive_total = sum(t.mean_tokens * n_examples for t in result.trials)

        from jointopt.search.plan import plan_study

        plan = plan_study(config)
        distinct: dict[str, object] = {}
        for t in result.trials:
            distinct.setdefault(t.policy.to_yaml(), t)
        print(f"study: {len(result.trials)} trials, {len(distinct)} distinct policies, "
              f"{study_time:.0f}s; engine tokens {generated}, naive {naive_total:.0f}")

        naive = {}
        start = time.perf_counter()
        for key, t in distinct.items():
            r = evaluate(t.policy, plan.task, engine, seed=config.seed + 1, pool_size=None)
            naive[t.number] = (bootstrap([x.correct for x in r.records], seed=1),
                               bootstrap([x.tokens for x in r.records], seed=1))
        naive_time = time.perf_counter() - start
        print(f"naive re-evaluation of the distinct policies: {naive_time:.0f}s")

        def front(points: dict[int, tuple[float, float]]) -> list[int]:
            keep = []
            for n, (acc, tok) in points.items():
                if not any(a > acc and k <= tok or a >= acc and k < tok
                           for m, (a, k) in points.items() if m != n):
                    keep.append(n)
            return sorted(keep, key=lambda n: points[n][1])

        by_policy = {t.number: t for t in distinct.values()}
        bank_points = {n: (t.accuracy, t.mean_tokens) for n, t in by_policy.items()}
        naive_points = {n: (a.value, k.value) for n, (a, k) in naive.items()}
        bank_front, naive_front = front(bank_points), front(naive_points)
        agree = True
        print(f"{'trial':>5} {'front':>10} {'bank acc [95% CI]':>26} {'naive acc [95% CI]':>26}"
              f" {'bank - naive [99% CI]':>26} {'tokens bank/naive':>18}  policy")
        for n in sorted(set(bank_front) | set(naive_front), key=lambda n: bank_points[n][1]):
            t = by_policy[n]
            b_acc, n_acc = t.dev["accuracy"], naive[n][0]
            low, high = difference_interval(b_acc.value, n_acc.value, n_examples, 0.99)
            ok = low <= 0.0 <= high
            agree &= ok
            which = "+".join(x for x, f in (("bank", bank_front), ("naive", naive_front))
                             if n in f)
            print(f"{n:>5} {which:>10} {str(b_acc):>26} {str(n_acc):>26} "
                  f"{f'{b_acc.value - n_acc.value:+.3f} [{low:+.3f}, {high:+.3f}]':>26} "
                  f"{t.mean_tokens:>8.1f}/{naive[n][1].value:<8.1f}  "
                  f"{t.policy.prompt.id} {t.policy.describe()} {'' if ok else '<-- outside'}")
        shifts = [by_policy[n].accuracy - naive_points[n][0] for n in by_policy]
        print(f"mean bank - naive accuracy over all {len(shifts)} distinct policies: "
              f"{sum(shifts) / len(shifts):+.3f}")
        print(f"fronts agree (zero inside every front policy's 99% interval of bank - naive): "
              f"{agree}")
        ratio = generated / naive_total
        print(f"ratio={ratio:.3f}")
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
