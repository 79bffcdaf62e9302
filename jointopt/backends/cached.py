"""A persistent sample store in front of any backend.

Samples are content-addressed by (model, rendered prompt, sampling parameters) and
kept in order: a request for ``n`` samples takes the first ``n`` of the pool and asks the
engine only for the ones the pool lacks. So a trial that repeats a prompt and sampling
setting of an earlier trial, in this run or a previous one, generates nothing, and a
trial that needs more samples grows the pool. The policy's token cost is counted the
same whether a sample came from the store or the engine; ``GenerationResult.cached``
says how many did (and ``GenerationResult.reused_tokens`` how many of its tokens).

Pools that differ only in ``max_tokens`` form a *family*. With ``share_caps`` (on
under ``bank.cut_max_tokens``) and an inner backend that can
:meth:`~jointopt.backends.base.Backend.cut` its completions, a cap first asked for when
its own pool is empty is bound to the family's largest pool that holds its samples and
served from it from then on (so a setting keeps its samples when larger pools are drawn
later), each sample cut after ``max_tokens`` tokens. This is exact: sampling is
autoregressive, so the first ``m`` tokens of a draw capped at ``M >= m`` are distributed
as a draw capped at ``m`` (a stop string or end of sequence inside the first ``m``
tokens ends both draws at the same token; otherwise the cut draw ends with ``length``,
as the capped one would; with seeded sampling they are the same tokens). A
two-phase thought (:mod:`jointopt.strategies.thinking`, budget forcing) is such a
request: its budget is its ``max_tokens``, so a thought drawn at budget ``B`` serves
every smaller budget; what follows a cut thought (the forced end and the answer) is a
new request and is generated.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from array import array
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from jointopt.core.generation import (
    Completion,
    GenerationRequest,
    GenerationResult,
    serve_greedy_once,
)
from jointopt.backends.base import Backend
from jointopt.errors import BackendError

__all__ = ["SampleStore", "CachedBackend"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pools (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, prompt_tokens INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    key TEXT NOT NULL, idx INTEGER NOT NULL, text TEXT NOT NULL, token_ids BLOB NOT NULL,
    finish TEXT NOT NULL, logprobs BLOB, PRIMARY KEY (key, idx));
CREATE TABLE IF NOT EXISTS families (
    family TEXT NOT NULL, max_tokens INTEGER NOT NULL, key TEXT NOT NULL,
    PRIMARY KEY (family, max_tokens));
CREATE TABLE IF NOT EXISTS served (
    family TEXT NOT NULL, max_tokens INTEGER NOT NULL, drawn_at INTEGER NOT NULL,
    PRIMARY KEY (family, max_tokens));
"""


class SampleStore:
    """SQLite file of sample pools; safe for several processes (WAL, atomic inserts)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def pool(self, key: str, limit: int) -> tuple[int | None, list[Completion]]:
        row = self._db.execute("SELECT prompt_tokens FROM pools WHERE key=?", (key,)).fetchone()
        if row is None:
            return None, []
        rows = self._db.execute(
            "SELECT text, token_ids, finish, logprobs FROM samples WHERE key=? AND idx<? "
            "ORDER BY idx", (key, limit)).fetchall()
        return row[0], [_decode(r) for r in rows]

    def add(self, key: str, model: str, prompt_tokens: int, start: int,
            completions: Sequence[Completion], family: tuple[str, int] | None = None) -> None:
        """Append samples at indices ``start...``; existing indices are kept (first writer
        wins). ``family``: (family key, max_tokens) of the pool, for :meth:`larger`."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR IGNORE INTO pools VALUES (?, ?, ?)",
                             (key, model, prompt_tokens))
            if family is not None:
                self._db.execute("INSERT OR IGNORE INTO families VALUES (?, ?, ?)",
                                 (*family, key))
            self._db.executemany(
                "INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?)",
                [(key, start + i, *_encode(c)) for i, c in enumerate(completions)])

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    def bind(self, family: str, max_tokens: int, drawn_at: int) -> int:
        """Serve ``max_tokens`` of ``family`` from its pool drawn at ``drawn_at`` from now
        on, unless it is bound already (first writer wins); the binding in effect."""
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO served VALUES (?, ?, ?)",
                             (family, max_tokens, drawn_at))
        return self.bound(family, max_tokens) or drawn_at

    def bound(self, family: str, max_tokens: int) -> int | None:
        """The cap of the pool ``max_tokens`` of ``family`` is served from, or None."""
        row = self._db.execute("SELECT drawn_at FROM served WHERE family=? AND max_tokens=?",
                               (family, max_tokens)).fetchone()
        return row[0] if row else None

    def larger(self, family: str, max_tokens: int, samples: int) -> int | None:
        """The largest ``max_tokens`` above ``max_tokens`` at which ``family`` has a pool of
        at least ``samples`` samples, or None."""
        row = self._db.execute(
            "SELECT MAX(f.max_tokens) FROM families f WHERE f.family=? AND f.max_tokens>? "
            "AND (SELECT COUNT(*) FROM samples s WHERE s.key=f.key) >= ?",
            (family, max_tokens, samples)).fetchone()
        return row[0] if row else None


