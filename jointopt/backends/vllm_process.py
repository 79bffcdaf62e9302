"""Ending the processes a vLLM engine started (its engine core, workers and their
children) when vLLM's own shutdown leaves any of them running.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

__all__ = ["end_engine_processes", "engine_processes"]

# the vLLM backend's logger: these processes are ended when it closes
logger = logging.getLogger("jointopt.backends.vllm")


def _engine_process_roots(llm: Any) -> list[Any]:
    """The ``multiprocessing`` processes vLLM started for ``llm``: the engine cores of its
    process manager, or the executor's workers when the engine core runs in this process."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    manager = getattr(getattr(core, "resources", None), "engine_manager", None)
    procs = list(getattr(manager, "processes", None) or [])
    if not procs:  # in-process engine core (VLLM_ENABLE_V1_MULTIPROCESSING=0)
        executor = getattr(getattr(core, "engine_core", None), "model_executor", None)
        procs = [getattr(w, "proc", None) for w in getattr(executor, "workers", None) or []]
    return [p for p in procs if p is not None]


def engine_processes(llm: Any) -> list[Any]:
    """The engine's running processes and all their descendants, as
    :class:`jointopt.processes.ProcessRef` (best effort: [] when vLLM's internals differ)."""
    from jointopt.processes import descendants, process_ref

    refs: list[Any] = []
    try:
        for proc in _engine_process_roots(llm):
            ref = process_ref(int(proc.pid)) if proc.pid else None
            if ref is not None:
                refs += [ref, *descendants(ref.pid)]
    except Exception as exc:  # noqa: BLE001 - closing must never raise
        logger.debug("engine processes not found: %r", exc)
    return list(dict.fromkeys(refs))


def end_engine_processes(processes: Sequence[Any]) -> None:
    """SIGTERM, then SIGKILL, the engine processes vLLM's shutdown left running."""
    from jointopt.processes import end_processes, is_running

    left = [ref for ref in processes if is_running(ref)]
    if not left:
        return
    logger.info("vLLM left %d engine process(es) running after shutdown: pids %s",
                len(left), ", ".join(str(ref.pid) for ref in left))
    killed = end_processes(left)
    if killed:
        logger.warning("engine process(es) %s ignored SIGTERM and were killed",
                       ", ".join(str(ref.pid) for ref in killed))
