"""Replay speed: a 200-trial study from an imported histogram bank.

A synthetic bank shaped like a published one: 25 prompts x 316 examples x 128 samples,
answers over 5 categories, a completion cost per prompt; generated from a seed with
prompt-dependent accuracy (and example-dependent difficulty). It is written as a table of
answer histograms, imported with ``jointopt bank import`` (the API behind it), and a
200-trial study (TPE) searches prompt x {single, majority, best_of_n} x n in 1..16 on it,
with the held-out 20% re-scored for the Pareto front at the end.

Prints the import time, the bank's size, the study's wall time and the peak memory, then
checks every trial's dev accuracy and every held-out re-score against an independent
computation (majority@k summed over every way k samples fall into the 5 answers, with
numpy; not jointopt's estimator) to 1e-9; the last line is
``ratio=<study wall time / 30 s>`` (goal: <= 1).

    .venv/bin/python benchmarks/replay_speed.py
"""

from __future__ import annotations

import json
import logging
import math
from itertools import combinations
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPTS, EXAMPLES, SAMPLES, CATEGORIES = 25, 316, 128, "ABCDE"
TRIALS, BUDGET_S = 200, 30.0


def write_histograms(path: Path, seed: int = 0) -> None:
    """One row per (prompt, example): answer counts over A-E, the correct letter, tokens."""
    rng = np.random.default_rng(seed)
    skill = rng.uniform(-1.0, 1.5, PROMPTS)  # prompt-dependent accuracy
    hardness = rng.normal(0.0, 1.2, EXAMPLES)  # example-dependent difficulty
    cost = rng.integers(20, 400, PROMPTS)  # completion tokens per prompt
    targets = rng.integers(0, len(CATEGORIES), EXAMPLES)
    with path.open("w", encoding="utf-8") as fh:
        for p in range(PROMPTS):
            for e in range(EXAMPLES):
                p_right = 1 / (1 + np.exp(-(skill[p] - hardness[e])))
                wrong = rng.dirichlet(np.full(len(CATEGORIES) - 1, 0.6)) * (1 - p_right)
                probs = np.insert(wrong, targets[e], p_right)
                counts = rng.multinomial(SAMPLES, probs)
                fh.write(json.dumps({
                    "prompt_id": f"p{p:02d}", "example_id": f"q{e:03d}",
                    "counts": {c: int(n) for c, n in zip(CATEGORIES, counts) if n},
                    "correct": [CATEGORIES[targets[e]]], "total": SAMPLES,
                    "completion_tokens": float(cost[p]), "prompt_tokens": 60 + 3 * p,
                }) + "\n")


def independent_majority(counts: np.ndarray, correct: np.ndarray, k: int) -> np.ndarray:
    """Majority@k of rows of answer counts: every composition x of k into the answers,
    weighted by prod C(n_a, x_a) / C(N, k), wins with the share of tied top answers that
    are correct."""
    parts = counts.shape[1]
    bars = np.array(list(combinations(range(k + parts - 1), parts - 1)))
    edges = np.concatenate([np.full((len(bars), 1), -1), bars,
                            np.full((len(bars), 1), k + parts - 1)], axis=1)
    comps = np.diff(edges, axis=1) - 1
    table = np.array([[float(math.comb(n, x)) for x in range(k + 1)]
                      for n in range(int(counts.max()) + 1)])
    weight = np.ones((len(counts), len(comps)))
    for j in range(parts):
        weight *= table[counts[:, j][:, None], comps[None, :, j]]
    tied = comps == comps.max(axis=1, keepdims=True)
    share = tied / tied.sum(axis=1, keepdims=True)
    totals = np.array([float(math.comb(int(n), k)) for n in counts.sum(axis=1)])
    return (weight * (correct @ share.T)).sum(axis=1) / totals


def check_exact(study, plan, table: Path) -> tuple[int, int, float]:
    """Every trial and held-out score against :func:`independent_majority` (best_of_n
    without scores picks a uniform sample: the single-sample accuracy)."""
    rows = {}
    for line in table.read_text().splitlines():
        r = json.loads(line)
        rows[(r["prompt_id"], r["example_id"])] = (
            [r["counts"].get(c, 0) for c in CATEGORIES], [c in r["correct"] for c in CATEGORIES])
    cache: dict = {}

    def accuracy(prompt: str, strategy: str, n: int, examples) -> float:
        key = (prompt, strategy, n, tuple(e.id for e in examples))
        if key not in cache:
            counts = np.array([rows[(prompt, e.id)][0] for e in examples])
            correct = np.array([rows[(prompt, e.id)][1] for e in examples], dtype=float)
            k = n if strategy == "majority" else 1
            cache[key] = float(independent_majority(counts, correct, k).mean())
        return cache[key]

    worst = 0.0
    for trial in study.trials:
        a = next(iter(trial.policy.bins.values()))
        want = accuracy(trial.policy.prompt.id, a.strategy, int(dict(a.params).get("n", 1)),
                        plan.task.examples)
        worst = max(worst, abs(want - trial.accuracy))
    for trial in study.pareto:
        a = next(iter(trial.policy.bins.values()))
        want = accuracy(trial.policy.prompt.id, a.strategy, int(dict(a.params).get("n", 1)),
                        plan.test_task.examples)
        worst = max(worst, abs(want - trial.test["accuracy"].value))
    return len(study.trials), len(study.pareto), worst


def main() -> int:
    from jointopt.banks.importer import ImportOptions, import_bank
    from jointopt.search.config import load_config
    from jointopt.search.plan import plan_study
    from jointopt.search.study import run_study

    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = folder / "histograms.jsonl"
        write_histograms(table)
        start = time.perf_counter()
        result = import_bank(table, folder / "published.bank.npz",
                             ImportOptions(n_trials=TRIALS, max_n=16, test_fraction=0.2))
        imported = time.perf_counter() - start
        print(f"table: {table.stat().st_size / 1e6:.2f} MB ({PROMPTS * EXAMPLES} histogram "
              f"rows, {PROMPTS * EXAMPLES * SAMPLES} samples)")
        print(f"import: {imported:.2f} s; bank {result.bank.stat().st_size / 1e6:.3f} MB, "
              f"{result.pools} pools")
        config = load_config(result.study, {"output_dir": str(folder / "run")})
        start = time.perf_counter()
        study = run_study(config)
        wall = time.perf_counter() - start
        trials = len(study.trials)
        best = max(t.accuracy for t in study.trials)
        print(f"study: {trials} trials in {wall:.1f} s ({wall / trials * 1e3:.0f} ms per "
              f"trial, held-out re-scores of {len(study.pareto)} Pareto trials included); "
              f"best dev accuracy {best:.4f}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak memory: {peak:.0f} MB (resident, whole process)")
        trials, tests, worst = check_exact(study, plan_study(config), table)
        print(f"exactness: {trials} dev accuracies and {tests} held-out re-scores vs an "
              f"independent majority@k: largest difference {worst:.2e} "
              f"({'ok' if worst <= 1e-9 else 'FAILED'}, tolerance 1e-9)")
    print(f"ratio={wall / BUDGET_S:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
