"""Several processes, one study: storages, worker identity, crash recovery, the worker loop.

Everything here uses Optuna's own mechanisms; jointopt adds no scheduler of its own:

* **Storage.** Any SQLAlchemy URL becomes an ``optuna.storages.RDBStorage`` with a heartbeat
  (``optimizer.heartbeat_interval``) and ``RetryHeartbeatStaleTrialCallback``
  (``optimizer.max_trial_retries``); ``journal:///abs/path/file.log`` becomes an
  ``optuna.storages.JournalStorage`` on a ``JournalFileBackend``, given the same heartbeat
  through Optuna's ``BaseHeartbeat`` interface (:class:`HeartbeatJournalStorage`). Trial
  numbers come from the storage (unique, in creation order).
* **Trials.** Each worker runs ``study.optimize`` (Optuna's loop: stale trials are failed
  before each trial, a heartbeat thread runs during it, waiting retries are popped first).
  A worker stops when the study holds ``n_trials`` COMPLETE + RUNNING trials
  (``optuna.study.MaxTrialsCallback`` semantics, checked before each trial). Two workers
  that pass that check at the same moment are told apart right after ``ask()`` by trial
  number: a trial whose lower-numbered COMPLETE + RUNNING trials already fill the study is
  surplus, is PRUNED before it suggests anything (no policy, no compute, no MLflow run),
  and its worker stops. So the study ends with exactly ``n_trials`` complete trials.
* **Crashes.** A trial records its worker (host, boot id, pid, process start time). A
  RUNNING trial whose process is gone from this machine is failed at once (and retried
  with the same parameters by the retry callback); trials of other machines are failed by
  the heartbeat after ``grace_period``. A worker that has nothing left to start but sees
  RUNNING trials waits for them (polling, failing stale ones) so that a retry created by a
  crash is still run in the same session.
* **Stops.** A worker stopped by SIGTERM or Ctrl-C (:class:`~jointopt.processes.Interrupted`
  or ``KeyboardInterrupt`` in its main thread) fails its trial in flight with the reason and
  queues its retry, as recovery does for a dead worker; :func:`launch_workers` passes the
  signal on to its worker processes and waits for them.
* **Outages.** A trial that raises a :class:`~jointopt.errors.JointoptError` is FAIL with the
  reason in its ``fail_reason`` user attribute and the worker goes on; after
  ``optimizer.max_consecutive_failures`` failures in a row it stops with
  :class:`TooManyFailures`.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.errors import ConfigError, JointoptError
from jointopt.safety.secrets import redact, register_url, safe_url
from jointopt.processes import proc_stat as _proc_stat
from jointopt.processes import start_ticks as _start_ticks

if TYPE_CHECKING:
    import optuna

    from jointopt.search.config import OptimizerConfig

__all__ = [
    "JOURNAL_SCHEME",
    "WORKER_ATTR",
    "MLFLOW_ATTR",
    "FAIL_ATTR",
    "SURPLUS_ATTR",
    "TooManyFailures",
    "HeartbeatJournalStorage",
    "WorkerReport",
    "make_storage",
    "worker_identity",
    "process_is_gone",
    "recover_trials",
    "study_counts",
    "work_on_study",
]

log = logging.getLogger(__name__)

JOURNAL_SCHEME = "journal://"
#: Trial user attributes written by jointopt.
WORKER_ATTR = "worker"
MLFLOW_ATTR = "mlflow_run_id"
FAIL_ATTR = "fail_reason"
SURPLUS_ATTR = "surplus"
HEARTBEAT_ATTR = "jointopt:heartbeat"


class TooManyFailures(JointoptError):
    """A worker stopped after ``optimizer.max_consecutive_failures`` failed trials in a row."""


# ------------------------------------------------------------------------------ storage


class _RetryDeadTrial:
    """Optuna's ``RetryHeartbeatStaleTrialCallback`` (a WAITING copy of the dead trial with
    the same parameters), minus the dead run's worker, MLflow run and failure reason, plus
    a ``retry_of`` user attribute naming the trial it repeats."""

    def __init__(self, max_retry: int) -> None:
        from optuna import storages

        cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) \
            or storages.RetryFailedTrialCallback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._inner = cls(max_retry=max_retry)

    def __call__(self, study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
        trial = copy.deepcopy(trial)
        attrs = {k: v for k, v in trial.user_attrs.items()
                 if k not in (WORKER_ATTR, MLFLOW_ATTR, FAIL_ATTR)}
        attrs["retry_of"] = trial.number
        trial.user_attrs = attrs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._inner(study, trial)


def _retry_callback(max_retry: int) -> Any:
    return _RetryDeadTrial(max_retry) if max_retry > 0 else None


def _heartbeat_base() -> type:
    try:
        from optuna.storages._heartbeat import BaseHeartbeat
    except ImportError:  # pragma: no cover - very old Optuna
        return object
    return BaseHeartbeat


def _journal_storage_class() -> type:
    from optuna.storages import JournalStorage
    from optuna.trial import TrialState

    base = _heartbeat_base()

    class _Storage(JournalStorage, base):  # type: ignore[misc, valid-type]
        """``JournalStorage`` with Optuna's heartbeat interface: the heartbeat of a running
        trial is a system attribute (wall-clock time of the worker, so machines sharing a
        journal file need synchronised clocks)."""

        def __init__(self, backend: Any, heartbeat_interval: int | None,
                     grace_period: int | None, callback: Any) -> None:
            super().__init__(backend)
            self.heartbeat_interval = heartbeat_interval
            self.grace_period = grace_period
            self.stale_callback = callback

        def record_heartbeat(self, trial_id: int) -> None:
            try:
                self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
            except Exception as exc:  # noqa: BLE001 - finished by another worker, I/O
                log.debug("heartbeat of trial id %d not recorded: %s", trial_id, exc)

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            grace = self.grace_period or 2 * (self.heartbeat_interval or 1)
            now = time.time()
            stale = []
            for trial in self.get_all_trials(study_id, deepcopy=False,
                                             states=(TrialState.RUNNING,)):
                beat = trial.system_attrs.get(HEARTBEAT_ATTR)
                if beat is None and trial.datetime_start is not None:
                    beat = trial.datetime_start.timestamp()
                if beat is not None and now - float(beat) > grace:
                    stale.append(trial._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self) -> Any:
            return self.stale_callback

        def get_failed_trial_callback(self) -> Any:  # Optuna < 4.9
            return self.stale_callback

    return _Storage


_JOURNAL_CLASS: type | None = None


def HeartbeatJournalStorage(backend: Any, heartbeat_interval: int | None = None,  # noqa: N802
                            grace_period: int | None = None, callback: Any = None) -> Any:
    """A ``JournalStorage`` on ``backend`` with Optuna's heartbeat (see the module doc)."""
    global _JOURNAL_CLASS
    if _JOURNAL_CLASS is None:
        _JOURNAL_CLASS = _journal_storage_class()
    return _JOURNAL_CLASS(backend, heartbeat_interval, grace_period, callback)


