"""Crash and resume, upstream outages.

* A study process is SIGKILLed in the middle of a trial (while its engine is generating);
  rerunning the same command keeps the complete trials, fails the killed one and runs it
  again with the same parameters, regenerates no sample the cache already had, and closes
  the killed trial's MLflow run.
* The OpenAI-compatible upstream (``jointopt.serving.proxy.create_engine_app`` on a scripted
  backend, in its own process) is killed in the middle of a trial: the trial fails with the
  reason, the study stops after ``max_consecutive_failures`` failures with a clear message
  (exit code 2), nothing half-written is left, and once the upstream is back the same
  command completes the study.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

SPACE = {
    "prompts": [
        {"id": "direct", "user": "{{ question }}"},
        {"id": "fewshot", "user": "{{ question }}", "shots": 2},
    ],
    "strategies": {"single": {}, "majority": {"n": {"low": 2, "high": 3}}},
    "temperature": {"low": 0.05, "high": 1.0},  # every trial draws new samples
    "max_tokens": 16,
}
TASK = {"builtin": {"family": "reverse_words", "levels": [1, 2], "n_per_level": 2, "seed": 0,
                    "n_demos": 2}}


def jointopt(*args: str) -> list[str]:
    return [sys.executable, "-m", "jointopt.cli.app", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.update(extra)
    return env


def write(folder: Path, name: str, model: dict, n_trials: int, **optimizer) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "output_dir": str(folder / "run"), "model": model, "task": TASK,
        "search_space": "space.yaml",
        "optimizer": {"n_trials": n_trials, "seed": 0, "heartbeat_interval": 1,
                      "expand_variants": False, **optimizer},
        "tracking": {"enabled": True},
    }))
    return path


def optuna_trials(folder: Path, name: str):
    import optuna

    study = optuna.load_study(study_name=name,
                              storage=f"sqlite:///{folder / 'run' / 'optuna.db'}")
    return study.get_trials(deepcopy=False)


def by_state(trials, state: str):
    return [t for t in trials if t.state.name == state]


def mlflow_trial_runs(folder: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'run' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return ([r for r in runs if r.data.tags.get("jointopt.role") == "trial"],
            [r for r in runs if r.data.tags.get("jointopt.role") == "study"])


def wait_for(condition, timeout: float, proc: subprocess.Popen | None = None,
             what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"process ended (code {proc.returncode}) before {what}:\n{out}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigkill_mid_trial_then_rerun_resumes(tmp_path):
    busy, log = tmp_path / "busy", tmp_path / "generated.log"
    delay = 0.6
    config = write(tmp_path, "crash", {
        "backend": "jointopt.testing:scripted_backend", "model": "scripted",
        "engine": {"responder": "reverse_words", "delay": delay, "busy_file": str(busy),
                   "log_file": str(log)}}, n_trials=5)
    db = tmp_path / "run" / "optuna.db"
    proc = subprocess.Popen(jointopt("run", str(config)), cwd=tmp_path, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def mid_generation_after_two_trials() -> bool:
        if not db.exists() or not busy.exists():
            return False
        try:
            if len(by_state(optuna_trials(tmp_path, "crash"), "COMPLETE")) < 2:
                return False
            # the engine started this batch less than delay/3 ago: the kill lands while it
            # is still generating, before anything of the batch is logged or stored
            return time.time() - busy.stat().st_mtime < delay / 3
        except Exception:  # noqa: BLE001 - the study is being created, the batch ended
            return False

    try:
        wait_for(mid_generation_after_two_trials, 120, proc, "two complete trials")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = optuna_trials(tmp_path, "crash")
    kept = {t.number: t.values for t in by_state(before, "COMPLETE")}
    running = by_state(before, "RUNNING")
    assert len(kept) >= 2 and len(running) == 1, [(t.number, t.state.name) for t in before]
    killed = running[0]
    runs, _ = mlflow_trial_runs(tmp_path, "crash")
    assert [r.info.status for r in runs if r.info.run_id == killed.user_attrs["mlflow_run_id"]] \
        == ["RUNNING"], "the killed trial's MLflow run was opened when it started"
    generated_before = log.read_text().splitlines()

    result = subprocess.run(jointopt("run", str(config)), cwd=tmp_path,
                            env=child_env(COLUMNS="200"), capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr

    after = optuna_trials(tmp_path, "crash")
    complete = by_state(after, "COMPLETE")
    assert len(complete) == 5
    assert {t.number: t.values for t in complete if t.number in kept} == kept, "kept as they were"
    dead = next(t for t in after if t.number == killed.number)
    assert dead.state.name == "FAIL"
    assert "died" in dead.user_attrs["fail_reason"]
    retry = [t for t in complete if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params, "retried with its parameters"
    assert retry[0].system_attrs.get("failed_trial") == killed.number  # Optuna's own record
    assert not by_state(after, "RUNNING")

    # no sample generated twice: what the first run stored is reused by the second
    lines = log.read_text().splitlines()
    assert len(lines) > len(generated_before) > 0
    counts = collections.Counter(line.split(" ", 1)[1] for line in lines)
    assert [k for k, n in counts.items() if n > 1] == [], "regenerated samples"
    assert len({line.split()[0] for line in lines}) == 2, "two processes generated"
    rerun = len(lines) - len(generated_before)
    assert f", {rerun} completions generated (" in result.stdout, result.stdout

    runs, parents = mlflow_trial_runs(tmp_path, "crash")
    status = {r.info.run_id: r.info.status for r in runs}
    assert status[killed.user_attrs["mlflow_run_id"]] == "FAILED"
    assert status[retry[0].user_attrs["mlflow_run_id"]] == "FINISHED"
    assert "RUNNING" not in status.values()
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    finished = collections.Counter(int(r.data.tags["jointopt.trial"]) for r in runs
                                   if r.info.status == "FINISHED")
    assert finished == collections.Counter(t.number for t in complete)


def test_stale_trial_is_failed_and_retried_by_heartbeat(tmp_path):
    """A RUNNING trial of a process on *another* machine (not checkable by pid) is failed
    once its heartbeat is older than the grace period, and retried."""
    import optuna

    from jointopt.search.config import load_config
    from jointopt.search.study import open_study
    from jointopt.search.plan import plan_study
    from jointopt.search.recovery import recover_trials

    config = load_config(write(tmp_path, "stale", {"backend": "scripted"}, n_trials=3,
                               grace_period=1))
    plan = plan_study(config)
    study = open_study(plan)
    trial = study.ask({"temperature": optuna.distributions.FloatDistribution(0.05, 1.0)})
    trial.set_user_attr("worker", {"host": "elsewhere", "pid": 1, "boot": "", "started": ""})
    study._storage.record_heartbeat(trial._trial_id)
    assert recover_trials(study, config.optimizer) == []  # heartbeat is fresh
    time.sleep(2.2)
    assert recover_trials(study, config.optimizer) == [trial.number]
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state.name == "FAIL"
    waiting = [t for t in trials if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].params == trials[0].params
    assert "worker" not in waiting[0].user_attrs and waiting[0].user_attrs["retry_of"] == 0


# ------------------------------------------------------------------------------ upstream


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


UPSTREAM = """
import sys, uvicorn
from jointopt.serving.proxy import create_engine_app
from jointopt.testing import scripted_backend
backend = scripted_backend(engine_kwargs={"responder": "reverse_words",
                                          "delay": float(sys.argv[2]), "busy_file": sys.argv[3]})