def _encode(c: Completion) -> tuple:
    lp = array("d", c.logprobs).tobytes() if c.logprobs is not None else None
    return c.text, array("i", c.token_ids).tobytes(), c.finish_reason, lp


def _decode(row: tuple) -> Completion:
    text, ids, finish, lp = row
    return Completion(
        text=text,
        token_ids=tuple(array("i", ids)),
        finish_reason=finish,
        logprobs=tuple(array("d", lp)) if lp is not None else None,
    )


class CachedBackend(Backend):
    """Serves requests from a :class:`SampleStore`, generating only what is missing.

    With ``draw_max_tokens`` (and an inner backend that can :meth:`~Backend.cut` its
    completions), a request with a smaller ``max_tokens`` is served from the pool drawn
    at ``draw_max_tokens``, each sample cut after ``max_tokens`` tokens (finish reason
    ``length`` when cut): one pool per prompt and temperature serves every smaller cap.
    With ``share_caps`` (exact, see the module docstring; by default on with
    ``draw_max_tokens``, i.e. under ``bank.cut_max_tokens``), a cap first asked
    for when its own pool is empty is served from then on from its family's largest pool
    holding its samples.
    """

    name = "cached"

    def __init__(self, inner: Backend, store: SampleStore, *,
                 draw_max_tokens: int | None = None, share_caps: bool | None = None) -> None:
        self.inner = inner
        self.store = store
        #: Whether a request whose own pool is empty is served from a larger pool of its
        #: family, cut (``share_caps`` and an inner backend that cuts exactly).
        cuts = type(inner).cut is not Backend.cut
        if share_caps is None:
            share_caps = draw_max_tokens is not None
        self.share_caps = share_caps and cuts
        #: The cap pools are drawn at (None: every cap has its own pools).
        self.draw_max_tokens = draw_max_tokens if cuts else None
        #: Completions generated by the engine and served from the store, since creation.
        self.generated = 0
        self.hits = 0
        #: Tokens the engine processed for this backend (prompt + completion), since creation.
        self.engine_tokens = 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def key(self, request: GenerationRequest) -> str:
        raw = f"{self.model_id}|{request.sampling_key()}".encode()
        return hashlib.sha256(raw).hexdigest()

    def thinking_markers(self) -> tuple[str, str] | None:
        return self.inner.thinking_markers()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        # Greedy requests are all the same sample: pool size 1, copies for the rest.
        requests = list(requests)
        thinking = [i for i, r in enumerate(requests) if r.thinking_budget is not None]
        if not thinking:
            return serve_greedy_once(requests, self._generate)
        # The store keeps no thoughts: requests under the engine's thinking budget go to
        # the engine every time (two-phase forcing requests are stored as usual).
        direct = self.inner.generate([requests[i] for i in thinking])
        self.generated += sum(r.request.n for r in direct)
        self.engine_tokens += sum(r.total_tokens for r in direct)
        rest = [r for i, r in enumerate(requests) if i not in set(thinking)]
        stored = iter(serve_greedy_once(rest, self._generate) if rest else [])
        fresh = dict(zip(thinking, direct))
        return [fresh[i] if i in fresh else next(stored) for i in range(len(requests))]

    def family(self, request: GenerationRequest) -> str:
        """The key of the pools that differ from ``request``'s only in ``max_tokens``."""
        return self.key(replace(request, max_tokens=1))

    def _generate(self, asked: Sequence[GenerationRequest]) -> list[GenerationResult]:
        cap = self.draw_max_tokens
        requests = [replace(r, max_tokens=cap) if cap and r.max_tokens < cap else r
                    for r in asked]
        if self.share_caps:
            requests = [self._larger(r) for r in requests]
        results = self._serve(requests)
        return [self._cut(result, request) for result, request in zip(results, asked)]

    def _larger(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` at the cap of the pool that serves its cap. A cap is bound to one
        pool the first time it is asked for: the family's largest pool holding its
        samples, else its own (also when that already holds samples); it stays bound
        (a bound pool grows when more samples are asked for), so a setting scores the
        same samples every time, whatever larger pools are drawn later."""
        family, cap = self.family(request), request.max_tokens
        drawn_at = self.store.bound(family, cap)
        if drawn_at is None:
            larger = (None if self.store.pool(self.key(request), 1)[1] else
                      self.store.larger(family, cap, request.offset + request.n))
            drawn_at = self.store.bind(family, cap, larger or cap)
        return request if drawn_at == cap else replace(request, max_tokens=drawn_at)

    def _cut(self, result: GenerationResult, request: GenerationRequest) -> GenerationResult:
        if result.request.max_tokens == request.max_tokens:
            return result
        completions = [self.inner.cut(c, request.max_tokens) for c in result.completions]
        if any(c is None for c in completions):
            raise BackendError("the backend cannot cut a sample at max_tokens exactly",
                               where="bank.cut_max_tokens", value=request.max_tokens,
                               fix="turn bank.cut_max_tokens off")
        return replace(result, request=request, completions=tuple(completions))

    def _serve(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        keys = [self.key(r) for r in requests]
        have = [self.store.pool(k, r.offset + r.n) for k, r in zip(keys, requests)]
        todo: list[tuple[int, GenerationRequest]] = []
        for i, (request, (_, pool)) in enumerate(zip(requests, have)):
            missing = request.offset + request.n - len(pool)
            if missing > 0:
                todo.append((i, replace(request, n=missing, offset=len(pool))))
        fresh: dict[int, GenerationResult] = {}
        if todo:
            start = time.perf_counter()
            results = self.inner.generate([r for _, r in todo])
            log.debug("generated %d requests in %.2fs", len(todo), time.perf_counter() - start)
            for (i, request), result in zip(todo, results):
                self.engine_tokens += result.total_tokens
                self.store.add(keys[i], self.model_id, result.prompt_tokens,
                               len(have[i][1]), result.completions,
                               family=(self.family(request), request.max_tokens))
                # Another worker may have filled the same positions first (first writer
                # wins): serve what the store now holds, so every trial scores the same
                # samples. The engine work is still counted as generated.
                stored_tokens, stored = self.store.pool(keys[i], len(have[i][1]) + request.n)
                if stored[len(have[i][1]):] != list(result.completions):
                    result = replace(result, completions=tuple(stored[len(have[i][1]):]),
                                     prompt_tokens=int(stored_tokens or result.prompt_tokens))
                fresh[i] = result
        out = []
        for i, request in enumerate(requests):
            prompt_tokens, pool = have[i]
            new = fresh.get(i)
            if new is not None:
                prompt_tokens = new.prompt_tokens
                pool = pool + list(new.completions)
            # Samples the pool had to grow by before reaching the requested ones are
            # generated (and kept) but belong to no one's answer.
            fresh_used = min(new.request.n, request.n) if new is not None else 0
            cached = request.n - fresh_used
            self.generated += new.request.n if new is not None else 0
            self.hits += cached
            out.append(GenerationResult(
                request=request,
                prompt_tokens=int(prompt_tokens or 0),
                completions=tuple(pool[request.offset: request.offset + request.n]),
                wall_time=new.wall_time if new is not None else 0.0,
                cached=cached,
            ))
        return out

    def pool_data(self, requests, ids):
        """The inner backend's recorded pools (a bank needs no sample store)."""
        return self.inner.pool_data(requests, ids)

    def engine_record(self) -> dict[str, str | int | float]:
        return self.inner.engine_record()

    def close(self) -> None:
        self.inner.close()
