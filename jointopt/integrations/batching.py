"""Gathering concurrent single generation requests into shared ``backend.generate``
batches (the engine behind :func:`jointopt.integrations.dspy_lm.make_dspy_lm`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from jointopt.backends.base import Backend
from jointopt.errors import BackendError
from jointopt.core.generation import GenerationRequest, GenerationResult


@dataclass
class _Slot:
    request: GenerationRequest
    done: bool = False
    result: GenerationResult | None = None
    error: BaseException | None = None


class _Dispatcher:
    """Sends concurrent single requests to the backend as shared batches.

    The first caller becomes the leader and sends every request queued at that moment
    as one ``backend.generate`` batch; requests that arrive while the engine is busy
    queue up and go in the leader's next batch. The leader steps down in the same locked
    step that finds the queue empty, so a request is either taken by the running leader
    or leads itself. Callers from one thread see no batching delay at all.
    """

    def __init__(self, backend: Backend, max_batch: int) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Slot] = []
        #: The slot of the caller that is sending batches (None: nobody is).
        self._leader: _Slot | None = None
        self._seen: dict[bytes, int] = {}

    def next_index(self, key: bytes) -> int:
        with self._cond:
            index = self._seen.get(key, 0)
            self._seen[key] = index + 1
            return index

    def submit(self, request: GenerationRequest) -> GenerationResult:
        slot = _Slot(request)
        with self._cond:
            self._queue.append(slot)
            if self._leader is not None:
                while not slot.done:
                    self._cond.wait()
                return self._outcome(slot)
            self._leader = slot
        batch: list[_Slot] = []
        try:
            while True:
                with self._cond:
                    batch = self._queue[: self.max_batch]
                    del self._queue[: len(batch)]
                    if not batch:
                        # Step down in the same locked step that saw the queue empty: a
                        # request queued after it finds no leader and leads its own batch.
                        self._leader = None
                        break
                self._send(batch)
                batch = []
        except BaseException:
            # This thread was interrupted (KeyboardInterrupt, a signal turned into one):
            # fail the batch in flight and, while still the leader, the queue, so no
            # caller waits forever.
            self._abandon(slot, batch)
            raise
        return self._outcome(slot)

    def _send(self, batch: list[_Slot]) -> None:
        """Generate one batch and hand every caller its result (or the batch's error)."""
        try:
            results = self.backend.generate([s.request for s in batch])
            if len(results) != len(batch):
                raise BackendError("backend returned a wrong number of results",
                                   value=(len(results), len(batch)))
            error: BaseException | None = None
        except Exception as exc:  # handed to every caller of the batch
            results, error = [], exc
        with self._cond:
            for i, s in enumerate(batch):
                s.result = results[i] if error is None else None
                s.error = error
                s.done = True
            self._cond.notify_all()

    def _abandon(self, leader: _Slot, batch: list[_Slot]) -> None:
        with self._cond:
            stranded = list(batch)
            if self._leader is leader:  # else a new leader already owns the queue
                stranded += self._queue
                self._queue.clear()
                self._leader = None
            for s in stranded:
                if not s.done:
                    s.error = BackendError(
                        "the batch leader stopped before this request was answered",
                        where="BackendEngine", fix="the thread that sent the shared batch "
                        "was interrupted (e.g. KeyboardInterrupt); call again")
                    s.done = True
            self._cond.notify_all()

    @staticmethod
    def _outcome(slot: _Slot) -> GenerationResult:
        if slot.error is not None:
            raise slot.error
        if slot.result is None:  # pragma: no cover - defensive
            raise BackendError("no result for a request")
        return slot.result
