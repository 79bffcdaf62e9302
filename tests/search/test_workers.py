"""Several worker processes on one study: PostgreSQL and journal-file storages.

The PostgreSQL server is a throw-away cluster this module starts (initdb in a temporary
folder, 127.0.0.1 on a free port, run as the ``postgres`` OS user when the tests run as
root). Without PostgreSQL binaries the PostgreSQL test is skipped, except under CI (``$CI``
set), where ``.ci/run`` installs them and their absence is a failure.

The workers generate with ``jointopt.testing:scripted_backend`` (named in the study config,
so every process builds its own), which appends one line per generated completion to a log
file: engine work is counted across processes.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
N_TRIALS = 10

SPACE = {
    "prompts": [
        {"id": "direct", "user": "{{ question }}"},
        {"id": "strict", "system": "Answer with the words only.", "user": "{{ question }}"},
        {"id": "fewshot", "user": "{{ question }}", "shots": 2},
    ],
    "strategies": {"single": {}, "majority": {"n": {"low": 2, "high": 4}}},
    # continuous: two trials with the same policy would only come from a bug (e.g. every
    # worker seeding its sampler the same way, or a trial run twice)
    "temperature": {"low": 0.05, "high": 1.0},
    "max_tokens": 16,
}


def write_study(folder: Path, *, name: str = "scale", n_trials: int = N_TRIALS,
                delay: float = 0.25, storage: str | None = None, **engine) -> Path:
    """A study config on the scripted backend (every process builds its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    # Worker mechanics only: every complete trial is a proposed one (no derived trials).
    optimizer = {"n_trials": n_trials, "seed": 0, "heartbeat_interval": 1,
                 "expand_variants": False}
    if storage:
        optimizer["storage"] = storage
    config = {
        "name": name,
        "output_dir": str(folder / "run"),
        "model": {"backend": "jointopt.testing:scripted_backend", "model": "scripted",
                  "engine": {"responder": "reverse_words", "delay": delay,
                             "log_file": str(folder / "generated.log"), **engine}},
        "task": {"builtin": {"family": "reverse_words", "levels": [1, 2], "n_per_level": 3,
                             "seed": 0, "n_demos": 2}},
        "search_space": "space.yaml",
        "optimizer": optimizer,
        "tracking": {"enabled": True},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def jointopt(*args: str) -> list[str]:
    return [sys.executable, "-m", "jointopt.cli.app", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def load(storage: str, name: str = "scale"):
    import optuna

    from jointopt.search.config import OptimizerConfig
    from jointopt.search.storage import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(storage, OptimizerConfig()))


def mlflow_runs(out: Path, name: str = "scale"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def check_study(storage: str, folder: Path, workers: int) -> None:
    """The acceptance checks shared by both storages."""
    from optuna.trial import TrialState

    study = load(storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS, [(t.number, t.state.name) for t in trials]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)), "duplicate trial numbers"
    assert sorted(numbers) == list(range(len(trials)))
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert not failed, [(t.number, t.user_attrs.get("fail_reason")) for t in failed]
    # every policy evaluated once: no two complete trials with the same parameters
    keys = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(keys)) == len(keys), "a policy was evaluated twice"
    pids = {t.user_attrs["worker"]["pid"] for t in complete}
    assert 2 <= len(pids) <= workers, pids
    # surplus trials (two workers passing the n_trials check at once) were cut before
    # suggesting anything
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert t.user_attrs.get("surplus") and not t.params

    client, runs = mlflow_runs(folder / "run")
    parents = [r for r in runs if r.data.tags.get("jointopt.role") == "study"]
    assert len(parents) == 1, [r.info.run_id for r in parents]
    parent = parents[0].info.run_id
    assert study.user_attrs["mlflow_parent_run_id"] == parent
    trial_runs = [r for r in runs if r.data.tags.get("jointopt.role") == "trial"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in trial_runs)
    assert not [r for r in trial_runs if r.info.status == "RUNNING"]
    by_number = collections.Counter(int(r.data.tags["jointopt.trial"]) for r in trial_runs
                                    if r.info.status == "FINISHED")
    assert by_number == collections.Counter(t.number for t in complete)
    for t in complete:
        assert t.user_attrs["mlflow_run_id"] in {r.info.run_id for r in trial_runs}
    assert (folder / "run" / "pareto.csv").is_file()


# ------------------------------------------------------------------------------ PostgreSQL


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run installs postgresql and setup.sh psycopg2)",
                    pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL cluster of its own: ``(host, port)``; stopped at the end."""
    bindir = _postgres_bin()
    if bindir is None:
        _unavailable("PostgreSQL binaries not found (apt-get install postgresql)")
    try:
        import psycopg2
    except ImportError:
        _unavailable("psycopg2 is not installed (pip install 'jointopt[postgres]')")
    root = Path(tempfile.mkdtemp(prefix="jointopt-pg-"))
    demote = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("no `postgres` OS user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)

        def demote() -> None:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

    data = root / "data"
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True,
                   preexec_fn=demote)
    port = _free_port()
    log = open(root.parent / f"{root.name}.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=demote)
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg2.connect(host="127.0.0.1", port=port, user="postgres",
                             dbname="postgres").close()
            break
        except psycopg2.OperationalError:
            if server.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail("PostgreSQL did not start: "
                            + Path(log.name).read_text(errors="replace")[-2000:])
            time.sleep(0.2)
    try:
        yield "127.0.0.1", port
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown: do not wait for clients
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
        Path(log.name).unlink(missing_ok=True)


def _database(server: tuple[str, int], name: str) -> str:
    import psycopg2

    host, port = server
    conn = psycopg2.connect(host=host, port=port, user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return f"postgresql+psycopg2://postgres@{host}:{port}/{name}"


def test_four_workers_on_postgresql(postgres_server, tmp_path):
    """Four `jointopt worker` processes started at the same moment on a fresh database: they
    create the tables, the study and the MLflow parent run together."""
    url = _database(postgres_server, "four_workers")
    config = write_study(tmp_path)
    procs = [subprocess.Popen(jointopt("worker", str(config), "--storage", url),
                              cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        outputs.append(out)
    assert [p.returncode for p in procs] == [0, 0, 0, 0], "\n---\n".join(outputs)
    check_study(url, tmp_path, workers=4)
    # the password-free URL is what MLflow saw
    _, runs = mlflow_runs(tmp_path / "run")
    parent = next(r for r in runs if r.data.tags.get("jointopt.role") == "study")
    assert parent.data.params["storage"] == url
    assert parent.info.status == "FINISHED"


def test_four_workers_on_a_journal_file(tmp_path):
    """`jointopt run --workers 4` on a journal file: the launcher creates the study and the
    parent run, four spawned processes run the trials."""
    journal = tmp_path / "journal" / "study.log"
    url = f"journal://{journal}"
    config = write_study(tmp_path)
    result = subprocess.run(jointopt("run", str(config), "--storage", url, "--workers", "4"),
                            cwd=tmp_path, env=child_env(), capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert journal.is_file()
    check_study(url, tmp_path, workers=4)
    assert "4 workers" in result.stdout


# ------------------------------------------------------------------------------ units


def test_process_is_gone_knows_dead_zombie_and_foreign_processes():
    from jointopt.processes import start_ticks as _start_ticks
    from jointopt.search.recovery import process_is_gone, worker_identity

    me = worker_identity()
    assert process_is_gone(me) is False
    assert process_is_gone({**me, "host": "another-machine", "pid": 999999}) is False
    assert process_is_gone({**me, "started": "1"}) is True  # pid reused by another process
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ident = {**me, "pid": child.pid, "started": _start_ticks(child.pid)}
    assert process_is_gone(ident) is False
    child.kill()
    time.sleep(0.2)
    assert process_is_gone(ident) is True  # a zombie, not reaped yet
    child.wait()
    assert process_is_gone(ident) is True


def test_workers_count_running_trials_and_prune_surplus_ones(tmp_path):
    """MaxTrialsCallback semantics: COMPLETE + RUNNING trials fill the study; a trial asked
    when lower-numbered ones already fill it is surplus."""
    import optuna

    from jointopt.search.config import load_config
    from jointopt.search.study import open_study
    from jointopt.search.plan import plan_study
    from jointopt.processes import start_ticks as _start_ticks
    from jointopt.search.storage import WORKER_ATTR
    from jointopt.search.workers import _surplus, work_on_study

    config = load_config(write_study(tmp_path, name="units"))
    study = open_study(plan_study(config))
    study.add_trial(optuna.trial.create_trial(values=[0.5, 10.0]))
    running = study.ask()
    parent = os.getppid()  # alive, on this machine: its trial is not touched
    running.set_user_attr(WORKER_ATTR, {"host": socket.gethostname(), "pid": parent,
                                        "started": _start_ticks(parent), "boot": ""})
    ran = []

    def run_trial(trial):
        ran.append(trial.number)
        return [0.7, 12.0]

    work_on_study(study, config.optimizer, 2, run_trial, linger=False)
    assert ran == [], "1 complete + 1 running already make 2"
    work_on_study(study, config.optimizer, 3, run_trial, linger=False)
    assert ran == [2]
    assert running.number == 1 and study.trials[1].state.name == "RUNNING"

    first, second = study.ask(), study.ask()  # two workers passing the check at once
    # 2 complete + #1 running: #3 fits a study of 4, #4 does not
    assert not _surplus(study, first, 4) and _surplus(study, second, 4)
