"""Accuracy against thinking budget per difficulty level, and the tokens the best per-level
thinking policy needs to match the best uniform one on held-out data.

Reads experiments/thinking_budget.yaml (model, task) and its search space (prompt, answer
cap, budgets). Every budget is evaluated with a one-sample policy on the dev and the test
half of the task, through a sample store in the output folder: the first run records the
generations (its time is printed), a rerun replays them and generates nothing (budget
forcing, the default; the store keeps no thoughts of vLLM's own budget, so ``--engine
vllm``/``auto`` generate every run). Budgets are evaluated largest first: with forcing,
each smaller budget's thoughts are cut from the largest one's (exact, see
``jointopt.strategies.thinking``) and only the answers after cut thoughts are generated;
the completion tokens generated and reused are printed. Per level
it prints accuracy with a 95% bootstrap interval, thinking and total tokens, and whether
the curve saturates or turns down. The uniform policy is the budget with the best dev
accuracy; the per-level policy is the cheapest combination of per-level budgets (on dev)
whose dev accuracy is at least the uniform one's; the ratio is their test tokens
(per-level / uniform), with both test accuracies shown (Snell et al.'s anchor: 0.25).

    .venv/bin/python benchmarks/thinking_curve.py [--scripted] [--engine auto|vllm|forcing]
        [--budgets 0,32,64,128] [--family letter_count --levels 1,2,3]
        [--output-dir runs/thinking_curve] [--model qwen2.5-coder-0.5b-instruct]
        [--n-per-level 48]
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


def _per_level(records) -> dict[str, list]:
    levels: dict[str, list] = {}
    for r in records:
        levels.setdefault(r.bin, []).append(r)
    return dict(sorted(levels.items()))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / max(len(values), 1)


def _combo(levels: dict[str, dict[int, list]], choice: dict[str, int]) -> tuple[float, float]:
    """Accuracy and mean tokens of the policy giving each level its chosen budget."""
    records = [r for level, budget in choice.items() for r in levels[level][budget]]
    return _mean(r.correct for r in records), _mean(r.tokens for r in records)


def _curve(name: str, per_budget: dict[int, object]) -> dict[str, dict[int, list]]:
    from jointopt.evaluation.stats import bootstrap

    levels: dict[str, dict[int, list]] = {}
    for budget, result in sorted(per_budget.items()):
        for level, records in _per_level(result.records).items():
            levels.setdefault(level, {})[budget] = records
    print(f"\n{name}: accuracy [95% CI] / thinking tokens / tokens per example")
    for level, by_budget in levels.items():
        cells = []
        for budget, records in by_budget.items():
            acc = bootstrap([r.correct for r in records], resamples=1000)
            cells.append(f"B={budget:<4} {acc} think {_mean(r.thinking_tokens for r in records):5.1f}"
                         f" tok {_mean(r.tokens for r in records):6.1f}")
        accs = {b: _mean(r.correct for r in rs) for b, rs in by_budget.items()}
        best = max(accs, key=lambda b: (accs[b], -b))
        largest = max(accs)
        shape = ("flat" if max(accs.values()) == min(accs.values())
                 else "turns down" if accs[largest] < accs[best] - 1e-9
                 else "saturates" if best != largest else "still rising at the largest budget")
        print(f"  level {level} ({shape}; best budget {best}):")
        for cell in cells:
            print(f"    {cell}")
    return levels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scripted", action="store_true", help="offline smoke run")
    parser.add_argument("--engine", choices=["auto", "vllm", "forcing"], default="forcing",
                        help="forcing (default) is replayed from the sample store; the "
                             "engine's own budget (vllm, auto) is generated every run")
    parser.add_argument("--budgets", default=None, help="comma-separated; default: the space's")
    parser.add_argument("--output-dir", default="runs/thinking_curve")
    parser.add_argument("--model", default=None,
                        help="model instead of the config's (e.g. qwen2.5-coder-0.5b-instruct)")
    parser.add_argument("--family", default=None, help="task family instead of the config's")
    parser.add_argument("--levels", default=None, help="comma-separated levels (with --family)")
    parser.add_argument("--n-per-level", type=int, default=None,
                        help="examples per level before the dev/test split (default: the "
                             "config's task.builtin.n_per_level)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    logging.basicConfig(level=logging.WARNING)

    from jointopt.backends.cached import CachedBackend, SampleStore
    from jointopt.core.policy import Allocation, DifficultySpec, Policy
    from jointopt.core.prompts import PromptTemplate
    from jointopt.evaluation.evaluate import evaluate
    from jointopt.evaluation.stats import split_task
    from jointopt.search.config import load_config
    from jointopt.search.space_config import load_space_file
    from jointopt.tasks import make_task

    config_path = ROOT / "experiments/thinking_budget.yaml"
    overrides: dict = {"output_dir": args.output_dir}
    if args.model:
        overrides["model"] = {"model": args.model}
    config = load_config(config_path, overrides)
    space = load_space_file(config_path.parent / config.search_space)
    builtin = config.task.builtin
    family = args.family or builtin.family
    levels = (tuple(int(v) for v in args.levels.split(",")) if args.levels
              else None if args.family else tuple(builtin.levels))
    task = make_task(family, levels=levels, n_per_level=args.n_per_level or builtin.n_per_level,
                     seed=builtin.seed, n_demos=0)
    split = split_task(task, config.validation.test_fraction or 0.5, seed=0)
    budgets = ([int(b) for b in args.budgets.split(",")] if args.budgets
               else [int(b) for b in space.thinking_budget["choices"]])
    prompt = PromptTemplate(**space.prompts[0].model_dump())
    answer_cap = int(space.max_tokens)
    settings = (space.thinking.model_dump() if space.thinking else {})
    settings["engine"] = args.engine
    out = Path(args.output_dir)
    if args.scripted:
        from jointopt.backends import ScriptedBackend
        from jointopt.testing.thinking import thinking_responder

        engine = ScriptedBackend(thinking_responder)
        out = out / "scripted"
    else:
        from jointopt.backends.vllm import VLLMBackend

        engine = VLLMBackend(config.model.model, seed=config.model.seed,
                             max_model_len=config.model.max_model_len or 1024,
                             engine_kwargs=dict(config.model.engine))
    backend = CachedBackend(engine, SampleStore(out / "samples.sqlite"), share_caps=True)
    bins = tuple(sorted({e.difficulty for e in task.examples}))
    difficulty = DifficultySpec(source="label", bins=bins, default_bin=bins[-1])
    print(f"task {family} levels {list(bins)}: {len(split.dev.examples)} dev, "
          f"{len(split.test.examples)} test; budgets {budgets}; engine {args.engine} "
          f"({'scripted' if args.scripted else config.model.model}); answer cap {answer_cap}")
    results: dict[str, dict[int, object]] = {"dev": {}, "test": {}}
    started = time.perf_counter()
    try:
        for budget in sorted(budgets, reverse=True):  # smaller budgets cut the larger's
            policy = Policy(model=config.model.model, prompt=prompt, difficulty=difficulty,
                            bins={b: Allocation("single", float(space.temperature), answer_cap,
                                                thinking={**settings, "budget": budget})
                                  for b in bins})
            for name, part in (("dev", split.dev), ("test", split.test)):
                results[name][budget] = evaluate(policy, part, backend, seed=0)
    finally:
        backend.close()
    generated = backend.generated
    print(f"generation: {time.perf_counter() - started:.1f} s for {generated} completions "
          f"generated, {backend.hits} replayed from {out / 'samples.sqlite'}")
    for budget in sorted(budgets, reverse=True):
        made = sum(results[p][budget].tokens_generated for p in results)
        reused = sum(results[p][budget].tokens_reused for p in results)
        print(f"  budget {budget:<4} completion tokens: {made} generated, {reused} reused")
    dev = _curve("dev", results["dev"])
    test = _curve("test (held out)", results["test"])

    uniform_acc = {b: _mean(r.correct for r in results["dev"][b].records) for b in budgets}
    best_uniform = max(budgets, key=lambda b: (uniform_acc[b], -b))
    u_dev = _combo(dev, {level: best_uniform for level in dev})
    u_test = _combo(test, {level: best_uniform for level in test})
    combos = [dict(zip(dev, c)) for c in itertools.product(budgets, repeat=len(dev))]
    matching = [c for c in combos if _combo(dev, c)[0] >= u_dev[0] - 1e-9]
    chosen = min(matching, key=lambda c: (_combo(dev, c)[1], -_combo(dev, c)[0]))
    p_test = _combo(test, chosen)
    print(f"\nuniform budget {best_uniform}: dev acc {u_dev[0]:.3f} tokens {u_dev[1]:.1f}; "
          f"test acc {u_test[0]:.3f} tokens {u_test[1]:.1f}")
    print(f"per-level budgets {chosen}: dev acc {_combo(dev, chosen)[0]:.3f} tokens "
          f"{_combo(dev, chosen)[1]:.1f}; test acc {p_test[0]:.3f} tokens {p_test[1]:.1f}"
          + ("" if p_test[0] >= u_test[0] - 1e-9 else "  (below the uniform policy on test)"))
    if u_test[0] == 0:
        print("the uniform policy answers nothing right on test: the ratio says nothing here")
    print(f"ratio={p_test[1] / u_test[1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
