"""SIGTERM and Ctrl-C: the trial in flight fails with the reason, no process is left.

What a scheduler, systemd or ``kill`` sends is SIGTERM, whose default action ended
``jointopt run`` at once and left vLLM's EngineCore and Worker processes running. These
tests use a scripted engine that owns a child process ignoring SIGTERM, the way the
EngineCore did (``stubborn_backend`` below; the real-engine test is in
``test_shutdown_engine.py``):

* ``jointopt run`` / ``jointopt worker`` get SIGTERM while the engine generates: the
  process exits with 128 + 15 within seconds, the trial in flight is FAIL with the reason
  (its MLflow run FAILED) and queued for a retry, the engine's child is gone (SIGKILLed
  after a grace period), and a rerun completes the study regenerating nothing stored.
* ``jointopt run --workers 2``: the launcher passes SIGTERM on to its workers; each fails
  its trial and ends its engine's processes.
* Units: :mod:`jointopt.processes` (signals, process trees) and ``VLLMBackend.close`` on a
  stand-in engine whose processes survive vLLM's own shutdown.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jointopt.processes import (
    Interrupted,
    descendants,
    end_processes,
    is_running,
    process_ref,
    stop_on_signals,
)
from test_resilience import (
    by_state,
    jointopt,
    mlflow_trial_runs,
    optuna_trials,
    wait_for,
    write,
)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parents[1]
#: A process that ignores SIGTERM (as vLLM's EngineCore did when its parent was gone).
IGNORES_SIGTERM = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(600)")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a jointopt subprocess: this checkout and ``tests`` importable
    (the study configs name ``test_shutdown:stubborn_backend``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.update(extra)
    return env


def stubborn_backend(*, model=None, seed=None, max_model_len=None, engine_kwargs=None):
    """``jointopt.testing.scripted_backend`` plus a child process that ignores SIGTERM and
    that the backend's ``close`` leaves running (a stand-in for an engine process vLLM's
    shutdown does not end). Option ``pid_file``: where the child's pid is appended."""
    from jointopt.testing import scripted_backend

    options = dict(engine_kwargs or {})
    pid_file = options.pop("pid_file")
    backend = scripted_backend(model=model, seed=seed, max_model_len=max_model_len,
                               engine_kwargs=options)
    child = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE,
                             text=True)
    child.stdout.readline()  # its SIGTERM handler is in place
    with open(pid_file, "a", encoding="utf-8") as fh:
        fh.write(f"{child.pid}\n")
    backend._stubborn_child = child  # keeps the Popen (no ResourceWarning, no early reap)
    return backend


def stubborn_study(tmp_path: Path, name: str, n_trials: int, delay: float = 0.6,
                   **optimizer) -> Path:
    return write(tmp_path, name, {
        "backend": "test_shutdown:stubborn_backend", "model": "scripted",
        "engine": {"responder": "reverse_words", "delay": delay,
                   "busy_file": str(tmp_path / "busy"), "log_file": str(tmp_path / "gen.log"),
                   "pid_file": str(tmp_path / "children.pid")}}, n_trials=n_trials,
        **optimizer)


def generating(tmp_path: Path, name: str, delay: float, complete: int = 1,
               running: int = 1):
    """A condition: ``complete`` trials done, ``running`` in flight, and the engine started
    its current batch less than delay/3 ago (the signal lands while it generates)."""
    busy, db = tmp_path / "busy", tmp_path / "run" / "optuna.db"

    def check() -> bool:
        if not db.exists() or not busy.exists():
            return False
        try:
            trials = optuna_trials(tmp_path, name)
            return (len(by_state(trials, "COMPLETE")) >= complete
                    and len(by_state(trials, "RUNNING")) >= running
                    and time.time() - busy.stat().st_mtime < delay / 3)
        except Exception:  # noqa: BLE001 - the study is being created, the batch ended
            return False

    return check


def still_running(refs, timeout: float = 5.0) -> list[int]:
    """Pids of ``refs`` still running after up to ``timeout`` seconds (multiprocessing's
    resource tracker ends on its own once its last user is gone)."""
    deadline = time.monotonic() + timeout
    while any(is_running(r) for r in refs) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [r.pid for r in refs if is_running(r)]


def assert_all_gone(refs, timeout: float = 5.0) -> None:
    left = still_running(refs, timeout)
    assert not left, f"processes left running: {left}"


