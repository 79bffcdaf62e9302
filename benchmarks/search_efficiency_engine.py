"""Search efficiency on the embedded engine: generation spent until the exhaustive front
is found.

    flock /tmp/jointopt-engine.lock .venv/bin/python benchmarks/search_efficiency_engine.py \
        [POOLS.npz]   # keeps the drawn pools there; a later run only replays them

A small real grid: the quickstart's 5 prompts x temperatures {0.4, 0.7, 1.0} x majority
vote with n in 1..8 (n = 1: a single sample), max_tokens 32, on 30 word-reversal
examples, with SmolLM2-135M-Instruct on vLLM.

1. **Live study.** A jointopt study over that grid with racing on (screening, completion
   by promise, racing, free variants: the defaults of ``optimizer.racing``) runs on the
   engine in a fresh sample store; each trial's ``tokens_generated`` is what the engine
   processed for it.
2. **Exhaustive pools.** Every setting's pools (8 samples per example) are then filled
   through the same store: the tokens this adds plus the study's are the exhaustive pooled
   cost, and every policy of the grid is scored exactly from the pools, so the exhaustive
   front is known, in the same samples the study saw.
3. Reported: the share of the exhaustive pooled cost the live study had spent when its
   scored policies (proposed and derived trials) first held the whole exhaustive front
   (hypervolume ratio 1). Then, as a comparison over 10 sampler seeds each, the methods of
   ``benchmarks/search_efficiency.py`` replayed over the same pools with generation
   accounted as the engine counted it (prompt tokens once per pool request, completion
   tokens per sample).

Last line: ``ratio=<the live study's share>`` (goal <= 0.4); with POOLS.npz of an earlier
run, only the replayed methods run and the ratio is the replayed jointopt median.
"""

from __future__ import annotations

import logging
import sys
from typing import Any
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


def grid_config(folder: Path):
    """The study over the benchmark's grid, with racing, in ``folder``."""
    import yaml

    from jointopt.search.config import load_config

    space = yaml.safe_load((ROOT / "search_spaces/quickstart.yaml").read_text())
    space.update(strategies={"single": {}, "majority": {"n": {"low": 2, "high": N_MAX}}},
                 temperature={"choices": list(TEMPERATURES)}, max_tokens=MAX_TOKENS)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    return load_config(ROOT / "experiments/quickstart.yaml", {
        "output_dir": str(folder / "run"), "search_space": str(folder / "space.yaml"),
        "tracking": {"enabled": False}, "bank": {"pool_size": N_MAX},
        "optimizer": {"n_trials": len(TEMPERATURES) * 5, "racing": {"enabled": True}},
        "task": {"builtin": {"family": "reverse_words", "n_per_level": 10, "seed": 0}}})


def live_study(engine, folder: Path):
    """Run the study on ``engine``; (the plan, the study's trials in number order, the
    tokens it generated)."""
    import optuna

    from jointopt.search.plan import plan_study
    from jointopt.search.study import run_study

    config = grid_config(folder)
    result = run_study(config, backend=engine)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return plan_study(config), trials, float(result.extra["tokens_generated"])


def exhaustive_points(engine, plan) -> list[tuple[float, float, Any]]:
    """(accuracy, mean tokens, intervals) of every policy of the grid, scored as the study
    scores free variants (filling every setting's pools through ``engine``); intervals
    are the study's dev intervals (bootstrap, ``validation`` settings)."""
    from jointopt.core.policy import Allocation, Policy
    from jointopt.evaluation.stats import objective_intervals
    from jointopt.search.variants import free_variants, score_variants

    variants = free_variants(plan.space.strategies)
    points = []
    for prompt in plan.space.prompts:
        for temperature in TEMPERATURES:
            policy = Policy(model=plan.model, prompt=prompt,
                            bins={"all": Allocation("single", temperature, MAX_TOKENS)})
            scores = score_variants(policy, variants, plan.task, engine, seed=plan.config.seed,
                                    pool_size=N_MAX)
            for records in scores.records:
                count = len(records)
                points.append((sum(r.correct for r in records) / count,
                               sum(r.tokens for r in records) / count,
                               objective_intervals(records, plan.config.validation)))
    return points


def front_of(grid):
    """The grid's Pareto-optimal points (accuracy up, tokens down)."""
    from jointopt.search.results import non_dominated

    return [p for _, p in non_dominated(enumerate(grid), accuracy=lambda e: e[1][0],
                                        tokens=lambda e: e[1][1], number=lambda e: e[0])]


def found_within_ci(trials, grid, total: float) -> float:
    """Share of ``total`` the study had spent when every exhaustive front policy had a
    scored policy inside its interval: accuracy at least the front policy's lower bound,
    mean tokens at most its upper bound (nan: never)."""
    targets = [(p[2]["accuracy"].low, p[2]["mean_tokens"].high) for p in front_of(grid)]
    spent, points = 0.0, []
    for t in trials:
        spent += t.user_attrs.get("tokens_generated", 0.0) or 0.0
        if t.state.name == "COMPLETE":
            points.append((t.values[0], t.values[1]))
            if all(any(a >= low and c <= high for a, c in points) for low, high in targets):
                return spent / total
    return float("nan")