def journal_path(url: str) -> Path:
    """``journal:///abs/path/file.log`` -> ``/abs/path/file.log``."""
    rest = url[len(JOURNAL_SCHEME):]
    if not rest.startswith("/"):
        raise ConfigError("a journal storage URL needs an absolute path",
                          where="optimizer.storage", value=url,
                          fix="write journal:///absolute/path/study.log (three slashes)")
    return Path(rest)


def make_storage(url: str, opt: "OptimizerConfig") -> Any:
    """The Optuna storage object of ``url`` with heartbeat and retry of dead trials.

    Raises:
        ConfigError: an unknown scheme, a missing database driver, or a storage that cannot
            be opened (after a few attempts: several workers may create its tables at once).
    """
    import optuna

    callback = _retry_callback(opt.max_trial_retries)
    register_url(url)
    if url.startswith(JOURNAL_SCHEME):
        from optuna.storages.journal import JournalFileBackend

        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            backend = JournalFileBackend(str(path))
        except Exception as exc:  # noqa: BLE001 - OS errors of the file
            raise ConfigError(f"cannot open the journal file: {exc}", where="optimizer.storage",
                              value=url, fix="check the path and its permissions") from None
        return HeartbeatJournalStorage(backend, opt.heartbeat_interval, opt.grace_period,
                                       callback)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme:
        raise ConfigError("not a storage URL", where="optimizer.storage", value=safe_url(url),
                          fix="use sqlite:///abs/path.db, postgresql+psycopg2://user@host/db "
                              "or journal:///abs/path/study.log")
    engine_kwargs: dict[str, Any] = {}
    if scheme.startswith("sqlite"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2"):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None:
            raise ConfigError("the PostgreSQL driver psycopg2 is not installed",
                              where="optimizer.storage", value=safe_url(url),
                              fix="pip install 'jointopt[postgres]' (or bash scripts/setup.sh)")
    heartbeat: dict[str, Any] = {"heartbeat_interval": opt.heartbeat_interval,
                                 "grace_period": opt.grace_period}
    import inspect

    params = inspect.signature(optuna.storages.RDBStorage).parameters
    key = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params
           else "failed_trial_callback")
    heartbeat[key] = callback
    last: Exception | None = None
    for attempt in range(6):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except Exception as exc:  # noqa: BLE001 - drivers raise many kinds
            last = exc
            # Several workers creating the tables of a fresh database at once collide.
            time.sleep(0.2 * (2 ** attempt) * (0.5 + random.random()))
    raise ConfigError(
        f"cannot open the Optuna storage: {type(last).__name__}: "
        f"{redact(str(last).splitlines()[0] if str(last) else '')}",
        where="optimizer.storage", value=safe_url(url),
        fix="check that the database server is running and the URL (user, host, port, "
            "database name) is right") from None


