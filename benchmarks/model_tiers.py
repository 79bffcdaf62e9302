"""Which model per difficulty bin: SmolLM2-135M and Qwen2.5-Coder-0.5B on one task.

Runs experiments/model_tiers.yaml (an Optuna study over both embedded models on the vLLM
engine: model, strategy and budget per bin, cascades from SmolLM2 to Qwen, cost = mean
FLOPs per example) and prints its Pareto front with held-out intervals and the model
each bin chose. Then, from the same sample store, it scores every per-bin option
exhaustively (each model with majority votes of 1-6 samples; cascades SmolLM2 -> Qwen
over a grid of n, threshold and escalate_n), chosen on the dev split and reported on the
held-out split with bootstrap intervals:

* per bin: the small model's best vote against the large model's single sample;
* the cheapest policy reaching each accuracy level for: each model alone, the model
  chosen per bin, cascades in every bin, and everything together;
* the engines' load times and memory together (PSS of this process and the engine
  processes; the engines are loaded even when every sample is in the store);
* ``ratio=<test FLOPs of the cheapest all-cascade policy whose dev accuracy reaches that
  of Qwen alone with one sample per input / test FLOPs of Qwen alone>`` (and the same
  against Qwen's most accurate votes, when a cascade reaches them).

Engines (loaded together, ~9.5 GiB) under ``flock /tmp/jointopt-engine.lock``:

    .venv/bin/python benchmarks/model_tiers.py [--scripted] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEVELS = (0.6, 0.7, 0.8, 0.9)
CASCADES = [dict(n=n, threshold=t, escalate_n=e, escalate_to="qwen")
            for n in (1, 2, 3, 4) for t in (0.5, 0.75, 1.0) for e in (1, 2, 3, 4)]


def options(labels):
    """(family tag, model, strategy, params) of every per-bin option scored."""
    out = [("alone", m, "single", {}) for m in labels]
    out += [("alone", m, "majority", {"n": n}) for m in labels for n in range(2, 7)]
    out += [("cascade", labels[0], "cascade", c) for c in CASCADES]
    return out


def score(plan, router, costs, option, task):
    """Per-bin (correct, cost) lists of one option applied to every bin of ``task``."""
    from jointopt.core.policy import Allocation, Policy
    from jointopt.evaluation.evaluate import evaluate
    from jointopt.search.plan import bank_pool_size

    _, model, strategy, params = option
    alloc = Allocation(strategy, 0.7, 16, params, model=model)
    prompt = plan.space.prompts[0]
    bins = {b: alloc for b in plan.space.difficulty.bins}
    policy = Policy(model=plan.model, prompt=prompt, bins=bins, difficulty=plan.space.difficulty)
    result = evaluate(policy, task, router, seed=plan.config.seed,
                      pool_size=bank_pool_size(plan), costs=costs)
    per_bin = {}
    for r in result.records:
        per_bin.setdefault(r.bin, ([], []))
        per_bin[r.bin][0].append(r.correct)
        per_bin[r.bin][1].append(r.cost)
    return per_bin


def front(rows):
    """Dev-Pareto rows (dev accuracy up, dev cost down); rows are (option, dev, test)."""
    rows = sorted(rows, key=lambda r: (sum(r[1][1]), -sum(r[1][0])))
    kept, best = [], -1.0
    for row in rows:
        if sum(row[1][0]) > best + 1e-12:
            kept.append(row)
            best = sum(row[1][0])
    return kept


def combos(per_bin_rows):
    """Every choice of one dev-Pareto option per bin: (options, dev, test) lists joined."""
    bins = sorted(per_bin_rows)
    for choice in itertools.product(*(front(per_bin_rows[b]) for b in bins)):
        dev = ([x for c in choice for x in c[1][0]], [x for c in choice for x in c[1][1]])
        test = ([x for c in choice for x in c[2][0]], [x for c in choice for x in c[2][1]])
        yield dict(zip(bins, (c[0] for c in choice))), dev, test


def mean(xs):
    return sum(xs) / len(xs)


def describe(choice):
    parts = []
    for b, (_, model, strategy, params) in sorted(choice.items()):
        p = ",".join(f"{k}={v}" for k, v in params.items() if k != "escalate_to")
        parts.append(f"[{b}] {model}:{strategy}({p})")
    return " ".join(parts)


def line(label, choice, test, validation):
    from jointopt.evaluation.stats import bootstrap

    opts = dict(resamples=validation.resamples, level=validation.level, seed=0)
    acc, cost = bootstrap(test[0], **opts), bootstrap([c / 1e9 for c in test[1]], **opts)
    return (f"{label:<22} test acc {acc.value:.3f} [{acc.low:.3f}, {acc.high:.3f}]  "
            f"GFLOPs {cost.value:7.1f} [{cost.low:.1f}, {cost.high:.1f}]  {describe(choice)}")


def scripted_models():
    """The two embedded models' names and sizes, answered by scripted responders."""
    return [{"name": "smollm2", "model": "smollm2-135m-instruct", "backend": "scripted",
             "engine": {"responder": "jointopt.testing.tiers:small", "model_id": "smol"}},
            {"name": "qwen", "model": "qwen2.5-coder-0.5b-instruct", "backend": "scripted",
             "engine": {"responder": "jointopt.testing.tiers:large", "model_id": "qwen"}}]