def found_at(trials, front_hv: float, ref: float, total: float) -> float:
    """Share of ``total`` the study had spent when its complete trials' values first
    reached the exhaustive front's hypervolume (nan: never)."""
    from jointopt.search.promise import hypervolume

    spent, points = 0.0, []
    for t in trials:
        spent += t.user_attrs.get("tokens_generated", 0.0) or 0.0
        if t.state.name == "COMPLETE":
            points.append((t.values[0], t.values[1]))
            if hypervolume(points, ref) >= front_hv - 1e-9:
                return spent / total
    return float("nan")


def first_full(curve, total: float) -> float:
    """Fraction of ``total`` spent when the hypervolume ratio first reaches 1."""
    return next((cost / total for cost, hv in curve if hv >= 1 - 1e-9), float("nan"))


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import tempfile

    import search_efficiency as bench

    from jointopt.backends import CachedBackend, SampleStore
    from jointopt.backends.models import DEFAULT_ALIAS
    from jointopt.backends.vllm import VLLMBackend
    from jointopt.search.plan import plan_study
    from jointopt.search.promise import hypervolume

    logging.disable(logging.WARNING)
    plan = plan_study(grid_config(Path(tempfile.mkdtemp()) / "plan"))
    start = time.perf_counter()
    saved = Path(sys.argv[1]) if len(sys.argv) > 1 else None  # pools of an earlier run
    live = None
    if saved is not None and saved.exists():
        data = np.load(saved)
        acc, tok, sample_tokens, prompt_tokens = (data[k] for k in ("acc", "tok", "samples",
                                                                   "prompts"))
        strata = [str(e.difficulty) for e in plan.task.examples]
        settings = [(p, t) for p in plan.space.prompts for t in TEMPERATURES]
    else:
        engine = VLLMBackend(DEFAULT_ALIAS, seed=0, max_model_len=1024)
        folder = Path(tempfile.mkdtemp(prefix="search_efficiency_"))
        try:
            t0 = time.perf_counter()
            plan, trials, study_tokens = live_study(engine, folder)
            study_time = time.perf_counter() - t0
            store = CachedBackend(engine, SampleStore(folder / "run" / "samples.sqlite"))
            grid = exhaustive_points(store, plan)
            fill_tokens = float(store.engine_tokens)
            acc, tok, sample_tokens, prompt_tokens, strata, settings = record_pools(store,
                                                                                    plan)
            store.store.close()
        finally:
            engine.close()
        live = (trials, study_tokens, fill_tokens, study_time, grid)
        if saved is not None:
            np.savez(saved, acc=acc, tok=tok, samples=sample_tokens, prompts=prompt_tokens)
    bank = bench.Bank.from_pools(acc, tok, sample_tokens, prompt_tokens, strata, MAX_TOKENS)
    front = bench._front(bank, {(i, n) for i in range(bank.settings) for n in range(N_MAX)})
    print(f"{len(settings)} settings x {bank.questions} examples x {N_MAX} samples "
          f"({time.perf_counter() - start:.0f}s with the engine); {bank.settings * N_MAX} "
          f"policies, exhaustive front {len(front)} points over "
          f"{len({i for i, _ in front})} settings; exhaustive pooled cost "
          f"{bank.exhaustive:.0f} tokens (replay accounting)")
    ratio = None
    if live is not None:
        trials, study_tokens, fill_tokens, study_time, grid = live
        total = study_tokens + fill_tokens
        ref = max(p[1] for p in grid) * 1.05
        exact = found_at(trials, hypervolume([p[:2] for p in grid], ref), ref, total)
        ratio = found_within_ci(trials, grid, total)
        states = [t.state.name for t in trials if "derived_from" not in t.user_attrs]
        print(f"live study ({study_time:.0f}s): {states.count('COMPLETE')} complete, "
              f"{sum('screened' in t.user_attrs for t in trials)} screened, "
              f"{sum('raced_out' in t.user_attrs for t in trials)} raced out, "
              f"{sum('derived_from' in t.user_attrs for t in trials)} derived trials; "
              f"{study_tokens:.0f} engine tokens of an exhaustive pooled cost of "
              f"{total:.0f} ({study_tokens / total:.3f}); every exhaustive front policy "
              f"matched within its interval at {ratio:.3f} of it, the exact front (hypervolume "
              f"ratio 1) held at {exact:.3f}")
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
              f"cost (replayed, median; found in {sum(not np.isnan(f) for f in fractions)}/"
              f"{SEEDS} seeds), HV ratio at <= 0.30: {at_30:.4f}")
    print(f"ratio={(found['jointopt'] if ratio is None else ratio):.4f}")


if __name__ == "__main__":
    main()