# ------------------------------------------------------------------------------ identity


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def worker_identity() -> dict[str, Any]:
    """Who runs a trial: host name, boot id, pid and the process start time (Linux)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": pid,
            "started": _start_ticks(pid)}


def process_is_gone(identity: Any) -> bool:
    """True when ``identity`` names a process of *this* machine that no longer runs (or a
    boot of this machine that is over). False when it is alive or on another machine."""
    if not isinstance(identity, dict):
        return False
    if identity.get("host") != socket.gethostname():
        return False
    boot = identity.get("boot")
    if boot and _boot_id() and boot != _boot_id():
        return True
    pid = identity.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields is None:  # no /proc (not Linux): the pid exists, so assume it is alive
        return False
    if fields and fields[0] == "Z":  # a zombie: dead, not yet reaped
        return True
    started = identity.get("started")
    return bool(started) and len(fields) > 19 and fields[19] != started


# ------------------------------------------------------------------------------ recovery


def study_counts(study: "optuna.Study") -> tuple[int, int, int]:
    """(COMPLETE, RUNNING, WAITING) trials of the study."""
    from optuna.trial import TrialState

    counts = {TrialState.COMPLETE: 0, TrialState.RUNNING: 0, TrialState.WAITING: 0}
    for t in study.get_trials(deepcopy=False, states=tuple(counts)):
        counts[t.state] += 1
    return counts[TrialState.COMPLETE], counts[TrialState.RUNNING], counts[TrialState.WAITING]


def recover_trials(study: "optuna.Study", opt: "OptimizerConfig") -> list[int]:
    """Fail the RUNNING trials whose worker is dead and queue their retries.

    * Optuna's ``fail_stale_trials`` (heartbeat older than the grace period; any machine);
    * RUNNING trials of a process of this machine that is gone (checked by pid and process
      start time: a killed single-process run is recovered at once when rerun);
    * RUNNING trials without a worker record (written by nothing jointopt runs) older than
      the grace period.

    Every failed trial is handed to the retry callback (a WAITING copy with the same
    parameters, up to ``optimizer.max_trial_retries`` times). Safe when several workers
    recover at once: the storage lets only one of them fail a trial.

    Returns:
        numbers of the trials this call failed.
    """
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    grace = opt.grace_period or 2 * opt.heartbeat_interval
    me = worker_identity()
    callback = _retry_callback(opt.max_trial_retries)
    failed = []
    for t in running:
        ident = t.user_attrs.get(WORKER_ATTR)
        if ident == me:
            continue  # this process
        if ident is None:
            age = (time.time() - t.datetime_start.timestamp()) if t.datetime_start else 0.0
            dead = age > grace
            reason = "the trial was left RUNNING by a process that no longer reports"
        else:
            dead = process_is_gone(ident)
            reason = (f"the worker process died during the trial ({ident.get('host')} pid "
                      f"{ident.get('pid')}); failed at recovery")
        if not dead:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, FAIL_ATTR, reason)
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker recovered it first
        failed.append(t.number)
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(t._trial_id)))
    # Optuna's heartbeat: trials of any machine whose heartbeat is older than the grace
    # period. The reason is recorded first (best effort: Optuna's loop may get there first).
    stale_ids = getattr(storage, "_get_stale_trial_ids", None)
    if callable(stale_ids) and getattr(storage, "get_heartbeat_interval", lambda: None)():
        for trial_id in stale_ids(study._study_id):
            try:
                storage.set_trial_user_attr(
                    trial_id, FAIL_ATTR, f"no heartbeat for more than {grace} s (the worker "
                                         "died or lost the storage); failed by the heartbeat")
            except UpdateFinishedTrialError:
                pass
        ids = {t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        for trial_id in ids:
            t = storage.get_trial(trial_id)
            if t.state == TrialState.FAIL:
                failed.append(t.number)
    if failed:
        log.warning("failed %d trial(s) of dead workers: %s%s", len(failed),
                    ", ".join(f"#{n}" for n in sorted(failed)),
                    " (queued for retry)" if callback is not None else "")
    return sorted(failed)


# ------------------------------------------------------------------------------ the loop


@dataclass
class WorkerReport:
    """What one worker did."""

    pid: int = field(default_factory=os.getpid)
    started: int = 0
    complete: int = 0
    failed: int = 0
    surplus: int = 0
    error: str | None = None
    #: "full" (the study holds n_trials), "failures", "orphaned", "interrupted"
    stopped: str = "full"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _surplus(study: "optuna.Study", trial: "optuna.Trial", target: int) -> bool:
    """MaxTrialsCallback semantics after ``ask()``: COMPLETE trials plus RUNNING trials that
    were created before this one already reach ``target``."""
    from optuna.trial import TrialState

    taken = 0
    for t in study.get_trials(deepcopy=False,
                              states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if t.state == TrialState.COMPLETE or t.number < trial.number:
            taken += 1
    return taken >= target


class _QuietExpectedFailures(logging.Filter):
    """Optuna logs a failed trial (twice, with its traceback); jointopt logs the reason of
    a JointoptError in one line, and any other error propagates with its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Trial ") or " failed" not in str(record.msg)


