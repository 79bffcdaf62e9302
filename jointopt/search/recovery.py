"""Crash recovery: who runs a trial, and failing (then retrying) the trials of dead workers.

A trial records its worker (host, boot id, pid, process start time). A RUNNING trial whose
process is gone from this machine is failed at once (and retried with the same parameters
by the retry callback); trials of other machines are failed by the heartbeat after
``grace_period``.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.processes import proc_stat as _proc_stat
from jointopt.processes import start_ticks as _start_ticks
from jointopt.search.storage import FAIL_ATTR, WORKER_ATTR, retry_callback

if TYPE_CHECKING:
    import optuna

    from jointopt.search.config import OptimizerConfig

__all__ = ["worker_identity", "process_is_gone", "study_counts", "recover_trials"]

log = logging.getLogger(__name__)


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


def study_counts(study: "optuna.Study") -> tuple[int, int, int]:
    """(COMPLETE, RUNNING, WAITING) proposed trials of the study: derived trials are left
    out, raced-out (PRUNED) trials count as complete."""
    from optuna.trial import TrialState

    from jointopt.search.derived import is_derived, raced_out

    counts = {TrialState.COMPLETE: 0, TrialState.RUNNING: 0, TrialState.WAITING: 0}
    for t in study.get_trials(deepcopy=False, states=(*counts, TrialState.PRUNED)):
        if t.state == TrialState.PRUNED:  # a raced-out proposal is done
            counts[TrialState.COMPLETE] += raced_out(t)
        elif not is_derived(t):  # derived trials are not proposed: n_trials leaves them out
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
    callback = retry_callback(opt.max_trial_retries)
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
