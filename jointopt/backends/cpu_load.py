"""Is another process slowing the CPU engine? Two checks that say so, with the fix.

The engine's OpenMP threads are pinned one per core and meet at a barrier after every
operator. When another CPU-bound process shares one of those cores, every barrier waits
for the thread that lost its time slice, so the engine slows far more than the share of
CPU it lost. :func:`other_load` measures other processes' use of the engine's cores
before it starts; :class:`ThroughputWatch` notices a collapse while it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from jointopt.backends.cpu_engine import CpuEngineChoice, _read

__all__ = ["ThroughputWatch", "adapt_to_load", "busy_machine_warning", "cpu_times",
           "other_load", "own_ticks"]

#: Other processes' load (in cores) from which the engine's threads are not pinned.
BUSY_LOAD = 0.5


def cpu_times(stat: str, cpus: Iterable[int]) -> tuple[float, float]:
    """``(busy, total)`` clock ticks of ``cpus`` from the text of ``/proc/stat``."""
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0.0
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if name not in wanted:
            continue
        values = [float(v) for v in rest.split()]
        idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
        busy += sum(values[:8]) - idle
        total += sum(values[:8])
    return busy, total


def own_ticks(stat_self: str) -> float:
    """User + system clock ticks of a process from the text of ``/proc/<pid>/stat``."""
    fields = stat_self.rpartition(")")[2].split()
    return float(fields[11]) + float(fields[12]) if len(fields) > 12 else 0.0


def other_load(
    cpus: Iterable[int],
    seconds: float = 0.5,
    read: Callable[[str], str] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> float:
    """How many of ``cpus`` other processes keep busy, measured over ``seconds``.

    ``read`` (path -> text) and ``sleep`` are injectable for tests. Returns 0.0 where
    ``/proc`` cannot be read.
    """
    import time

    read = read or _read
    sleep = sleep or time.sleep
    cpus = tuple(cpus)
    busy0, total0 = cpu_times(read("/proc/stat"), cpus)
    self0 = own_ticks(read("/proc/self/stat"))
    sleep(seconds)
    busy1, total1 = cpu_times(read("/proc/stat"), cpus)
    self1 = own_ticks(read("/proc/self/stat"))
    if total1 <= total0:
        return 0.0
    share = max(0.0, (busy1 - busy0) - (self1 - self0)) / (total1 - total0)
    return share * len(cpus)


def adapt_to_load(choice: CpuEngineChoice, load: float) -> CpuEngineChoice:
    """Unpinned threads with passive waiting when other processes keep the cores busy.

    Measured on 2 cores next to one CPU-bound process: pinned threads ran at a quarter of
    their idle rate (103 vs 403 tok/s), unpinned passive threads at 173-233 tok/s (three
    runs), about the half of the CPU left. Idle, pinning is faster (403 vs 250), so it stays the
    default; a thread count or binding the user chose is kept as it is.
    """
    import dataclasses

    if load < BUSY_LOAD or choice.bind == "nobind" or choice.chosen_by.get("threads") != "hardware":
        return choice
    return dataclasses.replace(choice, bind="nobind",
                               chosen_by={**choice.chosen_by, "threads": "busy machine"})


def busy_machine_warning(choice: CpuEngineChoice, load: float) -> str | None:
    """A warning with the fix when other processes keep the engine's cores busy."""
    if load < BUSY_LOAD or choice.bind == "nobind":
        return None
    return (f"other processes keep {load:.1f} of the {choice.threads} cores the engine is "
            f"bound to ({choice.bind}) busy; its threads wait for each other, so generation "
            f"can slow far more than that share (measured on 2 cores next to one busy "
            f"process: a quarter of the idle rate). {_fix(choice)}")


def _fix(choice: CpuEngineChoice) -> str:
    """What to do about a competing process, for the engine's binding."""
    text = f"Fix: stop the other work or move it off cores {choice.bind}"
    if choice.threads > 2:
        text += (f"; or leave it cores of its own by binding the engine to fewer "
                 f"(model.cpu.threads: {choice.threads - 1} or less)")
    return text


@dataclass
class ThroughputWatch:
    """Notices when generation falls far below the best rate this engine has shown.

    Not frozen: it keeps the best rate seen. One per backend.
    """

    min_tokens: int = 2000
    """Batches smaller than this are too noisy to judge."""
    factor: float = 0.3
    """A batch slower than ``factor`` x the best rate counts as a collapse."""
    best: float = 0.0
    warned: bool = False

    def observe(self, tokens: int, seconds: float, choice: CpuEngineChoice) -> str | None:
        """Record one batch; return a warning (once) when the rate has collapsed."""
        if tokens < self.min_tokens or seconds <= 0:
            return None
        rate = tokens / seconds
        if rate > self.best:
            self.best = rate
            return None
        if self.warned or rate >= self.factor * self.best:
            return None
        self.warned = True
        return (f"generation slowed to {rate:.0f} tok/s from {self.best:.0f} tok/s earlier: "
                f"is another process busy on cores {choice.bind}? The engine's bound threads "
                f"slow far more than the CPU they lose. {_fix(choice)}")
