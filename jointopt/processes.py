"""Ending a jointopt process cleanly: termination signals and the processes it started.

A scheduler, systemd or ``kill`` stops a process with SIGTERM, whose default action ends
the process at once: no ``finally`` block runs, the trial in flight stays RUNNING and the
engine's processes (vLLM's EngineCore and its workers) keep running without a parent.

* :func:`stop_on_signals` turns SIGTERM and SIGINT into :class:`Interrupted`, a
  ``KeyboardInterrupt`` raised in the main thread, so the ordinary failure path runs: the
  trial in flight is marked FAILED with the reason and the engine is closed.
* :func:`descendants` and :func:`end_processes` find and end a process tree by pid and
  process start time (``/proc``; no psutil needed), so a reused pid is never signalled;
  :func:`stop_children` passes a stop on to ``multiprocessing`` children (the workers of
  ``jointopt run --workers N``).
* :func:`ending_new_children` ends, when a command finishes, every process it started
  that still runs (the last resort behind the backends' own ``close``).

Linux only: without ``/proc`` no process is found and nothing is signalled.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = [
    "Interrupted",
    "ProcessRef",
    "stop_on_signals",
    "proc_stat",
    "start_ticks",
    "process_ref",
    "is_running",
    "descendants",
    "end_processes",
    "stop_children",
    "ending_new_children",
]

log = logging.getLogger(__name__)

#: Signals :func:`stop_on_signals` turns into :class:`Interrupted` by default.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Seconds a process gets between SIGTERM and SIGKILL in :func:`end_processes`.
DEFAULT_GRACE = 3.0
# Helper processes of multiprocessing itself (``python -c "from multiprocessing.<x> import
# main; ..."``): they end on their own once this process is gone and ignore SIGTERM.
_MP_HELPERS = ("from multiprocessing.resource_tracker", "from multiprocessing.forkserver")


class Interrupted(KeyboardInterrupt):
    """A termination signal arrived (raised in the main thread by :func:`stop_on_signals`).

    A ``KeyboardInterrupt``, so every path that handles Ctrl-C handles it too: Optuna fails
    the trial in flight and re-raises it, the study closes its engine.

    Attributes:
        signum: the signal number; ``exit_code`` is the shell's ``128 + signum``.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"the process received {signal.Signals(self.signum).name}; work in "
                         "flight was stopped (rerun the same command to continue)")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __reduce__(self) -> tuple[type, tuple[int]]:  # picklable across processes
        return (Interrupted, (self.signum,))


class _SignalTrap:
    """The handler: the first signal raises :class:`Interrupted`; later ones only log, so a
    second Ctrl-C or SIGTERM cannot cut the cleanup short (SIGKILL still ends at once)."""

    def __init__(self) -> None:
        self.fired: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.fired is not None:
            log.warning("%s received while stopping; still cleaning up (SIGKILL ends the "
                        "process at once)", name)
            return
        self.fired = signum
        log.warning("%s received: stopping (trials in flight are marked failed, engines "
                    "are closed)", name)
        raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """Inside the block, ``signals`` raise :class:`Interrupted` in the main thread.

    The previous handlers are restored when the block ends. Outside the main thread (where
    Python cannot install signal handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # Signal handlers are process-wide by nature; the trap's state (has a signal already
    # arrived?) lives in this one handler object for the duration of the block.
    trap = _SignalTrap()
    previous = {signum: signal.signal(signum, trap) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ------------------------------------------------------------------------- process trees


@dataclass(frozen=True)
class ProcessRef:
    """A process by pid and start time (clock ticks after boot), so that a pid the kernel
    has given to a new process since is not mistaken for it."""

    pid: int
    started: str


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3... of ``/proc/<pid>/stat`` (state first), or None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces; the rest follows the last ')'
    return text[text.rfind(")") + 2:].split()


def start_ticks(pid: int) -> str:
    """The start time of ``pid`` (``/proc/<pid>/stat`` field 22), "" when unknown."""
    fields = proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else ""


def process_ref(pid: int) -> ProcessRef | None:
    """``pid`` as a :class:`ProcessRef`, or None when it does not run."""
    started = start_ticks(pid)
    return ProcessRef(pid, started) if started else None


def is_running(ref: ProcessRef) -> bool:
    """True while the process runs (a zombie, dead but not yet reaped, does not)."""
    fields = proc_stat(ref.pid)
    return bool(fields) and fields[0] != "Z" and len(fields) > 19 and fields[19] == ref.started


def _parents() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields and len(fields) > 1:
                out[int(entry.name)] = int(fields[1])
    return out


def descendants(pid: int) -> list[ProcessRef]:
    """Every running process below ``pid`` (children, grandchildren, ...), parents first."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, ()))
    while todo:
        child = todo.pop(0)
        ref = process_ref(child)
        if ref is not None and is_running(ref):
            found.append(ref)
        todo.extend(children.get(child, ()))
    return found


