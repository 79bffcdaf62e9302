"""Does certification keep its promise? Violation rates over random calibration/test splits.

A synthetic replayed bank per difficulty mix (seeded): a population of examples, each
with a difficulty level and a latent ease ``u ~ U(0, 1)``; a policy spending budget ``b``
on level ``d`` answers it correctly iff ``u < p(d, b)`` (more budget never loses an answer,
as with a shared sample pool). The candidates are every per-bin allocation of the budgets
(uniform ones included), so the bank is a 0/1 correctness matrix examples x policies and
a per-example token cost.

Each split draws, at random, a dev split (what the search sees and picks its front on),
a calibration split (never seen by the search) and a test split (the rest, large, to
stand for future traffic). Two rules choose a policy from the dev Pareto front:

* naive: the cheapest policy with dev accuracy >= target;
* certified: :func:`jointopt.evaluation.certificate.certify_candidates` on the
  calibration split (Learn-then-Test, fixed sequence by dev accuracy, exact binomial
  p-values) at ``risk``.

A split violates when the chosen policy's test accuracy is below the target. Reported
per mix: both violation rates, how often each rule chose nothing, and the cost premium
of certification (mean tokens of the certified policy over the naive one, on splits
where both chose). Last line: ``ratio=<worst certified violation rate / risk>``
(goal <= 1; the acceptance allows risk + 0.01).

    python benchmarks/certify_coverage.py [--splits 1000] [--risk 0.05] [--target 0.9]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from jointopt.evaluation.certificate import CertCandidate, certify_candidates

BUDGETS = (1, 2, 4, 8, 16)
#: accuracy at budget 1 per level; each doubling keeps 60% of the errors
BASE = (0.85, 0.6, 0.35)
TOKENS_PER_SAMPLE = (20.0, 30.0, 40.0)
MIXES = {"easy-heavy": (0.6, 0.3, 0.1), "balanced": (1 / 3, 1 / 3, 1 / 3),
         "hard-heavy": (0.2, 0.35, 0.45)}


def bank(mix: tuple[float, ...], size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness (examples x policies, bool) and tokens (examples x policies)."""
    rng = np.random.default_rng(seed)
    level = rng.choice(len(mix), size=size, p=np.asarray(mix) / sum(mix))
    ease = rng.random(size)
    policies = list(itertools.product(range(len(BUDGETS)), repeat=len(BASE)))
    correct = np.empty((size, len(policies)), dtype=bool)
    tokens = np.empty((size, len(policies)))
    for j, alloc in enumerate(policies):
        budget = np.array([BUDGETS[alloc[d]] for d in range(len(BASE))])[level]
        base = np.asarray(BASE)[level]
        p = 1 - (1 - base) * 0.6 ** np.log2(budget)
        correct[:, j] = ease < p
        tokens[:, j] = budget * np.asarray(TOKENS_PER_SAMPLE)[level]
    return correct, tokens


def dev_front(acc: np.ndarray, cost: np.ndarray) -> list[int]:
    """Indices of the dev Pareto front (accuracy up, cost down)."""
    front, best = [], -1.0
    for j in sorted(range(acc.size), key=lambda j: (cost[j], -acc[j], j)):
        if acc[j] > best:
            front.append(j)
            best = acc[j]
    return front


def one_split(correct: np.ndarray, tokens: np.ndarray, rng: np.random.Generator,
              n_dev: int, n_cal: int, target: float, risk: float
              ) -> tuple[int | None, int | None, np.ndarray]:
    """The naive and the certified choice (None: nothing) and the test indices."""
    order = rng.permutation(correct.shape[0])
    dev, cal = order[:n_dev], order[n_dev:n_dev + n_cal]
    dev_acc = correct[dev].mean(axis=0)
    dev_cost = tokens[dev].mean(axis=0)
    front = dev_front(dev_acc, dev_cost)
    naive = next((j for j in front if dev_acc[j] >= target), None)
    cands = [CertCandidate(key=j, cost=float(dev_cost[j]), dev_accuracy=float(dev_acc[j]),
                           outcomes=tuple(correct[cal, j].astype(float))) for j in front]
    result = certify_candidates(cands, target, risk, method="binomial", lower_bounds=False)
    return naive, result.chosen, order[n_dev + n_cal:]


def run_mix(name: str, mix: tuple[float, ...], args: argparse.Namespace, seed: int) -> float:
    correct, tokens = bank(mix, args.population, seed)
    truth = correct.mean(axis=0)
    rng = np.random.default_rng(seed + 1)
    viol = {"naive": 0, "certified": 0}
    none = {"naive": 0, "certified": 0}
    premiums, over_oracle = [], []
    for _ in range(args.splits):
        naive, cert, test = one_split(correct, tokens, rng, args.dev, args.calibration,
                                      args.target, args.risk)
        for rule, j in (("naive", naive), ("certified", cert)):
            if j is None:
                none[rule] += 1
            elif correct[test, j].mean() < args.target:
                viol[rule] += 1
        if naive is not None and cert is not None:
            premiums.append(tokens[test, cert].mean() / tokens[test, naive].mean() - 1)
        if cert is not None:
            over_oracle.append(cert)
    rate = {k: v / args.splits for k, v in viol.items()}
    cheapest_true = min((tokens[:, j].mean() for j in range(truth.size)
                         if truth[j] >= args.target), default=float("nan"))
    cert_cost = float(np.mean([tokens[:, j].mean() for j in over_oracle])) if over_oracle \
        else float("nan")
    print(f"{name:11s} mix={tuple(round(m, 2) for m in mix)} best true acc "
          f"{truth.max():.3f}, cheapest truly-valid policy {cheapest_true:.1f} tokens")
    print(f"  naive     violation {rate['naive']:.3f}  (chose nothing {none['naive']})")
    print(f"  certified violation {rate['certified']:.3f}  (chose nothing "
          f"{none['certified']})  cost premium "
          f"{100 * float(np.mean(premiums)) if premiums else float('nan'):+.1f}% mean, "
          f"{100 * float(np.median(premiums)) if premiums else float('nan'):+.1f}% median "
          f"over naive; {100 * (cert_cost / cheapest_true - 1):+.1f}% over the cheapest "
          "truly-valid policy")
    return rate["certified"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=1000)
    parser.add_argument("--risk", type=float, default=0.05)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--population", type=int, default=20_000)
    parser.add_argument("--dev", type=int, default=300)
    parser.add_argument("--calibration", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"target {args.target}, risk {args.risk}, {args.splits} splits per mix; dev "
          f"{args.dev}, calibration {args.calibration}, test = rest of "
          f"{args.population}; {len(BUDGETS) ** len(BASE)} candidate policies")
    worst = max(run_mix(name, mix, args, args.seed + 10 * i)
                for i, (name, mix) in enumerate(MIXES.items()))
    print(f"worst certified violation rate {worst:.3f} (allowed {args.risk + 0.01:.3f}); "
          f"{time.perf_counter() - start:.0f}s")
    print(f"ratio={worst / args.risk:.3f}")


if __name__ == "__main__":
    main()
