"""Live progress of ``jointopt run`` / ``jointopt worker``.

On a terminal: a bar with the trials done out of the target and the time left, and a
status line with the tokens the engine generated in this run and their rate, the best
accuracy so far within a few token budgets, and the last trial. Not on a terminal (a log
file, CI): nothing until the end. With ``-v``: one summary line per finished trial,
either way.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from jointopt.tracking.report_data import best_at_budgets, token_budgets

if TYPE_CHECKING:
    from jointopt.search.results import TrialSummary

__all__ = ["StudyProgress", "trial_line"]


def trial_line(t: "TrialSummary") -> str:
    """One line on a finished trial: its scores, what it cost and its policy."""
    if t.accuracy is None:
        return f"trial {t.number}: {t.state.lower()}"
    dev = (t.dev or {}).get("accuracy")
    ci = f" [{dev.low:.2f}, {dev.high:.2f}]" if dev else ""
    cost = (f"{int(t.generated or 0)} completions generated, {int(t.tokens_generated or 0)} "
            f"engine tokens, {int(t.cached or 0)} from the sample store")
    policy = f"{t.policy.prompt.id} {t.policy.describe()}" if t.policy else ""
    took = f" ({t.wall_time:.1f}s)" if t.wall_time is not None else ""
    return (f"trial {t.number}: accuracy {t.accuracy:.3f}{ci}, {t.mean_tokens:.1f} tokens; "
            f"{cost}; {policy}{took}")


class _TwoLines(Progress):
    """A progress bar with a status line under it."""

    status: RenderableType = ""

    def get_renderables(self) -> Any:
        yield Group(self.make_tasks_table(self.tasks), self.status)


class StudyProgress:
    """Progress of one study run; use as a context manager and pass :meth:`trial` as the
    ``on_trial`` callback and :meth:`engine_ready` as ``on_engine_ready``."""

    def __init__(self, console: Console, total: int, verbose: bool = False) -> None:
        self.console = console
        self.total = total
        self.verbose = verbose
        self.live = console.is_terminal
        self.started = time.monotonic()
        self.ready_at: float | None = None
        self.finished = 0
        self.tokens = 0
        self.points: list[tuple[float, float]] = []
        self.last = ""
        self._bar = _TwoLines(TextColumn("{task.description}"), BarColumn(),
                              MofNCompleteColumn(), TimeElapsedColumn(),
                              TextColumn("{task.fields[eta]}"), console=console,
                              transient=False, refresh_per_second=4)
        self._task = self._bar.add_task("loading engine", total=total, eta="")

    def __enter__(self) -> "StudyProgress":
        if self.live:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self._bar.stop()

    def engine_ready(self) -> None:
        """The engine is loaded: the bar counts trials from now on."""
        self.ready_at = time.monotonic()
        self._bar.update(self._task, description="trials")

    def trial(self, summary: "TrialSummary", done: int, total: int) -> None:
        """A trial finished (complete or failed); ``done`` of ``total`` are complete."""
        self.finished += 1
        self.tokens += int(summary.tokens_generated or 0)
        if summary.accuracy is not None and summary.mean_tokens is not None:
            self.points.append((summary.accuracy, summary.mean_tokens))
            self.last = f"last #{summary.number} acc={summary.accuracy:.2f} " \
                        f"tok={summary.mean_tokens:.0f}"
        else:
            self.last = f"last #{summary.number} {summary.state.lower()}"
        if self.verbose:
            line = trial_line(summary)
            if self.live:
                self._bar.console.print(line, highlight=False, soft_wrap=True)
            else:
                print(line, flush=True)
        if self.live:
            self._bar.update(self._task, completed=done, total=total, eta=self._eta(done, total))
            self._bar.status = Text(self.status_line(), overflow="ellipsis", no_wrap=True)

    def _eta(self, done: int, total: int) -> str:
        since = self.ready_at or self.started
        if not self.finished or done >= total:
            return ""
        per_trial = (time.monotonic() - since) / self.finished
        left = int(per_trial * (total - done))
        return f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"

    def status_line(self) -> str:
        """Tokens and their rate, best accuracy within a few budgets, and the last trial."""
        since = self.ready_at or self.started
        rate = self.tokens / max(time.monotonic() - since, 1e-9)
        parts = [f"generated {self.tokens:,} tokens ({rate:,.0f} tok/s)"]
        if self.points:
            budgets = token_budgets(max(t for _, t in self.points))
            best = ", ".join(f"<={b:g}: {'-' if a is None else format(a, '.2f')}"
                             for b, a in best_at_budgets(self.points, budgets))
            parts.append(f"best accuracy at tokens {best}")
        if self.last:
            parts.append(self.last)
        return " | ".join(parts)
