"""``jointopt report RUN_DIR|CONFIG``: write a study's interactive HTML report.

A study is found from its output folder (``runs/<name>``: the settings ``jointopt run``
kept there, else the ``optuna.db`` in it) or from its config (storage, study name and
output folder as ``jointopt run`` resolves them). :func:`locate_study` is shared with
``jointopt dashboard``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.errors import ConfigError, JointoptError

if TYPE_CHECKING:
    import optuna

__all__ = ["StudyLocation", "locate_study", "load_located_study", "add_report_parser",
           "add_location_flags", "run_report"]


@dataclass(frozen=True)
class StudyLocation:
    """Where a finished (or running) study lives.

    Attributes:
        out_dir: the study's output folder.
        storage: its Optuna storage URL.
        study_name: its name in the storage (None: the only study there).
        tracking_uri: its MLflow tracking URI (None: tracking was off).
        settings: its settings (resolved config), when known.
    """

    out_dir: Path
    storage: str
    study_name: str | None
    tracking_uri: str | None
    settings: dict[str, Any] | None


def locate_study(target: str, storage: str | None = None, study_name: str | None = None,
                 output_dir: str | None = None) -> StudyLocation:
    """The study of a config file or of an output folder (``storage``/``study_name``
    override what is found there; ``output_dir`` that of a config)."""
    path = Path(target)
    if path.is_file():
        return _from_config(path, storage, study_name, output_dir)
    if not path.is_dir():
        raise ConfigError("no such study folder or config file", where="RUN_DIR|CONFIG",
                          value=target, fix="give a study's output folder (runs/<name>) or "
                                            "its config YAML")
    from jointopt.tracking.report_data import SETTINGS_FILE

    out = path.resolve()
    settings = None
    if (out / SETTINGS_FILE).is_file():
        settings = json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8"))
    kept = (settings or {}).get("storage")
    if storage is None and kept and "***" not in kept:
        storage = kept
    if storage is None and (out / "optuna.db").is_file():
        storage = f"sqlite:///{(out / 'optuna.db').as_posix()}"
    if storage is None:
        raise ConfigError("found no Optuna storage for this folder", where="RUN_DIR",
                          value=target, fix="give the study's config YAML instead, or pass "
                                            "--storage URL")
    tracking = (settings or {}).get("tracking_uri")
    if not settings and (out / "mlflow.db").is_file():
        tracking = f"sqlite:///{(out / 'mlflow.db').as_posix()}"
    return StudyLocation(out, storage, study_name or (settings or {}).get("study_name"),
                         tracking if tracking and "***" not in tracking else None, settings)


def _from_config(path: Path, storage: str | None, study_name: str | None,
                 output_dir: str | None) -> StudyLocation:
    from jointopt.search.config import load_config
    from jointopt.search.plan import plan_study
    from jointopt.tracking.report_data import plan_settings

    overrides: dict[str, Any] = {"optimizer": {"storage": storage}} if storage else {}
    if output_dir:
        overrides["output_dir"] = output_dir
    config = load_config(path, overrides)
    plan = plan_study(config)
    out = plan.out_dir.resolve()
    tracking = None
    if config.tracking.enabled:
        tracking = config.tracking.tracking_uri or f"sqlite:///{(out / 'mlflow.db').as_posix()}"
    return StudyLocation(out, plan.storage, study_name or plan.study_name, tracking,
                         plan_settings(plan))


def load_located_study(where: StudyLocation) -> "optuna.Study":
    """Open the located study (its only study when no name is known)."""
    import optuna

    from jointopt.search.config import OptimizerConfig
    from jointopt.search.storage import make_storage

    storage = make_storage(where.storage, OptimizerConfig())
    names = [s.study_name for s in optuna.get_all_study_summaries(storage,
                                                                  include_best_trial=False)]
    name = where.study_name
    if name is None and len(names) == 1:
        name = names[0]
    if name is None or name not in names:
        raise ConfigError("no such study in the storage" if name else
                          "the storage holds several studies", where="--study", value=name,
                          fix=f"pass --study NAME; the storage holds: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def add_report_parser(sub: Any) -> None:
    """Register ``jointopt report`` on the CLI's subparsers."""
    report = sub.add_parser(
        "report", help="write a study's interactive HTML report",
        description="Write one self-contained HTML file (opens offline): the dev and "
                    "held-out Pareto fronts with confidence intervals, every policy on "
                    "hover, strategy families, per-bin allocations, where the tokens went, "
                    "the difficulty report and the study's settings.")
    report.add_argument("target", metavar="RUN_DIR|CONFIG",
                        help="the study's output folder (runs/<name>) or its config YAML")
    report.add_argument("--out", help="report file (default RUN_DIR/report.html)")
    add_location_flags(report)


def add_location_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that find a study besides RUN_DIR|CONFIG (report and dashboard)."""
    parser.add_argument("--storage", help="Optuna storage URL (default: the study's own)")
    parser.add_argument("--study", help="study name (default: the only study in the storage)")
    parser.add_argument("--output-dir", help="the study's output folder, with a CONFIG that "
                                             "was run with --output-dir")


def run_report(args: argparse.Namespace) -> int:
    """``jointopt report``: write the located study's report and print its path."""
    from rich.console import Console

    from jointopt.tracking.report import study_report

    where = locate_study(args.target, args.storage, args.study, args.output_dir)
    study = load_located_study(where)
    path = study_report(study, where.out_dir, settings=where.settings,
                        path=Path(args.out).resolve() if args.out else None)
    Console().print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB; open it in a "
                    f"browser: {path.as_uri()})")
    return 0


def print_study_links(console: Any, plan: Any, result: Any) -> None:
    """After ``jointopt run``: write the report if the MLflow tracker did not (tracking
    off), and print where the report is and how to open the dashboards."""
    from jointopt.cli.dashboard import mlflow_ui_command
    from jointopt.safety.secrets import safe_url
    from jointopt.tracking.report import REPORT_FILE, study_report
    from jointopt.tracking.report_data import plan_settings

    out = Path(result.out_dir).resolve()
    report = out / REPORT_FILE
    if result.extra.get("reports_written", True) and not plan.config.tracking.enabled:
        where = StudyLocation(out, result.storage, result.study_name, None, None)
        try:
            study_report(load_located_study(where), out, settings=plan_settings(plan))
        except JointoptError as exc:  # the study's results are kept; only the page is missing
            console.print(f"no report: {exc}", soft_wrap=True, highlight=False)
    if report.is_file():
        console.print(f"report: {report.as_uri()}", soft_wrap=True)
    if result.mlflow_run_id:
        uri = plan.config.tracking.tracking_uri or f"sqlite:///{(out / 'mlflow.db').as_posix()}"
        console.print(f"MLflow parent run {result.mlflow_run_id}; dashboards (optuna-dashboard "
                      f"and the MLflow UI): jointopt dashboard {out}", soft_wrap=True)
        console.print(f"MLflow UI alone: {mlflow_ui_command(safe_url(uri))}", soft_wrap=True)
