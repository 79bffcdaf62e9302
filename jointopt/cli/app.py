"""jointopt command line: a thin layer over the Python API.

Commands:
  run CONFIG        run (or continue) a study; progress bar, then the Pareto table
                    (--workers N: N worker processes on this machine)
  worker CONFIG     join a study that other processes or machines work on (shared storage)
  validate CONFIG   check config, search space, data, templates, strategy parameters and
                    model without starting any engine
  compare CONFIG    accuracy-vs-tokens curves of several strategies at matched budgets
  record CONFIG     write a sample bank to run studies offline from
  bank import TABLE bring recorded generations in (also: bank convert, bank info)
  export CONFIG     write a tuned policy and serving-stack configs from a study
  certify CONFIG    the cheapest policy that meets an accuracy target at a stated risk
  serve             OpenAI-compatible proxy that runs a policy against an upstream server
  models            prepare or list the embedded models
  report RUN_DIR    write a study's interactive HTML report
  dashboard RUN_DIR optuna-dashboard and the MLflow UI on a study, on 127.0.0.1
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from jointopt.search.logs import setup_logging
from jointopt.errors import ConfigError, JointoptError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jointopt", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v: jointopt info, -vv: debug and engine logs)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or continue a study")
    run.add_argument("config", help="study YAML file")
    run.add_argument("--n-trials", type=int, help="complete trials the study should hold")
    run.add_argument("--storage", help="Optuna storage URL (default: SQLite in the output dir)")
    run.add_argument("--output-dir", help="where storage, cache and reports go")
    run.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    run.add_argument("--workers", type=_workers, help="worker processes on this machine, each "
                                                      "with its own engine (default 1)")
    work = sub.add_parser(
        "worker", help="join a study that other processes or machines work on",
        description="Run trials of the study in the config's storage until it holds "
                    "n_trials complete trials, together with every other worker of the same "
                    "storage and study name (PostgreSQL or a journal file for several "
                    "machines). Trials of dead workers are failed and retried.")
    work.add_argument("config", help="study YAML file")
    work.add_argument("--storage", help="Optuna storage URL shared by the workers "
                                        "(postgresql+psycopg2://..., journal:///abs/file.log)")
    work.add_argument("--n-trials", type=int, help="complete trials the study should hold")
    work.add_argument("--output-dir", help="where the sample cache and reports go")
    work.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    val = sub.add_parser("validate", help="check a study config without running anything")
    val.add_argument("config", help="study YAML file")
    from jointopt.cli.export import add_export_parser, add_serve_parser

    add_export_parser(sub)
    add_serve_parser(sub)
    from jointopt.cli.record import add_record_parser

    add_record_parser(sub)
    from jointopt.cli.bank import add_bank_parser

    add_bank_parser(sub)
    from jointopt.cli.models import add_models_parser

    add_models_parser(sub)
    from jointopt.cli.certify import add_certify_parser

    add_certify_parser(sub)
    from jointopt.cli.dashboard import add_dashboard_parser
    from jointopt.cli.report import add_report_parser

    add_report_parser(sub)
    add_dashboard_parser(sub)
    cmp = sub.add_parser("compare", help="accuracy-vs-tokens curves of several strategies "
                                         "(the config's compare section)")
    cmp.add_argument("config", help="study YAML file with a `compare` section")
    cmp.add_argument("--output-dir", help="where cache and reports go")
    cmp.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    return parser


def _workers(text: str) -> int:
    from jointopt.cli.export import _positive_int

    return _positive_int(text)


def _overrides(args: argparse.Namespace) -> dict:
    n_trials = getattr(args, "n_trials", None)
    if n_trials is not None and n_trials < 1:
        raise ConfigError("must be >= 1 (the number of complete trials the study should "
                          "hold)", where="--n-trials", value=n_trials,
                          fix="pass a positive number, e.g. --n-trials 20, or leave the flag "
                              "out to use optimizer.n_trials of the config")
    out: dict = {}
    if getattr(args, "storage", None):
        out["optimizer"] = {"storage": args.storage}
    if getattr(args, "n_trials", None) is not None:
        out.setdefault("optimizer", {})["n_trials"] = args.n_trials
    if getattr(args, "output_dir", None):
        out["output_dir"] = args.output_dir
    if getattr(args, "no_tracking", False):
        out["tracking"] = {"enabled": False}
    if getattr(args, "workers", None) is not None:
        out.setdefault("optimizer", {})["workers"] = args.workers
    return out


_FLAGS = {"storage": ("optimizer.storage", "--storage"),
          "output_dir": ("output_dir", "--output-dir")}


def _preflight(plan: object, args: argparse.Namespace) -> None:
    """:func:`jointopt.search.preflight.preflight`, naming the CLI flag of a value given by flag."""
    from jointopt.search.preflight import preflight

    sources = {field: flag for attr, (field, flag) in _FLAGS.items() if getattr(args, attr, None)}
    preflight(plan, sources=sources)  # type: ignore[arg-type]




def _compare(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from jointopt.search.compare import compare_strategies
    from jointopt.search.config import load_config

    console = Console()
    config = load_config(args.config, _overrides(args))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[last]}"), console=console)
    with progress:
        bar = progress.add_task("curve points", total=None, last="")

        def on_point(point, done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total,
                            last=f"{point.strategy} {point.params}")

        result = compare_strategies(config, on_point=on_point)
    table = Table(title=f"strategies at matched budgets ({config.name})")
    for col in ("strategy", "params", "accuracy [CI]", "mean tokens"):
        table.add_column(col)
    for p in result.points:
        table.add_row(p.strategy, ", ".join(f"{k}={v}" for k, v in p.params.items()),
                      str(p.accuracy), f"{p.mean_tokens.value:.1f}")
    console.print(table)
    console.print(f"plot and table: {result.out_dir}/ (strategy_curves.png, curves.csv)")
    if result.mlflow_run_id:
        console.print(f"MLflow run {result.mlflow_run_id}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from jointopt.search.config import load_config
    from jointopt.safety.secrets import safe_url
    from jointopt.search.plan_checks import check_credentials
    from jointopt.search.plan import plan_study

    config = load_config(args.config, _overrides(args))
    plan = plan_study(config)
    check_credentials(config)
    _preflight(plan, args)
    console = Console()
    console.print(f"[green]ok[/green] {args.config}: task {plan.task.name!r} "
                  f"({len(plan.task.examples)} examples, fields {', '.join(plan.task.fields)}), "
                  f"{len(plan.space.prompts)} prompts, strategies "
                  f"{', '.join(plan.space.strategies)}, model {plan.model!r}, "
                  f"storage {safe_url(plan.storage)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from jointopt.search.config import load_config
    from jointopt.safety.secrets import safe_url
    from jointopt.search.results import TrialSummary
    from jointopt.search.plan_checks import check_credentials
    from jointopt.search.study import join_study, run_study
    from jointopt.search.plan import plan_study

    console = Console()
    config = load_config(args.config, _overrides(args))
    plan = plan_study(config)  # fail on bad input before the engine loads
    check_credentials(config)
    _preflight(plan, args)  # storage, MLflow, output folder, model: before anything is written
    worker = args.command == "worker"
    workers = config.optimizer.workers
    console.print(f"study [bold]{plan.study_name}[/bold]: {len(plan.task.examples)} examples of "
                  f"{plan.task.name}, {len(plan.space.prompts)} prompts x "
                  f"{len(plan.space.strategies)} strategies, model {plan.model}"
                  + (f", {workers} workers" if workers > 1 and not worker else "")
                  + (f" (worker pid {os.getpid()}, storage {safe_url(plan.storage)})"
                     if worker else ""))
    from jointopt.cli.progress import StudyProgress

    total = args.n_trials or config.optimizer.n_trials
    ran = {"trials": 0, "generated": 0, "cached": 0, "tokens": 0, "reused": 0}
    with StudyProgress(console, total, verbose=args.verbose > 0) as progress:

        def on_trial(summary: TrialSummary, done: int, total: int) -> None:
            ran["trials"] += 1
            for key, value in (("generated", summary.generated), ("cached", summary.cached),
                               ("tokens", summary.tokens_generated),
                               ("reused", summary.tokens_reused)):
                ran[key] += int(value or 0)
            progress.trial(summary, done, total)

        if worker:
            result = join_study(config, n_trials=args.n_trials, on_trial=on_trial,
                                on_engine_ready=progress.engine_ready)
        else:
            result = run_study(config, n_trials=args.n_trials, on_trial=on_trial,
                               on_engine_ready=progress.engine_ready)
    table = Table(title=f"Pareto front of {result.study_name} "
                        f"({len(result.trials)} complete trials)")
    for col in ("trial", "accuracy", "mean tokens", "prompt", "allocation"):
        table.add_column(col)
    for t in result.pareto:
        table.add_row(str(t.number), f"{t.accuracy:.3f}", f"{t.mean_tokens:.1f}",
                      t.policy.prompt.id if t.policy else "",
                      t.policy.describe() if t.policy else "")
    console.print(table)
    _print_totals(console, config, ran)
    if result.extra.get("reports_written", True):
        console.print(f"reports: {result.out_dir}/ (pareto.csv, pareto.png, policies/); "
                      f"storage {safe_url(result.storage)}; wall time {result.wall_time:.0f}s")
    else:
        console.print(f"this worker is done (wall time {result.wall_time:.0f}s); the worker "
                      "that completes the last trial writes the reports (or run `jointopt run "
                      "CONFIG`, which runs nothing more and writes them)")
    from jointopt.cli.report import print_study_links

    print_study_links(console, plan, result)
    return 0


def _print_totals(console, config, ran: dict) -> None:
    """What this process's trials cost: replayed from a bank, or generated and reused."""
    from jointopt.backends import backend_class

    replayed = "bank" in backend_class(config.model.backend).settings_keys
    if ran["trials"] and replayed:
        console.print(f"this run: {ran['trials']} trials replayed from the bank "
                      f"{config.model.bank} ({ran['cached']} recorded samples scored, "
                      f"{ran['generated']} generated)")
    elif ran["trials"]:
        console.print(f"this run: {ran['trials']} trials, {ran['generated']} completions "
                      f"generated ({ran['tokens']} engine tokens), {ran['cached']} served from "
                      "the sample store" + (f" ({ran['reused']} completion tokens)"
                                            if ran["reused"] else ""))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jointopt`` command."""
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.command == "validate":
            return _validate(args)
        if args.command == "compare":
            return _stoppable(_compare, args)
        if args.command == "record":
            from jointopt.cli.record import run_record

            return _stoppable(run_record, args)
        if args.command == "bank":
            from jointopt.cli.bank import run_bank

            return run_bank(args)
        if args.command == "export":
            from jointopt.cli.export import run_export

            return run_export(args)
        if args.command == "certify":
            from jointopt.cli.certify import run_certify

            return _stoppable(run_certify, args)
        if args.command == "serve":
            from jointopt.cli.export import run_serve

            return run_serve(args)
        if args.command == "models":
            from jointopt.cli.models import run_models

            return _stoppable(run_models, args)
        if args.command == "report":
            from jointopt.cli.report import run_report

            return run_report(args)
        if args.command == "dashboard":
            from jointopt.cli.dashboard import run_dashboard

            return _stoppable(run_dashboard, args)
        return _stoppable(_run, args)
    except JointoptError as exc:
        from jointopt.safety.secrets import redact

        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if args.command in ("run", "worker"):
            kept = ("completed trials are kept in the study storage, a trial in flight is "
                    "marked failed and retried by the rerun")
        elif args.command == "models":
            kept = "no half-prepared model folder is left (the next run cleans up)"
        else:
            kept = "the engine was shut down; generations already stored are kept"
        print(f"interrupted{_signal_name(exc)}: {kept}; rerun the same command to continue",
              file=sys.stderr)
        return getattr(exc, "exit_code", 130)


def _stoppable(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A command that may start an engine, with SIGTERM and SIGINT turned into an exception
    in the main thread (a trial in flight is failed with the reason, the engine is closed),
    and every process the command started ended when it returns: a scheduler's or
    ``kill``'s SIGTERM must not leave an engine process running."""
    from jointopt.processes import ending_new_children, stop_on_signals

    with stop_on_signals(), ending_new_children():
        return command(args)


def _signal_name(exc: BaseException) -> str:
    import signal

    signum = getattr(exc, "signum", None)
    return f" ({signal.Signals(signum).name})" if signum else ""


if __name__ == "__main__":
    sys.exit(main())
