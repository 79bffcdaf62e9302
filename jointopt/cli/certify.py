"""``jointopt certify``: the cheapest policy of a finished study that reaches an accuracy
target with a stated risk.

    jointopt certify CONFIG --target 0.90 --risk 0.05 [--bin-target hard=0.7]

Scores the study's Pareto front on the calibration split
(``validation.calibration_fraction``, never seen by the search), tests the candidates in
a fixed order by dev accuracy (Learn-then-Test), prints the tested sequence and the
certified trial (or how close the best came), keeps the certificate in the study for
``jointopt export --pick certified`` and logs it to MLflow. Exit code 0 when a policy is
certified, 1 when none is, 2 for bad input.

Wiring (in :mod:`jointopt.cli.app`)::

    add_certify_parser(sub)                 # in _parser()
    if args.command == "certify":           # in main()
        return run_certify(args)
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_certify_parser", "run_certify"]


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def _bin_target(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"write BIN=TARGET, e.g. hard=0.7; got {text!r}")
    return name, _rate(value)


def add_certify_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``certify CONFIG --target T [--risk D] ...``."""
    from jointopt.evaluation.risk import METHODS

    parser = subparsers.add_parser(
        "certify", help="certify the cheapest policy that meets an accuracy target",
        description="Test the study's Pareto front on its calibration split (Learn-then-"
                    "Test, fixed sequence) and certify the cheapest policy whose accuracy "
                    "is >= TARGET with probability >= 1 - RISK, assuming calibration and "
                    "future inputs are exchangeable.")
    parser.add_argument("config", help="study YAML file (with validation.calibration_fraction)")
    parser.add_argument("--target", type=_rate, help="accuracy target, e.g. 0.90")
    parser.add_argument("--risk", type=_rate, default=0.05,
                        help="largest probability that the promise fails (default 0.05)")
    parser.add_argument("--bin-target", type=_bin_target, action="append", default=[],
                        metavar="BIN=TARGET",
                        help="accuracy target on the inputs of one difficulty label "
                             "(repeatable)")
    parser.add_argument("--method", choices=METHODS, default="auto",
                        help="p-value (default auto: exact binomial for 0/1 outcomes, "
                             "Hoeffding-Bentkus for pooled expected accuracies)")
    parser.add_argument("--candidates", choices=("front", "feasible"), default="front",
                        help="test the Pareto front (default) or every feasible trial")
    parser.add_argument("--storage", help="Optuna storage URL (default: the config's)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    return parser


def run_certify(args: argparse.Namespace) -> int:
    """Handle ``jointopt certify``."""
    from rich.console import Console
    from rich.table import Table

    from jointopt.errors import ConfigError
    from jointopt.search.config import load_config
    from jointopt.tracking.certificate import certify

    if args.target is None and not args.bin_target:
        raise ConfigError("nothing to certify", where="--target",
                          fix="pass --target 0.9 (and/or --bin-target BIN=T)")
    overrides = {"optimizer": {"storage": args.storage}} if args.storage else None
    config = load_config(args.config, overrides)
    result = certify(config, target=args.target, risk=args.risk, method=args.method,
                     bin_targets=dict(args.bin_target), candidates=args.candidates,
                     track=False if args.no_tracking else None)
    cert = result.certification
    console = Console()
    goal = " and ".join(([f"accuracy >= {args.target}"] if args.target else []) + [
        f"{name} >= {value}" for name, value in args.bin_target])
    table = Table(title=f"{goal} at risk {args.risk} "
                        f"({cert.n_calibration} calibration examples, {cert.method})")
    for column in ("trial", "mean tokens", "dev acc", "calib acc", "lower bound",
                   "p-value", "certified"):
        table.add_column(column, justify="right")
    for t in cert.tested:
        table.add_row(str(t.key), f"{t.cost:.1f}", f"{t.dev_accuracy:.3f}",
                      f"{t.calibration_accuracy:.3f}", f"{t.lower_bound:.3f}",
                      f"{t.p_value:.3g}", "yes" if t.certified else "no")
    console.print(table)
    if cert.chosen is None:
        best = cert.closest
        near = (f"; the closest, trial {best.key}, is certified only down to "
                f"{best.lower_bound:.3f}" if best else "")
        console.print(f"[yellow]no policy is certified[/yellow]{near}. Lower the target, "
                      "raise the risk, add calibration examples or search for stronger "
                      "policies.")
        return 1
    chosen = next(t for t in cert.tested if t.key == cert.chosen)
    console.print(f"[green]certified[/green] trial {chosen.key}: "
                  f"{result.policies[chosen.key].describe()} ({chosen.cost:.1f} mean tokens, "
                  f"p-value {chosen.p_value:.3g})")
    console.print(f"export it: jointopt export {args.config} --pick certified --out DIR")
    return 0
