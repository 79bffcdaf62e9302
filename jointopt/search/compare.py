"""Strategy curves: accuracy against tokens for several strategies with one prompt.

``jointopt compare CONFIG`` evaluates, for each strategy in the config's ``compare``
section, a ladder of budgets (its parameter settings) on the same examples, prompt,
temperature and max_tokens, and logs one accuracy-vs-tokens curve per strategy to MLflow
(one nested run per strategy, every point a step) with a single plot of all curves. At
equal token spend the curves show which strategy buys the most accuracy.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jointopt.backends import Backend, CachedBackend, SampleStore
from jointopt.search.config import StudyConfig
from jointopt.errors import ConfigError, JointoptError
from jointopt.evaluation.evaluate import evaluate
from jointopt.core.policy import Allocation, Policy
from jointopt.strategies import make_strategy
from jointopt.search.plan import StudyPlan, bank_pool_size, plan_study
from jointopt.search.objective import build_backend
from jointopt.evaluation.stats import Interval, objective_intervals

__all__ = ["CurvePoint", "CompareResult", "compare_strategies", "plot_curves"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurvePoint:
    """One budget setting of one strategy, scored."""

    strategy: str
    params: dict[str, Any]
    accuracy: Interval
    mean_tokens: Interval
    generated: int
    wall_time: float


@dataclass(frozen=True)
class CompareResult:
    """All curves, in config order."""

    points: tuple[CurvePoint, ...]
    out_dir: Path
    mlflow_run_id: str | None = None

    def curve(self, strategy: str) -> list[CurvePoint]:
        return [p for p in self.points if p.strategy == strategy]


def _policies(plan: StudyPlan) -> list[Policy]:
    cmp = plan.config.compare
    if cmp is None:
        raise ConfigError("the config has no `compare` section", where="compare",
                          fix="add compare: {prompt: <id>, curves: {majority: [{n: 2}]}}")
    ids = [p.id for p in plan.space.prompts]
    if cmp.prompt not in ids:
        raise ConfigError("unknown prompt id", where="compare.prompt", value=cmp.prompt,
                          fix=f"choose one of the search space's prompts: {', '.join(ids)}")
    prompt = plan.space.prompt(cmp.prompt)
    policies = []
    for name, settings in cmp.curves.items():
        for i, params in enumerate(settings):
            try:
                make_strategy(name, params, where="strategy").check_task(plan.task)
            except JointoptError as exc:
                param = exc.where.rsplit(".", 1)[-1] if exc.where and "." in exc.where else ""
                raise ConfigError(
                    exc.message, where=f"compare.curves.{name}[{i}]" + (f".{param}" if param else ""),
                    **({"value": exc.value} if exc.has_value else {}), fix=exc.fix) from None
            policies.append(Policy(
                model=plan.model, prompt=prompt,
                bins={"all": Allocation(name, cmp.temperature, cmp.max_tokens, params)}))
    return policies


def compare_strategies(
    config: StudyConfig,
    *,
    backend: Backend | None = None,
    on_point: Callable[[CurvePoint, int, int], None] | None = None,
) -> CompareResult:
    """Score every curve point of ``config.compare``; validates everything first."""
    from jointopt.search.preflight import preflight

    plan = plan_study(config)
    policies = _policies(plan)
    preflight(plan, model=backend is None, storage=False)  # before anything is written
    out = plan.out_dir / "compare"
    out.mkdir(parents=True, exist_ok=True)
    pool_size = bank_pool_size(plan)
    engine = backend or build_backend(config)
    wrapped: Backend = engine
    if config.cache:
        wrapped = CachedBackend(engine, SampleStore(plan.out_dir / "samples.sqlite"))
    points = []
    try:
        for i, policy in enumerate(policies):
            alloc = policy.bins["all"]
            result = evaluate(policy, plan.task, wrapped, seed=config.seed, pool_size=pool_size)
            point = CurvePoint(
                strategy=alloc.strategy, params=dict(alloc.params),
                **objective_intervals(result.records, config.validation),
                generated=result.generated, wall_time=result.wall_time,
            )
            points.append(point)
            log.info("%s %s: accuracy %s, tokens %s", point.strategy, point.params,
                     point.accuracy, point.mean_tokens)
            if on_point:
                on_point(point, i + 1, len(policies))
    finally:
        if backend is None:
            engine.close()
        elif isinstance(wrapped, CachedBackend):
            wrapped.store.close()
    result = CompareResult(tuple(points), out)
    _write_csv(result, out / "curves.csv")
    plot_curves(result, out / "strategy_curves.png")
    run_id = _track(plan, result) if config.tracking.enabled else None
    return CompareResult(result.points, out, run_id)


def _write_csv(result: CompareResult, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["strategy", "params", "accuracy", "accuracy_low", "accuracy_high",
                         "mean_tokens", "tokens_low", "tokens_high", "completions_generated",
                         "wall_time_s"])
        for p in result.points:
            writer.writerow([p.strategy, p.params, f"{p.accuracy.value:.4f}",
                             f"{p.accuracy.low:.4f}", f"{p.accuracy.high:.4f}",
                             f"{p.mean_tokens.value:.2f}", f"{p.mean_tokens.low:.2f}",
                             f"{p.mean_tokens.high:.2f}", p.generated, f"{p.wall_time:.2f}"])


def plot_curves(result: CompareResult, path: Path) -> Path:
    """One accuracy-vs-tokens line per strategy, with accuracy intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    strategies = list(dict.fromkeys(p.strategy for p in result.points))
    for name in strategies:
        pts = sorted(result.curve(name), key=lambda p: p.mean_tokens.value)
        x = [p.mean_tokens.value for p in pts]
        y = [p.accuracy.value for p in pts]
        err = [[p.accuracy.value - p.accuracy.low for p in pts],
               [p.accuracy.high - p.accuracy.value for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", markersize=4, capsize=2, linewidth=1.3,
                    elinewidth=0.6, alpha=0.9, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("mean tokens per example (prompt + completion, log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title("strategies at matched token budgets")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _track(plan: StudyPlan, result: CompareResult) -> str:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    config = plan.config
    out = plan.out_dir.resolve()
    uri = config.tracking.tracking_uri or f"sqlite:///{(out / 'mlflow.db').as_posix()}"
    client = MlflowClient(tracking_uri=uri)
    name = config.tracking.experiment or config.name
    experiment = client.get_experiment_by_name(name)
    experiment_id = (experiment.experiment_id if experiment else client.create_experiment(
        name, artifact_location=(out / "mlartifacts").as_uri()))
    parent = client.create_run(experiment_id, run_name=f"{config.name}-compare", tags={
        "jointopt.role": "compare", "jointopt.search.study": config.name}).info.run_id
    cmp = config.compare
    client.log_batch(parent, params=[
        Param("prompt", cmp.prompt), Param("temperature", str(cmp.temperature)),
        Param("max_tokens", str(cmp.max_tokens)), Param("task", plan.task.name),
        Param("n_examples", str(len(plan.task.examples))), Param("model", plan.model)])
    now = int(time.time() * 1000)
    for name_ in dict.fromkeys(p.strategy for p in result.points):
        run = client.create_run(experiment_id, run_name=name_, tags={
            "mlflow.parentRunId": parent, "jointopt.role": "curve"}).info.run_id
        metrics = []
        for step, p in enumerate(result.curve(name_)):
            metrics += [Metric("accuracy", p.accuracy.value, now, step),
                        Metric("mean_tokens", p.mean_tokens.value, now, step),
                        Metric("accuracy_low", p.accuracy.low, now, step),
                        Metric("accuracy_high", p.accuracy.high, now, step)]
        client.log_batch(run, metrics=metrics, params=[Param("strategy", name_)])
        client.log_text(run, "\n".join(str(p.params) for p in result.curve(name_)),
                        "settings.txt")
        client.set_terminated(run)
    client.log_artifact(parent, str(result.out_dir / "strategy_curves.png"))
    client.log_artifact(parent, str(result.out_dir / "curves.csv"))
    client.set_terminated(parent)
    return parent
