"""``jointopt dashboard RUN_DIR|CONFIG``: the dashboards users already know, on a study.

Starts optuna-dashboard on the study's Optuna storage and the MLflow UI on its tracking
database, both on 127.0.0.1, waits until each answers, prints their links (the study's
page, the MLflow parent run) and the report's, and stops both on Ctrl-C or SIGTERM.

The MLflow UI is started with ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: MLflow 3's
server otherwise imports its GenAI job functions at start-up, which imports LiteLLM; on
a machine without internet LiteLLM's background retry of its model-price download logs
from a thread while the main thread holds MLflow's import-hook lock, and the two
deadlock: ``mlflow ui`` never starts listening. jointopt uses no MLflow server jobs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from jointopt.errors import ConfigError

__all__ = ["add_dashboard_parser", "run_dashboard", "MLFLOW_UI_ENV", "mlflow_ui_command"]

HOST = "127.0.0.1"
#: Environment that lets ``mlflow ui`` start on a machine without internet (see above).
MLFLOW_UI_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                 "LITELLM_LOCAL_MODEL_COST_MAP": "True", "MLFLOW_DISABLE_TELEMETRY": "true"}
#: Seconds a dashboard may take to answer before the command gives up.
START_TIMEOUT = 120.0


def mlflow_ui_command(tracking_uri: str, port: int = 5000) -> str:
    """The shell command that opens the MLflow UI on ``tracking_uri`` (printed by
    ``jointopt run``)."""
    return (f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false {Path(sys.executable).parent}/mlflow "
            f"ui --backend-store-uri {tracking_uri} --host {HOST} --port {port} --workers 1")


def add_dashboard_parser(sub: Any) -> None:
    """Register ``jointopt dashboard`` on the CLI's subparsers."""
    dash = sub.add_parser(
        "dashboard", help="open optuna-dashboard and the MLflow UI on a study",
        description="Start optuna-dashboard (the study's Optuna storage) and the MLflow UI "
                    "(its tracking database) on 127.0.0.1, print their links, and stop them "
                    "on Ctrl-C.")
    dash.add_argument("target", metavar="RUN_DIR|CONFIG",
                      help="the study's output folder (runs/<name>) or its config YAML")
    dash.add_argument("--no-optuna", action="store_true", help="do not start optuna-dashboard")
    dash.add_argument("--no-mlflow", action="store_true", help="do not start the MLflow UI")
    dash.add_argument("--optuna-port", type=_port_or_zero, default=8080,
                      help="optuna-dashboard's port (default 8080; 0: any free port)")
    dash.add_argument("--mlflow-port", type=_port_or_zero, default=5000,
                      help="the MLflow UI's port (default 5000; 0: any free port)")
    from jointopt.cli.report import add_location_flags

    add_location_flags(dash)


def _port_or_zero(text: str) -> int:
    from jointopt.cli.export import _port

    return 0 if text.strip() == "0" else _port(text)


