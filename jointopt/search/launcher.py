"""Several worker processes on this machine (``multiprocessing``, spawn) on one study:
start them, report their finished trials, pass a stop signal on, collect their outcome."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jointopt.errors import JointoptError
from jointopt.search.workers import TooManyFailures

if TYPE_CHECKING:
    import optuna

__all__ = ["launch_workers"]

log = logging.getLogger(__name__)


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

    from jointopt.search.results import summarize

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
    return _outcome(procs, reports)


def _outcome(procs: list[Any], reports: list[dict[str, Any]]) -> TooManyFailures | None:
    """What the ended workers report: the first TooManyFailures (None when all ended
    normally); a worker's other error or crash is raised."""
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