def run_study_part(config):
    from jointopt.search.study import run_study

    start = time.perf_counter()
    result = run_study(config)
    print(f"study: {len(result.trials)} trials in {time.perf_counter() - start:.0f} s; "
          "Pareto front (dev objective: mean FLOPs), held-out:")
    for t in result.pareto:
        acc, cost = t.test["accuracy"], t.test["mean_cost"]
        models = {b: a.model for b, a in t.policy.bins.items()}
        print(f"  #{t.number:<3} test acc {acc.value:.3f} [{acc.low:.3f}, {acc.high:.3f}]  "
              f"GFLOPs {cost.value / 1e9:7.1f}  tokens {t.test['mean_tokens'].value:6.1f}  "
              f"models {models}  {t.policy.describe()}")
    return result


def analysis(plan):
    from jointopt.backends import SampleStore
    from jointopt.backends.router import ModelRouter
    from jointopt.search.multi_model import engine_factories, model_labels, study_costs
    from jointopt.search.objective import build_backend

    labels = model_labels(plan.config)
    costs = study_costs(plan.config)
    store = SampleStore(plan.out_dir / "samples.sqlite")

    def timed(name, make):
        def build():
            start = time.perf_counter()
            engine = make()
            inner = getattr(engine, "inner", engine)
            getattr(inner, "llm", None)  # vLLM: the engine loads here if not yet
            print(f"engine {name}: loaded in {time.perf_counter() - start:.0f} s")
            return engine
        return build

    factories = engine_factories(plan.config, build_backend, store)
    router = ModelRouter({k: timed(k, f) for k, f in factories.items()}, labels[0])
    rows: dict[str, list] = {}
    try:
        for option in options(labels):
            dev = score(plan, router, costs, option, plan.task)
            test = score(plan, router, costs, option, plan.test_task)
            for b in dev:
                rows.setdefault(b, []).append((option, dev[b], test[b]))
        load_engines(router, labels)
    finally:
        router.close()
        store.close()
    return labels, rows


def load_engines(router, labels):
    """Build every model's engine (a study whose samples are all in the store needs
    none) and print the memory they take together."""
    for name in labels:
        router.engine(name)
    print(f"memory with engines {sorted(router.engines)} loaded: {memory()}")


def memory():
    """PSS (shared pages split) of this process and its children, GiB."""
    import psutil

    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except psutil.Error:
            continue
    return f"{total / 2**30:.1f} GiB PSS (this process and the engine processes)"