def _free_port(port: int, flag: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            raise ConfigError("the port is in use", where=flag, value=port,
                              fix=f"pass another port ({flag} 0 picks a free one), or stop "
                                  "what listens there") from None
        return sock.getsockname()[1]


def _executable(name: str, extra: str) -> str:
    found = Path(sys.executable).with_name(name)
    path = str(found) if found.is_file() else shutil.which(name)
    if not path:
        raise ConfigError(f"{name} is not installed", where="jointopt dashboard",
                          fix=f"pip install 'jointopt[{extra}]' (or pass --no-"
                              f"{'optuna' if 'optuna' in name else 'mlflow'})")
    return path


def _optuna_storage_arg(storage: str) -> list[str]:
    from jointopt.search.storage import JOURNAL_SCHEME, journal_path

    if storage.startswith(JOURNAL_SCHEME):
        return [str(journal_path(storage)), "--storage-class", "JournalFileStorage"]
    return [storage]


def _wait_until_up(proc: subprocess.Popen, url: str, name: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
            raise ConfigError(f"{name} exited with code {proc.returncode} before answering",
                              where="jointopt dashboard", fix=f"see its output in {log}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise ConfigError(f"{name} did not answer within {START_TIMEOUT:.0f}s", value=url,
                      where="jointopt dashboard", fix=f"see its output in {log}")


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=False)


def _links(study: Any, where: Any, optuna_port: int | None,
           mlflow_port: int | None) -> list[tuple[str, str]]:
    from jointopt.tracking.report import REPORT_FILE

    links = []
    if optuna_port is not None:
        study_id = study._study_id  # optuna-dashboard addresses studies by storage id
        links.append(("optuna-dashboard", f"http://{HOST}:{optuna_port}/dashboard/studies/"
                                          f"{study_id}"))
    if mlflow_port is not None:
        run_id = study.user_attrs.get("mlflow_parent_run_id")
        experiment = _experiment_id(where.tracking_uri, run_id)
        suffix = f"#/experiments/{experiment}/runs/{run_id}" if experiment else ""
        links.append(("MLflow UI", f"http://{HOST}:{mlflow_port}/{suffix}"))
    report = where.out_dir / REPORT_FILE
    if report.is_file():
        links.append(("report", report.as_uri()))
    return links


def _experiment_id(tracking_uri: str, run_id: str | None) -> str | None:
    if not run_id:
        return None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - a deleted run or another server: link the start page
        return None


def run_dashboard(args: argparse.Namespace) -> int:
    """``jointopt dashboard``: start the dashboards, print their links, wait for Ctrl-C."""
    from rich.console import Console

    from jointopt.cli.report import load_located_study, locate_study
    from jointopt.search.study import name_objectives

    where = locate_study(args.target, args.storage, args.study, args.output_dir)
    study = load_located_study(where)
    name_objectives(study)  # studies of older versions: objectives named for the dashboard
    want_mlflow = not args.no_mlflow and where.tracking_uri is not None
    if args.no_optuna and not want_mlflow:
        raise ConfigError("nothing to start", where="jointopt dashboard",
                          fix="drop --no-optuna, or --no-mlflow for a study tracked in MLflow")
    console = Console()
    logs = where.out_dir / "dashboard-logs"
    logs.mkdir(exist_ok=True)
    procs: list[subprocess.Popen] = []
    ports: dict[str, int | None] = {"optuna": None, "mlflow": None}
    try:
        if not args.no_optuna:
            port = _free_port(args.optuna_port, "--optuna-port")
            command = [_executable("optuna-dashboard", "tracking"),
                       *_optuna_storage_arg(where.storage), "--host", HOST, "--port", str(port),
                       "--server", "wsgiref"]
            procs.append(_start(command, {}, logs / "optuna-dashboard.log"))
            ports["optuna"] = port
        if want_mlflow:
            port = _free_port(args.mlflow_port, "--mlflow-port")
            command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                       str(where.tracking_uri), "--host", HOST, "--port", str(port),
                       "--workers", "1"]
            procs.append(_start(command, MLFLOW_UI_ENV, logs / "mlflow-ui.log"))
            ports["mlflow"] = port
        for proc, (name, port) in zip(procs, [(k, v) for k, v in ports.items() if v]):
            _wait_until_up(proc, f"http://{HOST}:{port}/", name, logs / _log_name(name))
        for label, url in _links(study, where, ports["optuna"], ports["mlflow"]):
            console.print(f"{label}: {url}", soft_wrap=True)
        console.print("press Ctrl-C to stop the dashboards", soft_wrap=True)
        sys.stdout.flush()
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        console.print("a dashboard exited; see its log in " + str(logs))
        return 1
    except KeyboardInterrupt:
        console.print("dashboards stopped")
        return 0
    finally:
        _stop(procs)


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM each dashboard, wait up to ``grace`` seconds, then end what is left of
    their process trees (the MLflow UI runs its server in a child process)."""
    from jointopt.processes import descendants, end_processes, process_ref

    trees = []
    for proc in procs:
        ref = process_ref(proc.pid) if proc.poll() is None else None
        if ref is not None:
            trees += [ref, *descendants(ref.pid)]
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    end_processes(trees)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _log_name(name: str) -> str:
    return {"optuna": "optuna-dashboard.log", "mlflow": "mlflow-ui.log"}[name]