def _signal(ref: ProcessRef, signum: int) -> None:
    if is_running(ref):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(ref.pid, signum)


def _wait_gone(refs: Iterable[ProcessRef], timeout: float) -> list[ProcessRef]:
    deadline = time.monotonic() + timeout
    alive = [r for r in refs if is_running(r)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [r for r in alive if is_running(r)]
    return alive


def end_processes(refs: Sequence[ProcessRef], grace: float = DEFAULT_GRACE) -> list[ProcessRef]:
    """SIGTERM every process of ``refs`` that still runs, SIGKILL those still running after
    ``grace`` seconds, and wait (up to 5 s) until they are gone.

    Returns:
        the processes that needed SIGKILL.
    """
    alive = [r for r in refs if is_running(r)]
    for ref in alive:
        _signal(ref, signal.SIGTERM)
    stubborn = _wait_gone(alive, grace)
    for ref in stubborn:
        _signal(ref, signal.SIGKILL)
    left = _wait_gone(stubborn, 5.0)
    if left:  # pragma: no cover - SIGKILL is not refused; an uninterruptible sleep
        log.warning("processes still running after SIGKILL: %s", [r.pid for r in left])
    return stubborn


def stop_children(procs: Sequence[Any], grace: float) -> None:
    """Stop ``multiprocessing`` children: SIGTERM each one that runs, wait up to ``grace``
    seconds for them to exit, then end whatever of their process trees (as they were
    before the SIGTERM) still runs: a child stuck in its cleanup, and what it started."""
    started = [p for p in procs if p.pid is not None]
    trees: list[ProcessRef] = []
    for proc in started:
        ref = process_ref(proc.pid) if proc.is_alive() else None
        if ref is not None:
            trees += [ref, *descendants(ref.pid)]
    alive = [p for p in started if p.is_alive()]
    if alive:
        log.warning("stopping %d process(es): pids %s", len(alive),
                    ", ".join(str(p.pid) for p in alive))
    for proc in alive:
        proc.terminate()  # after Ctrl-C they got SIGINT already; the second is ignored
    deadline = time.monotonic() + grace
    for proc in alive:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
    killed = end_processes(trees)
    if killed:
        log.warning("killed %d process(es) that did not end within %.0f s: pids %s",
                    len(killed), grace, ", ".join(str(r.pid) for r in killed))
    for proc in started:
        proc.join(timeout=1)  # reap


def _is_mp_helper(ref: ProcessRef) -> bool:
    try:
        cmdline = Path(f"/proc/{ref.pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return any(helper.encode() in cmdline for helper in _MP_HELPERS)


@contextlib.contextmanager
def ending_new_children(grace: float = DEFAULT_GRACE) -> Iterator[None]:
    """When the block ends (normally, by an exception, or at interpreter exit if it never
    does), end every process started inside it that still runs, with its descendants.

    Processes that ran before the block (e.g. an engine a test session shares) and
    multiprocessing's own helpers are left alone.
    """
    me = os.getpid()
    before = set(descendants(me))

    def end_new() -> None:
        if os.getpid() != me:  # a forked child inherited the atexit hook
            return
        new = [r for r in descendants(me) if r not in before and not _is_mp_helper(r)]
        if new:
            log.warning("ending %d process(es) left running: pids %s", len(new),
                        ", ".join(str(r.pid) for r in new))
            end_processes(new, grace)

    atexit.register(end_new)
    try:
        yield
    finally:
        end_new()
        atexit.unregister(end_new)  # kept when end_new was cut short: it runs at exit