uvicorn.run(create_engine_app(backend, model_name="scripted"), host="127.0.0.1",
            port=int(sys.argv[1]), log_level="error")
"""


def start_upstream(port: int, busy: Path, delay: float = 0.05) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(port), str(delay), str(busy)],
                            env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, proc, "the upstream to listen")
    return proc


def test_upstream_killed_mid_trial(tmp_path):
    port, busy = _free_port(), tmp_path / "upstream-busy"
    config = write(tmp_path, "outage", {
        "backend": "openai", "model": "scripted",
        "base_urls": [f"http://127.0.0.1:{port}/v1"],
        "engine": {"max_retries": 1, "backoff": 0.05, "connect_timeout": 1, "timeout": 20},
    }, n_trials=6, max_consecutive_failures=3)
    upstream = start_upstream(port, busy, delay=0.3)
    db = tmp_path / "run" / "optuna.db"
    proc = subprocess.Popen(jointopt("run", str(config)), cwd=tmp_path, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def generating_after_one_trial() -> bool:
            try:
                return busy.exists() and db.exists() and \
                    len(by_state(optuna_trials(tmp_path, "outage"), "COMPLETE")) >= 1
            except Exception:  # noqa: BLE001 - the study is being created
                return False

        wait_for(generating_after_one_trial, 120, proc, "a trial in flight")
        upstream.kill()
        upstream.wait()
        out, err = proc.communicate(timeout=120)
    finally:
        upstream.kill()
        proc.kill()
    assert proc.returncode == 2, out + err
    assert "stopped after 3 consecutive failed trials" in err
    assert "optimizer.max_consecutive_failures" in err
    assert "cannot reach the OpenAI-compatible server" in err or "cannot connect" in err
    assert "Traceback" not in err

    trials = optuna_trials(tmp_path, "outage")
    failed = by_state(trials, "FAIL")
    assert len(failed) >= 3
    for t in failed:
        assert "OpenAI-compatible server" in t.user_attrs["fail_reason"]
        assert "accuracy" not in t.user_attrs and not t.values, "nothing half-written"
    first_fail = min(t.number for t in failed)
    complete_before = [t.number for t in by_state(trials, "COMPLETE")]
    assert complete_before and min(complete_before) < first_fail
    # the cache holds whole pools only: every pool's samples are 0..k-1
    with sqlite3.connect(tmp_path / "run" / "samples.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        pools = conn.execute("SELECT key, COUNT(*), MAX(idx) FROM samples GROUP BY key").fetchall()
    assert pools and all(count == top + 1 for _, count, top in pools)
    runs, parents = mlflow_trial_runs(tmp_path, "outage")
    failed_runs = {t.user_attrs["mlflow_run_id"] for t in failed}
    for r in runs:
        if r.info.run_id in failed_runs:
            assert r.info.status == "FAILED"
            assert "OpenAI-compatible server" in r.data.tags["jointopt.fail_reason"]
    assert parents[0].info.status == "FAILED"

    # The upstream is back: the same command completes the study.
    upstream = start_upstream(port, busy)
    try:
        result = subprocess.run(jointopt("run", str(config)), cwd=tmp_path, env=child_env(),
                                capture_output=True, text=True, timeout=180)
    finally:
        upstream.kill()
        upstream.wait()
    assert result.returncode == 0, result.stdout + result.stderr
    trials = optuna_trials(tmp_path, "outage")
    assert len(by_state(trials, "COMPLETE")) == 6
    assert {t.number for t in by_state(trials, "FAIL")} == {t.number for t in failed}
    assert max(t.number for t in by_state(trials, "COMPLETE")) > max(t.number for t in failed)
    _, parents = mlflow_trial_runs(tmp_path, "outage")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