_QUIET = _QuietExpectedFailures()


def work_on_study(
    study: "optuna.Study",
    opt: "OptimizerConfig",
    target: int,
    run_trial: Callable[["optuna.Trial"], list[float]],
    *,
    after_trial: Callable[["optuna.trial.FrozenTrial", int], None] | None = None,
    get_ready: Callable[[], None] | None = None,
    parent_pid: int | None = None,
    linger: bool = True,
) -> WorkerReport:
    """Run trials of ``study`` in this process until it holds ``target`` COMPLETE trials.

    Args:
        run_trial: evaluates one trial (after the surplus check) and returns its values;
            raises a JointoptError for an expected failure (sets ``fail_reason`` first).
        after_trial: called with every finished, non-surplus trial (after Optuna's tell)
            and the number of COMPLETE trials of the study.
        get_ready: called once before the first trial this worker starts (engine loading).
        parent_pid: stop when this process is no longer our parent (the launcher died).
        linger: wait for RUNNING trials of other workers instead of stopping while they
            could still fail and free a slot.

    Raises:
        TooManyFailures: ``opt.max_consecutive_failures`` failed trials in a row.
    """
    import optuna
    from optuna.trial import TrialState

    report = WorkerReport()
    streak: list[str] = []
    ready = [get_ready is None]
    current: list[int | None] = [None]  # storage id of the trial this worker is running
    logging.getLogger("optuna.study._optimize").addFilter(_QUIET)

    def orphaned() -> bool:
        return parent_pid is not None and os.getppid() != parent_pid

    def objective(trial: "optuna.Trial") -> list[float]:
        if _surplus(study, trial, target):
            trial.set_user_attr(SURPLUS_ATTR, True)
            report.surplus += 1
            study.stop()
            raise optuna.TrialPruned(f"surplus: the study already holds {target} complete "
                                     "or running trials")
        report.started += 1
        current[0] = trial._trial_id
        try:
            if not ready[0]:
                get_ready()  # type: ignore[misc]
                ready[0] = True
            return run_trial(trial)
        except KeyboardInterrupt as exc:
            if FAIL_ATTR not in trial.user_attrs:
                trial.set_user_attr(FAIL_ATTR, _interrupt_reason(exc))
            raise

    def callback(st: "optuna.Study", frozen: "optuna.trial.FrozenTrial") -> None:
        current[0] = None
        if frozen.user_attrs.get(SURPLUS_ATTR):
            return
        if frozen.state == TrialState.COMPLETE:
            report.complete += 1
            streak.clear()
        elif frozen.state == TrialState.FAIL:
            report.failed += 1
            reason = str(frozen.user_attrs.get(FAIL_ATTR, "no reason recorded"))
            streak.append(f"trial {frozen.number}: {reason.splitlines()[0]}")
        recover_trials(st, opt)
        complete = study_counts(st)[0]
        if after_trial is not None:
            after_trial(frozen, complete)
        if len(streak) >= opt.max_consecutive_failures:
            report.stopped = "failures"
            st.stop()
        elif orphaned():
            report.stopped = "orphaned"
            st.stop()

    poll = max(0.2, min(2.0, opt.heartbeat_interval / 2))
    try:
        while True:
            if orphaned():
                report.stopped = "orphaned"
                break
            recover_trials(study, opt)
            complete, running, _ = study_counts(study)
            if complete >= target:
                break
            if complete + running >= target:
                if not linger or running == 0:
                    break
                time.sleep(poll)  # a running trial may still fail and free its slot
                continue
            full = optuna.study.MaxTrialsCallback(
                target, states=(TrialState.COMPLETE, TrialState.RUNNING))
            study.optimize(objective, callbacks=[callback, full], catch=(JointoptError,),
                           gc_after_trial=False)
            if report.stopped in ("failures", "orphaned"):
                break
    except KeyboardInterrupt as exc:
        report.stopped = "interrupted"
        if current[0] is not None:
            _settle_interrupted(study, opt, current[0], _interrupt_reason(exc))
        raise
    finally:
        logging.getLogger("optuna.study._optimize").removeFilter(_QUIET)
    if report.stopped == "failures":
        last = streak[-1] if streak else ""
        report.error = (f"stopped after {len(streak)} consecutive failed trials "
                        f"(optimizer.max_consecutive_failures = "
                        f"{opt.max_consecutive_failures}); last: {last}")
        raise TooManyFailures(
            report.error, where="optimizer.max_consecutive_failures",
            fix="check the engine or upstream server named in the reason, then rerun the same "
                "command: completed trials are kept and cached generations are reused")
    return report


