"""The worker loop: run trials of a shared study in this process until it is full.

Everything here uses Optuna's own mechanisms (storages: :mod:`jointopt.search.storage`;
recovery of dead workers: :mod:`jointopt.search.recovery`); jointopt adds no scheduler:

* **Trials.** Each worker runs ``study.optimize`` (Optuna's loop: stale trials are failed
  before each trial, a heartbeat thread runs during it, waiting retries are popped first).
  A worker stops when the study holds ``n_trials`` COMPLETE + RUNNING trials
  (``optuna.study.MaxTrialsCallback`` semantics, checked before each trial). Two workers
  that pass that check at the same moment are told apart right after ``ask()`` by trial
  number: a trial whose lower-numbered COMPLETE + RUNNING trials already fill the study is
  surplus, is PRUNED before it suggests anything (no policy, no compute, no MLflow run),
  and its worker stops. So the study ends with exactly ``n_trials`` complete trials.
* **Crashes.** A worker that has nothing left to start but sees RUNNING trials waits for
  them (polling, failing stale ones) so that a retry created by a crash is still run in
  the same session.
* **Stops.** A worker stopped by SIGTERM or Ctrl-C (:class:`~jointopt.processes.Interrupted`
  or ``KeyboardInterrupt`` in its main thread) fails its trial in flight with the reason and
  queues its retry, as recovery does for a dead worker;
  :func:`~jointopt.search.launcher.launch_workers` passes the signal on to its worker
  processes and waits for them.
* **Outages.** A trial that raises a :class:`~jointopt.errors.JointoptError` is FAIL with the
  reason in its ``fail_reason`` user attribute and the worker goes on; after
  ``optimizer.max_consecutive_failures`` failures in a row it stops with
  :class:`TooManyFailures`.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from jointopt.errors import JointoptError
from jointopt.safety.secrets import redact
from jointopt.search.budget import budget_spent
from jointopt.search.recovery import recover_trials, study_counts
from jointopt.search.storage import FAIL_ATTR, SURPLUS_ATTR, retry_callback

if TYPE_CHECKING:
    import optuna

    from jointopt.search.config import OptimizerConfig

__all__ = ["TooManyFailures", "WorkerReport", "work_on_study"]

log = logging.getLogger(__name__)


class TooManyFailures(JointoptError):
    """A worker stopped after ``optimizer.max_consecutive_failures`` failed trials in a row."""


@dataclass
class WorkerReport:
    """What one worker did."""

    pid: int = field(default_factory=os.getpid)
    started: int = 0
    complete: int = 0
    failed: int = 0
    surplus: int = 0
    error: str | None = None
    #: "full" (the study holds n_trials), "failures", "orphaned", "interrupted", "budget"
    #: (``optimizer.max_generated_tokens`` is spent)
    stopped: str = "full"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _surplus(study: "optuna.Study", trial: "optuna.Trial", target: int) -> bool:
    """MaxTrialsCallback semantics after ``ask()``: COMPLETE trials plus RUNNING trials that
    were created before this one already reach ``target``."""
    from optuna.trial import TrialState

    from jointopt.search.derived import is_derived, raced_out

    taken = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING,
                                                       TrialState.PRUNED)):
        if is_derived(t) or (t.state == TrialState.PRUNED and not raced_out(t)):
            continue
        if t.state != TrialState.RUNNING or t.number < trial.number:
            taken += 1
    return taken >= target


class _QuietExpectedFailures(logging.Filter):
    """Optuna logs a failed trial (twice, with its traceback); jointopt logs the reason of
    a JointoptError in one line, and any other error propagates with its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Trial ") or " failed" not in str(record.msg)


_QUIET = _QuietExpectedFailures()