def report(plan, labels, rows):
    from jointopt.evaluation.stats import bootstrap

    validation = plan.config.validation
    print("\nper bin, held-out: the small model's best vote vs the large model's one sample")
    for b in sorted(rows):
        small = [r for r in rows[b] if r[0][0] == "alone" and r[0][1] == labels[0]]
        best = max(small, key=lambda r: (mean(r[1][0]), -mean(r[1][1])))  # chosen on dev
        large = next(r for r in rows[b] if r[0][1] == labels[1] and r[0][2] == "single")
        for tag, row in ((f"{labels[0]} best", best), (f"{labels[1]} single", large)):
            acc = bootstrap(row[2][0], resamples=validation.resamples, seed=0)
            print(f"  bin {b} {tag:<16} {row[0][2]}{row[0][3] or ''}: test acc {acc}  "
                  f"GFLOPs {mean(row[2][1]) / 1e9:.1f}")
    families = {
        f"{labels[0]} alone": lambda o: o[0] == "alone" and o[1] == labels[0],
        f"{labels[1]} alone": lambda o: o[0] == "alone" and o[1] == labels[1],
        "model per bin": lambda o: o[0] == "alone",
        "cascade every bin": lambda o: o[0] == "cascade",
        "per bin + cascades": lambda o: True,
    }
    found = {}
    for name, keep in families.items():
        fam = {b: [r for r in rs if keep(r[0])] for b, rs in rows.items()}
        found[name] = list(combos(fam))
    print("\ncheapest policy (chosen on dev) reaching each dev accuracy, held-out:")
    for level in LEVELS:
        print(f" dev accuracy >= {level}:")
        for name, cands in found.items():
            ok = [c for c in cands if mean(c[1][0]) >= level - 1e-9]
            if not ok:
                print(f"  {name:<22} none reaches it")
                continue
            choice, _, test = min(ok, key=lambda c: mean(c[1][1]))
            print("  " + line(name, choice, test, validation))
    alone = found[f"{labels[1]} alone"]
    single = next(c for c in alone if all(o[2] == "single" for o in c[0].values()))
    best = max(alone, key=lambda c: (mean(c[1][0]), -mean(c[1][1])))
    ratio = float("nan")
    for name, ref in (("one sample", single), ("its most accurate votes", best)):
        print(f"\n{labels[1]} alone, {name}, and the cheapest all-cascade policy reaching "
              "its dev accuracy:")
        print("  " + line(f"{labels[1]} alone", ref[0], ref[2], validation))
        ok = [c for c in found["cascade every bin"]
              if mean(c[1][0]) >= mean(ref[1][0]) - 1e-9]
        if not ok:
            print("  no cascade policy reaches it on dev")
            continue
        casc = min(ok, key=lambda c: mean(c[1][1]))
        print("  " + line("cascade every bin", casc[0], casc[2], validation))
        print(f"  test FLOPs ratio {mean(casc[2][1]) / mean(ref[2][1]):.3f}")
        if ref is single:
            ratio = mean(casc[2][1]) / mean(ref[2][1])
    print(f"ratio={ratio:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scripted", action="store_true", help="offline smoke run")
    parser.add_argument("--output-dir", default="runs/model_tiers")
    parser.add_argument("--trials", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    logging.basicConfig(level=logging.WARNING)

    from jointopt.search.config import load_config
    from jointopt.search.plan import plan_study

    overrides = {"output_dir": args.output_dir}
    if args.scripted:
        overrides["models"] = scripted_models()
    if args.trials:
        overrides["optimizer"] = {"n_trials": args.trials}
    config = load_config(ROOT / "experiments/model_tiers.yaml", overrides)
    run_study_part(config)
    plan = plan_study(config)
    start = time.perf_counter()
    labels, rows = analysis(plan)
    print(f"\n{len(options(labels))} per-bin options scored on dev and test in "
          f"{time.perf_counter() - start:.0f} s")
    report(plan, labels, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