def _interrupt_reason(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}" if str(exc) else
                  f"{type(exc).__name__}: the worker process was interrupted")


def _settle_interrupted(study: "optuna.Study", opt: "OptimizerConfig", trial_id: int,
                        reason: str) -> None:
    """The trial an interrupted worker was running: FAIL with ``reason`` if it is still
    RUNNING (the signal came while Optuna stored its result), and, once FAIL, queued for a
    retry with the same parameters, as :func:`recover_trials` does for a dead worker."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    try:
        trial = storage.get_trial(trial_id)
        if trial.state == TrialState.RUNNING:
            storage.set_trial_user_attr(trial_id, FAIL_ATTR, reason)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            trial = storage.get_trial(trial_id)
        if trial.state != TrialState.FAIL:
            return
        log.warning("trial %d failed: %s", trial.number, trial.user_attrs.get(FAIL_ATTR, reason))
        callback = _retry_callback(opt.max_trial_retries)
        if callback is not None:
            callback(study, copy.deepcopy(trial))
    except UpdateFinishedTrialError:
        pass  # another worker recovered it first
    except Exception as exc:  # noqa: BLE001 - stopping must go on; a rerun recovers it
        log.warning("the interrupted trial was not settled (%s); rerunning recovers it", exc)


# ------------------------------------------------------------------------------ launcher


def _child_entry(config: Any, target: int, index: int, parent_pid: int, queue: Any,
                 verbose: int) -> None:
    """Process body of a worker started by :func:`launch_workers` (spawned).

    SIGTERM (sent by the launcher when it is stopped) and SIGINT fail the trial in flight
    and close the engine, as in ``jointopt run``; a spawned process does not inherit the
    launcher's handlers, and the default SIGTERM action would orphan the engine."""
    import sys

    from jointopt.search.logs import setup_logging
    from jointopt.processes import ending_new_children, stop_on_signals

    setup_logging(verbose)
    try:
        with stop_on_signals(), ending_new_children():
            from jointopt.search.study import work_in_child

            report = work_in_child(config, target, index, parent_pid)
        queue.put({"index": index, **report.to_dict()})
    except TooManyFailures as exc:
        queue.put({"index": index, "error": str(exc), "stopped": "failures"})
        sys.exit(2)
    except JointoptError as exc:
        queue.put({"index": index, "error": str(exc), "stopped": "error"})
        sys.exit(2)
    except KeyboardInterrupt as exc:
        sys.exit(getattr(exc, "exit_code", 130))