class _TrialHooks:
    """What :func:`work_on_study` gives Optuna's loop: the objective (surplus check, engine
    loading, the trial) and the callback after each trial (counts, recovery, stopping)."""

    def __init__(self, study: "optuna.Study", opt: "OptimizerConfig", target: int,
                 run_trial: Callable[["optuna.Trial"], list[float]], report: WorkerReport,
                 after_trial: Callable[["optuna.trial.FrozenTrial", int], None] | None,
                 get_ready: Callable[[], None] | None, parent_pid: int | None) -> None:
        self.study = study
        self.opt = opt
        self.target = target
        self.run_trial = run_trial
        self.report = report
        self.after_trial = after_trial
        self.get_ready = get_ready
        self.parent_pid = parent_pid
        self.streak: list[str] = []
        self.ready = get_ready is None
        self.current: int | None = None  # storage id of the trial this worker is running

    def orphaned(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def objective(self, trial: "optuna.Trial") -> list[float]:
        import optuna

        if budget_spent(self.study, self.opt):
            trial.set_user_attr(SURPLUS_ATTR, True)
            self.report.stopped = "budget"
            self.study.stop()
            raise optuna.TrialPruned("the generation budget "
                                     "(optimizer.max_generated_tokens) is spent")
        if _surplus(self.study, trial, self.target):
            trial.set_user_attr(SURPLUS_ATTR, True)
            self.report.surplus += 1
            self.study.stop()
            raise optuna.TrialPruned(f"surplus: the study already holds {self.target} "
                                     "complete or running trials")
        self.report.started += 1
        self.current = trial._trial_id
        try:
            if not self.ready:
                self.get_ready()  # type: ignore[misc]
                self.ready = True
            return self.run_trial(trial)
        except KeyboardInterrupt as exc:
            if FAIL_ATTR not in trial.user_attrs:
                trial.set_user_attr(FAIL_ATTR, _interrupt_reason(exc))
            raise

    def callback(self, st: "optuna.Study", frozen: "optuna.trial.FrozenTrial") -> None:
        from optuna.trial import TrialState

        report = self.report
        self.current = None
        if frozen.user_attrs.get(SURPLUS_ATTR):
            return
        if frozen.state == TrialState.COMPLETE:
            report.complete += 1
            self.streak.clear()
        elif frozen.state == TrialState.FAIL:
            report.failed += 1
            reason = str(frozen.user_attrs.get(FAIL_ATTR, "no reason recorded"))
            self.streak.append(f"trial {frozen.number}: {reason.splitlines()[0]}")
        recover_trials(st, self.opt)
        complete = study_counts(st)[0]
        if self.after_trial is not None:
            self.after_trial(frozen, complete)
        if len(self.streak) >= self.opt.max_consecutive_failures:
            report.stopped = "failures"
            st.stop()
        elif self.orphaned():
            report.stopped = "orphaned"
            st.stop()


class _Full:
    """``optuna.study.MaxTrialsCallback`` over COMPLETE + RUNNING trials, derived trials
    left out (they are not proposed, so ``n_trials`` does not count them)."""

    def __init__(self, target: int) -> None:
        self.target = target

    def __call__(self, study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
        complete, running, _ = study_counts(study)
        if complete + running >= self.target:
            study.stop()


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
    report = WorkerReport()
    hooks = _TrialHooks(study, opt, target, run_trial, report, after_trial, get_ready,
                        parent_pid)
    logging.getLogger("optuna.study._optimize").addFilter(_QUIET)
    poll = max(0.2, min(2.0, opt.heartbeat_interval / 2))
    try:
        while True:
            if hooks.orphaned():
                report.stopped = "orphaned"
                break
            recover_trials(study, opt)
            complete, running, _ = study_counts(study)
            if complete >= target:
                break
            if budget_spent(study, opt):
                report.stopped = "budget"
                break
            if complete + running >= target:
                if not linger or running == 0:
                    break
                time.sleep(poll)  # a running trial may still fail and free its slot
                continue
            study.optimize(hooks.objective, callbacks=[hooks.callback, _Full(target)],
                           catch=(JointoptError,), gc_after_trial=False)
            if report.stopped in ("failures", "orphaned", "budget"):
                break
    except KeyboardInterrupt as exc:
        report.stopped = "interrupted"
        if hooks.current is not None:
            _settle_interrupted(study, opt, hooks.current, _interrupt_reason(exc))
        raise
    finally:
        logging.getLogger("optuna.study._optimize").removeFilter(_QUIET)
    if report.stopped == "failures":
        _stop_after_failures(report, hooks.streak, opt)
    return report


def _stop_after_failures(report: WorkerReport, streak: list[str],
                         opt: "OptimizerConfig") -> None:
    """Record why the worker stopped in ``report`` and raise :class:`TooManyFailures`."""
    last = streak[-1] if streak else ""
    report.error = (f"stopped after {len(streak)} consecutive failed trials "
                    f"(optimizer.max_consecutive_failures = "
                    f"{opt.max_consecutive_failures}); last: {last}")
    raise TooManyFailures(
        report.error, where="optimizer.max_consecutive_failures",
        fix="check the engine or upstream server named in the reason, then rerun the same "
            "command: completed trials are kept and cached generations are reused")


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
        callback = retry_callback(opt.max_trial_retries)
        if callback is not None:
            callback(study, copy.deepcopy(trial))
    except UpdateFinishedTrialError:
        pass  # another worker recovered it first
    except Exception as exc:  # noqa: BLE001 - stopping must go on; a rerun recovers it
        log.warning("the interrupted trial was not settled (%s); rerunning recovers it", exc)
