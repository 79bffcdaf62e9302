"""``jointopt dashboard`` and the MLflow UI command ``jointopt run`` prints: the command
starts listening on a machine without internet (MLflow's job-execution import otherwise
deadlocks with LiteLLM's background download retry), and bad dashboard options fail with
the flag and the fix. The dashboards in a browser: tests/tracking/test_browser.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from jointopt.search.config import load_config
from jointopt.search.study import run_study
from jointopt.testing import scripted_backend

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dashboard") / "run"
    config = load_config(ROOT / "experiments/quickstart.yaml", {
        "output_dir": str(out), "optimizer": {"n_trials": 4, "sampler": "random"}})
    run_study(config, backend=scripted_backend(engine_kwargs={"responder": "reverse_words"}))
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_printed_mlflow_ui_command_starts_listening(out):
    from jointopt.cli.dashboard import mlflow_ui_command

    port = _free_port()
    command = mlflow_ui_command(f"sqlite:///{out / 'mlflow.db'}", port)
    assert command.startswith("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false ")
    proc = subprocess.Popen(["bash", "-c", command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, answer = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search"
                        "?max_results=5", timeout=2) as response:
                    answer = response.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert answer is not None and '"quickstart"' in answer, "the MLflow UI answers"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the UI and its server child
        proc.wait(timeout=30)


def test_dashboard_options_fail_with_the_flag_and_the_fix(out, capsys):
    from jointopt.cli.app import main

    assert main(["dashboard", str(out), "--no-optuna", "--no-mlflow"]) == 2
    assert "nothing to start" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["dashboard", str(out), "--no-mlflow", "--optuna-port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "--optuna-port: the port is in use" in err and "fix:" in err