def launch_workers(plan: Any, study: "optuna.Study", n: int, target: int, *,
                   on_trial: Callable[..., None] | None = None,
                   on_started: Callable[[], None] | None = None,
                   poll: float = 0.5) -> TooManyFailures | None:
    """Start ``n`` worker processes on this machine (``multiprocessing``, spawn) and wait for
    them, reporting finished trials of the study (from the storage) to ``on_trial``.

    The caller has created the study and the MLflow parent run, so the workers only find
    them. A worker stops when the study is full, after too many consecutive failures, or
    when this process dies (it checks its parent pid after every trial).

    Returns:
        the first :class:`TooManyFailures` a worker reported (None when all ended normally).

    Raises:
        JointoptError: a worker crashed or failed with another error.
    """
    import multiprocessing

    from optuna.trial import TrialState

    from jointopt.search.study import summarize

    verbose = _verbosity()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_child_entry, name=f"jointopt-worker-{i}",
                         args=(plan.config, target, i, os.getpid(), queue, verbose))
             for i in range(n)]
    seen = {t.number for t in study.get_trials(deepcopy=False)
            if t.state.is_finished()}
    reports: list[dict[str, Any]] = []

    def drain() -> None:
        while True:
            try:
                reports.append(queue.get_nowait())
            except Exception:  # noqa: BLE001 - queue.Empty
                return

    def progress() -> None:
        if on_trial is None:
            return
        finished = [t for t in study.get_trials(deepcopy=False,
                                                states=(TrialState.COMPLETE, TrialState.FAIL))
                    if t.number not in seen]
        if not finished:
            return
        complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        for t in sorted(finished, key=lambda t: t.number):
            seen.add(t.number)
            on_trial(summarize(t), complete, target)

    try:
        for proc in procs:
            proc.start()
        log.info("started %d workers: pids %s", n, ", ".join(str(p.pid) for p in procs))
        if on_started:
            on_started()
        while any(p.is_alive() for p in procs):
            time.sleep(poll)
            drain()
            progress()
    except KeyboardInterrupt:
        from jointopt.processes import stop_children

        # SIGTERM each worker (it fails its trial in flight and closes its engine); after
        # a minute, end whatever of their process trees still runs
        stop_children(procs, grace=60.0)
        raise
    for proc in procs:
        proc.join()
    drain()
    progress()
    failures = [r for r in reports if r.get("stopped") == "failures"]
    errors = [r for r in reports if r.get("stopped") == "error"]
    reported = {r["index"] for r in reports}
    crashed = [(i, p.exitcode) for i, p in enumerate(procs)
               if i not in reported and p.exitcode != 0]
    if errors:
        raise JointoptError(f"worker {errors[0]['index']} stopped: {errors[0]['error']}")
    if crashed:
        i, code = crashed[0]
        raise JointoptError(f"worker {i} exited with code {code} (see its log above); "
                            "completed trials are kept", where="workers",
                            fix="rerun the same command to continue the study")
    if failures:
        return TooManyFailures(failures[0]["error"])
    return None


def _verbosity() -> int:
    level = logging.getLogger("jointopt").getEffectiveLevel()
    return 0 if level >= logging.WARNING else 1 if level >= logging.INFO else 2
