"""The Optuna storage of a study, and the trial attributes jointopt keeps in it.

Any SQLAlchemy URL becomes an ``optuna.storages.RDBStorage`` with a heartbeat
(``optimizer.heartbeat_interval``) and ``RetryHeartbeatStaleTrialCallback``
(``optimizer.max_trial_retries``); ``journal:///abs/path/file.log`` becomes an
``optuna.storages.JournalStorage`` on a ``JournalFileBackend``, given the same heartbeat
through Optuna's ``BaseHeartbeat`` interface (:class:`HeartbeatJournalStorage`). Trial
numbers come from the storage (unique, in creation order).
"""

from __future__ import annotations

import copy
import logging
import random
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.errors import ConfigError
from jointopt.safety.secrets import redact, register_url, safe_url

if TYPE_CHECKING:
    import optuna

    from jointopt.search.config import OptimizerConfig

__all__ = ["JOURNAL_SCHEME", "WORKER_ATTR", "MLFLOW_ATTR", "FAIL_ATTR", "SURPLUS_ATTR",
           "HeartbeatJournalStorage", "journal_path", "make_storage", "retry_callback"]

log = logging.getLogger(__name__)

JOURNAL_SCHEME = "journal://"
#: Trial user attributes written by jointopt.
WORKER_ATTR = "worker"
MLFLOW_ATTR = "mlflow_run_id"
FAIL_ATTR = "fail_reason"
SURPLUS_ATTR = "surplus"
HEARTBEAT_ATTR = "jointopt:heartbeat"


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


def retry_callback(max_retry: int) -> Any:
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


def _write_ahead(engine: Any) -> None:
    """SQLite in write-ahead-log mode with ``synchronous=NORMAL``: a commit appends to the
    log instead of syncing the database file (a trial sets a dozen attributes, each one
    commit: ~10 ms of disk sync each otherwise). The file stays consistent after a crash;
    a power loss may lose the last commits, which a rerun repeats."""
    from sqlalchemy import event

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened while creating the tables get the pragmas too


def make_storage(url: str, opt: "OptimizerConfig") -> Any:
    """The Optuna storage object of ``url`` with heartbeat and retry of dead trials.

    Raises:
        ConfigError: an unknown scheme, a missing database driver, or a storage that cannot
            be opened (after a few attempts: several workers may create its tables at once).
    """
    import optuna

    callback = retry_callback(opt.max_trial_retries)
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
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                     **heartbeat)
            if scheme.startswith("sqlite"):
                _write_ahead(storage.engine)
            return storage
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