def stop_with_sigterm(proc: subprocess.Popen, timeout: float):
    """SIGTERM ``proc`` and wait up to ``timeout`` s for it to exit. Returns (seconds until
    it exited or None, its output, its process tree just before the signal, the pids of
    that tree still running afterwards). Whatever still runs is then killed, so a failing
    run never leaves processes behind (nor a pipe held open by an orphan)."""
    tree = descendants(proc.pid)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        took = time.monotonic() - sent
    except subprocess.TimeoutExpired:
        took = None
    left = still_running(tree)
    me = process_ref(proc.pid)
    end_processes([r for r in [me, *tree] if r is not None], grace=0.1)
    out, _ = proc.communicate()
    return took, out, tree, left


def generated_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("command", ["run", "worker"])
def test_sigterm_mid_trial_fails_it_ends_the_engine_and_rerun_resumes(tmp_path, command):
    delay = 0.6
    config = stubborn_study(tmp_path, "term", n_trials=4, delay=delay)
    proc = subprocess.Popen(jointopt(command, str(config)), cwd=tmp_path, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(generating(tmp_path, "term", delay), 180, proc, "a trial mid-generation")
        took, out, tree, left = stop_with_sigterm(proc, timeout=30)
    finally:
        proc.kill()
        proc.wait()
    child = int((tmp_path / "children.pid").read_text().split()[0])
    assert child in {r.pid for r in tree}, "the engine's child was a descendant"
    assert not left, f"processes left running: {left}"
    assert took is not None, f"no exit within 30 s of SIGTERM:\n{out}"
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "interrupted (SIGTERM)" in out and "Traceback" not in out, out
    # the child ignores SIGTERM: it was SIGKILLed after the grace period (3 s)
    assert took < 15, f"exit took {took:.1f} s"

    before = optuna_trials(tmp_path, "term")
    assert not by_state(before, "RUNNING"), [(t.number, t.state.name) for t in before]
    stopped = by_state(before, "FAIL")
    assert len(stopped) == 1, [(t.number, t.state.name) for t in before]
    reason = stopped[0].user_attrs["fail_reason"]
    assert "SIGTERM" in reason and "rerun the same command" in reason, reason
    assert "accuracy" not in stopped[0].user_attrs and not stopped[0].values
    waiting = by_state(before, "WAITING")
    assert len(waiting) == 1 and waiting[0].params == stopped[0].params, "retry queued"
    runs, _ = mlflow_trial_runs(tmp_path, "term")
    status = {r.info.run_id: r for r in runs}
    failed_run = status[stopped[0].user_attrs["mlflow_run_id"]]
    assert failed_run.info.status == "FAILED"
    assert "SIGTERM" in failed_run.data.tags["jointopt.fail_reason"]
    generated_before = generated_lines(tmp_path / "gen.log")
    kept = {t.number: t.values for t in by_state(before, "COMPLETE")}

    result = subprocess.run(jointopt("run", str(config)), cwd=tmp_path,
                            env=child_env(COLUMNS="200"), capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    after = optuna_trials(tmp_path, "term")
    complete = by_state(after, "COMPLETE")
    assert len(complete) == 4 and not by_state(after, "RUNNING")
    assert {t.number: t.values for t in complete if t.number in kept} == kept
    retry = [t for t in complete if t.user_attrs.get("retry_of") == stopped[0].number]
    assert len(retry) == 1 and retry[0].params == stopped[0].params
    lines = generated_lines(tmp_path / "gen.log")
    counts = collections.Counter(line.split(" ", 1)[1] for line in lines)
    assert [k for k, n in counts.items() if n > 1] == [], "regenerated samples"
    rerun = len(lines) - len(generated_before)
    assert f", {rerun} completions generated (" in result.stdout, result.stdout
    # the rerun's engine child was ended when the command returned
    children = [int(p) for p in (tmp_path / "children.pid").read_text().split()]
    assert len(children) == 2 and all(_state(p) in ("", "Z") for p in children)


def _state(pid: int) -> str:
    from jointopt.processes import proc_stat

    fields = proc_stat(pid)
    return fields[0] if fields else ""


def test_sigterm_to_a_multi_worker_run_stops_every_worker(tmp_path):
    delay = 0.6
    config = stubborn_study(tmp_path, "workers", n_trials=8, delay=delay)
    proc = subprocess.Popen(jointopt("run", str(config), "--workers", "2", "--no-tracking"),
                            cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(generating(tmp_path, "workers", delay, complete=1, running=2), 240, proc,
                 "two trials in flight")
        took, out, tree, left = stop_with_sigterm(proc, timeout=60)
    finally:
        proc.kill()
        proc.wait()
    children = {int(p) for p in (tmp_path / "children.pid").read_text().split()}
    assert len(children) == 2 and children <= {r.pid for r in tree}
    assert len(tree) >= 4, "two workers, each with an engine child"
    assert not left, f"processes left running: {left}"
    assert took is not None, f"no exit within 60 s of SIGTERM:\n{out}"
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert took < 30, f"exit took {took:.1f} s"
    trials = optuna_trials(tmp_path, "workers")
    assert not by_state(trials, "RUNNING"), [(t.number, t.state.name) for t in trials]
    stopped = by_state(trials, "FAIL")
    # both were in flight a moment before the signal; one may have finished in between
    assert 1 <= len(stopped) <= 2, [(t.number, t.state.name) for t in trials]
    for t in stopped:
        assert "SIGTERM" in t.user_attrs["fail_reason"], t.user_attrs["fail_reason"]
    assert len(by_state(trials, "WAITING")) == len(stopped), "each queued for a retry"


# ------------------------------------------------------------------------------ units


def _spawn_stubborn_tree() -> subprocess.Popen:
    """A SIGTERM-ignoring process with a SIGTERM-ignoring child of its own."""
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            f" c = subprocess.Popen([sys.executable, '-c', {IGNORES_SIGTERM!r}],"
            " stdout=subprocess.PIPE, text=True); c.stdout.readline();"
            " print('ready', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_end_processes_kills_a_tree_that_ignores_sigterm():
    proc = _spawn_stubborn_tree()
    try:
        tree = [process_ref(proc.pid), *descendants(proc.pid)]
        assert len(tree) == 2 and all(is_running(r) for r in tree)
        started = time.monotonic()
        killed = end_processes(tree, grace=0.5)
        assert sorted(r.pid for r in killed) == sorted(r.pid for r in tree)
        assert time.monotonic() - started < 5
        proc.wait(timeout=5)
        assert_all_gone(tree)
    finally:
        proc.kill()
        proc.wait()


def test_a_reused_pid_is_never_signalled():
    from jointopt.processes import ProcessRef

    me = process_ref(os.getpid())
    assert me is not None and is_running(me)
    impostor = ProcessRef(os.getpid(), "1")  # same pid, another start time
    assert not is_running(impostor)
    assert end_processes([impostor], grace=0.1) == []  # and we are still here


def test_stop_on_signals_raises_once_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts the sleep
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    assert isinstance(info.value, KeyboardInterrupt)
    assert "SIGTERM" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) is before
    # a second signal during the cleanup is logged, not raised
    with pytest.raises(Interrupted):
        with stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives while "cleaning up"
                time.sleep(0.05)


def _stubborn_engine_core() -> None:  # pragma: no cover - runs in a spawned process
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE,
                              text=True)
    worker.stdout.readline()
    time.sleep(600)


class _Namespace:
    def __init__(self, **attrs) -> None:
        self.__dict__.update(attrs)


def test_vllm_close_ends_engine_processes_that_survive_vllms_shutdown():
    """A stand-in for ``vllm.LLM``: an engine-core process (with a worker) that ignores
    SIGTERM, and a ``shutdown`` that leaves both running."""
    from jointopt.backends.vllm import VLLMBackend

    core = multiprocessing.get_context("spawn").Process(target=_stubborn_engine_core,
                                                        name="EngineCore", daemon=True)
    core.start()
    try:
        deadline = time.monotonic() + 60
        while not descendants(core.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = [process_ref(core.pid), *descendants(core.pid)]
        assert len(tree) == 2
        shutdown_calls = []
        client = _Namespace(shutdown=lambda: shutdown_calls.append(1),
                            resources=_Namespace(engine_manager=_Namespace(processes=[core])))
        backend = VLLMBackend.__new__(VLLMBackend)
        backend._llm = _Namespace(llm_engine=_Namespace(engine_core=client))
        backend.close()
        assert shutdown_calls == [1], "vLLM's own shutdown runs first"
        assert_all_gone(tree, timeout=1)
        backend.close()  # twice is fine
    finally:
        if core.is_alive():
            core.kill()
        core.join(timeout=5)
