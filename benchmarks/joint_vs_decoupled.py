"""Joint search against the decoupled recipe (prompt at n=1 first, strategy second).

Both approaches get the same trial count in total, the same examples, split and sample
store. Their Pareto fronts are re-scored on the test split; for a ladder of token
budgets the table shows the best test accuracy each approach reaches within the budget.

    .venv/bin/python benchmarks/joint_vs_decoupled.py [--scripted]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _best_within(front, budget):
    inside = [t for t in front if t.test["mean_tokens"].value <= budget]
    return max(inside, key=lambda t: t.test["accuracy"].value) if inside else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scripted", action="store_true", help="offline smoke run")
    parser.add_argument("--output-dir", default="runs/joint_vs_decoupled")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    logging.basicConfig(level=logging.WARNING)

    from jointopt.backends import make_backend
    from jointopt.search.config import load_config
    from jointopt.search.study import run_study

    config_path = ROOT / "experiments/joint_vs_decoupled.yaml"
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    joint_cfg = load_config(config_path, {"output_dir": str(out)})
    total = joint_cfg.optimizer.n_trials
    space = yaml.safe_load((ROOT / "search_spaces/joint.yaml").read_text())

    stage1_space = dict(space, strategies={"single": {}})
    (out / "stage1.yaml").write_text(yaml.safe_dump(stage1_space))
    stage1_trials = max(len(space["prompts"]) * 2, total // 4)
    stage1_cfg = load_config(config_path, {
        "output_dir": str(out), "name": "decoupled_prompt",
        "search_space": str(out / "stage1.yaml"), "optimizer": {"n_trials": stage1_trials}})

    if args.scripted:
        sys.path.insert(0, str(ROOT / "tests"))
        from jointopt.backends import ScriptedBackend
        from jointopt.testing import noisy_responder

        engine = ScriptedBackend(noisy_responder(0.5))
    else:
        engine = make_backend("vllm", model=joint_cfg.model.model, seed=joint_cfg.model.seed)
    try:
        stage1 = run_study(stage1_cfg, backend=engine)
        chosen = max(stage1.trials, key=lambda t: (t.accuracy, -t.mean_tokens)).policy.prompt
        print(f"decoupled stage 1: prompt {chosen.id!r} is best at one sample "
              f"({stage1_trials} trials)")
        stage2_space = dict(space, prompts=[p for p in space["prompts"] if p["id"] == chosen.id])
        (out / "stage2.yaml").write_text(yaml.safe_dump(stage2_space))
        stage2_cfg = load_config(config_path, {
            "output_dir": str(out), "name": "decoupled_strategy",
            "search_space": str(out / "stage2.yaml"),
            "optimizer": {"n_trials": total - stage1_trials}})
        decoupled = run_study(stage2_cfg, backend=engine)
        joint = run_study(joint_cfg, backend=engine)
    finally:
        engine.close()

    for label, result in (("decoupled", decoupled), ("joint", joint)):
        print(f"{label} Pareto front on test:")
        for t in result.pareto:
            print(f"  #{t.number:<3} test acc {t.test['accuracy']} tokens "
                  f"{t.test['mean_tokens'].value:7.1f}  {t.policy.prompt.id} "
                  f"{t.policy.describe()}")
    budgets = sorted({round(t.test["mean_tokens"].value) for r in (decoupled, joint)
                      for t in r.pareto})
    print(f"{'budget':>7} | {'decoupled test acc [95% CI]':>30} | {'joint test acc [95% CI]':>30}")
    for budget in budgets:
        cells = []
        for result in (decoupled, joint):
            best = _best_within(result.pareto, budget + 0.5)
            cells.append(f"{best.test['accuracy']} {best.policy.prompt.id[:8]}" if best else "-")
        print(f"{budget:>7} | {cells[0]:>30} | {cells[1]:>30}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
