"""Replay a recorded sample bank: run a study offline, with the same code path.

``jointopt record`` (:func:`jointopt.search.record.record_bank`) writes a *bank*: for every
prompt of a search space x every temperature / max_tokens it can produce x every example,
a pool of ``N`` samples with their token ids, finish reasons and logprobs (the format is
documented in ``docs/bank_format.md``). :class:`ReplayBackend` answers a
:class:`~jointopt.core.generation.GenerationRequest` from such a file: sample ``offset`` to
``offset + n - 1`` of the pool whose ``sampling_key()`` matches, with the recorded prompt
token count. So a study evaluated on a laptop sees exactly the samples the GPU cluster
drew, and a replayed study gives the same trial values as the live study that recorded
the bank.

Only what was recorded can be replayed: the parallel strategies, which are scored from
one pool per (prompt, temperature, max_tokens, example) (``single``, ``majority``,
``best_of_n``, ``weighted_vote``). Sequential and tree strategies build prompts from
earlier completions and cannot be served from a bank; :func:`check_replayable` rejects a
search space that contains them, or settings the bank lacks, before any compute.

A version-2 (columnar) bank is loaded as arrays and its pools go to the evaluator as
arrays too (:meth:`ReplayBackend.pool_data`), matched by prompt id, example id and
setting: a replayed trial builds no completion objects, and a bank imported as answer
histograms (no texts) replays the same way. A version-1 (JSONL) bank is read once,
validating every line (errors name ``file:line``), keeping only a compact index (per
pool: prompt token count and the byte offset of each sample line); its samples are
parsed from the file when they are requested.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Union

from jointopt.errors import BackendError
from jointopt.core.generation import GenerationRequest, GenerationResult, serve_greedy_once
from jointopt.backends.base import Backend, BackendSettings
from jointopt.backends.bank_columns import ColumnBank
from jointopt.backends.bank_file import Bank, BankPool, messages_hash, preview, sampling_fields
from jointopt.backends.bank_loader import load_bank

__all__ = ["PARALLEL_STRATEGIES", "REPLAY_FIX", "ReplayBackend"]

log = logging.getLogger(__name__)

#: Strategies that are scored from one pool per example (named in error messages).
PARALLEL_STRATEGIES = ("single", "majority", "best_of_n", "weighted_vote")

REPLAY_FIX = (
    "replay supports the parallel strategies scored from pools ("
    + ", ".join(PARALLEL_STRATEGIES)
    + ") with the recorded prompts, temperatures and max_tokens; record those settings "
    "first (`jointopt record CONFIG --samples N --out bank.npz` with this search space)"
)


BankSource = Union[str, Path, Bank, ColumnBank]


class ReplayBackend(Backend):
    """Answers requests from a recorded bank instead of an engine.

    A request gets samples ``[offset, offset + n)`` of the pool with its
    ``sampling_key()``, with the recorded prompt token count, token ids, finish reasons
    and logprobs. A request with ``logprobs=False`` is served from the pool recorded with
    logprobs (they are dropped; sampling does not depend on them). A temperature-0
    (greedy) pool of one sample serves every index: greedy decoding repeats itself.

    Args:
        bank: a bank file or a loaded :class:`Bank`.
        model, seed, max_model_len, engine_kwargs: accepted so the backend can be built
            by :func:`jointopt.backends.make_backend` like any engine, and ignored
            (the model id comes from the bank's header); ``engine_kwargs`` may carry
            ``bank`` when the argument is not given.

    Raises:
        BackendError (from :meth:`generate`): a request that is not in the bank, or that
            needs more samples than were recorded.
    """

    name = "replay"

    settings_keys = frozenset({"bank"})

    @classmethod
    def from_settings(cls, settings: BackendSettings) -> "ReplayBackend":
        """The bank of ``model.bank`` (or ``engine.bank``)."""
        return cls(settings.bank, engine_kwargs=dict(settings.engine))

    def __init__(self, bank: BankSource | None = None, *, model: str | None = None,
                 seed: int | None = None, max_model_len: int | None = None,
                 engine_kwargs: Mapping[str, Any] | None = None) -> None:
        extra = dict(engine_kwargs or {})
        if bank is None:
            bank = extra.pop("bank", None)
        if extra:
            raise BackendError("unknown engine options for the replay backend",
                               where="model.engine", value=sorted(extra),
                               fix="the replay backend takes only `bank`")
        if bank is None:
            raise BackendError("the replay backend needs a bank file", where="model.bank",
                               fix="record one with `jointopt record CONFIG --samples N "
                                   "--out bank.npz` and set model: {backend: replay, "
                                   "bank: bank.npz}")
        self.bank = bank if isinstance(bank, (Bank, ColumnBank)) else load_bank(bank)
        if model is not None and model != self.bank.model_name:
            log.debug("replay: config model %r, bank recorded with %r (model id %r)",
                      model, self.bank.model_name, self.bank.model)
        #: Number of ``generate`` calls, requests and samples served (for tests).
        self.calls = 0
        self.requests_seen = 0
        self.served = 0

    @property
    def model_id(self) -> str:
        """The recording backend's model id (so sample-store keys stay consistent)."""
        return self.bank.model

    def __repr__(self) -> str:
        return f"ReplayBackend({str(self.bank.path)!r}, model_id={self.model_id!r})"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.calls += 1
        self.requests_seen += len(requests)
        # A greedy request for n > 1 samples (or a later one) is answered from the
        # pool's sample 0 with copies, as engines do.
        return serve_greedy_once(requests, self._serve)

    def _serve(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        plans = [self._plan(r) for r in requests]
        self._check_unchanged()
        out = []
        with self.bank.path.open("rb") as fh:
            for request, (pool, keep_logprobs) in zip(requests, plans):
                completions = self.bank.read(fh, pool, request.offset,
                                             request.offset + request.n)
                if not keep_logprobs:
                    completions = [replace(c, logprobs=None) for c in completions]
                self.served += len(completions)
                out.append(GenerationResult(request=request, prompt_tokens=pool.prompt_tokens,
                                            completions=tuple(completions),
                                            cached=len(completions)))
        return out

    def pool_data(self, requests, ids):
        """Pools of a version-2 bank as arrays (answers and correctness as recorded); a
        version-1 bank returns None and is served through :meth:`generate`."""
        if not isinstance(self.bank, ColumnBank):
            return None
        self._check_unchanged()
        out = []
        for request, (prompt_id, example_id) in zip(requests, ids):
            row = self.bank.find(prompt_id, example_id, request.temperature, request.max_tokens)
            if row is None:
                raise self._missing(request, f"prompt {prompt_id!r}, example {example_id!r}")
            recorded = int(self.bank.arrays["pool_samples"][row])
            key = self.bank.tables["pool_keys"][row]
            if key and key not in (request.sampling_key(),
                                   replace(request, logprobs=True).sampling_key()):
                raise BackendError(
                    "the prompt renders differently from the recorded one (the template, "
                    "demonstrations or data changed)", where=f"{self.bank.path}: pool {row}",
                    value={"prompt_id": prompt_id, "example_id": example_id,
                           "prompt": preview(request.messages)},
                    fix="use the search space and task the bank was recorded with")
            n = request.n
            if request.offset != 0 or n > recorded:
                raise BackendError(
                    f"the bank holds {recorded} samples of this pool, the request needs "
                    f"{request.offset + request.n}", where=f"{self.bank.path}: pool {row}",
                    value={"prompt_id": prompt_id, "example_id": example_id,
                           "recorded": recorded, "needed": request.offset + request.n},
                    fix="lower bank.pool_size and the strategies' n to at most the recorded "
                        "count, or record more samples")
            out.append(self.bank.pool_data(row, n))
        self.calls += 1
        self.requests_seen += len(requests)
        self.served += sum(p.samples for p in out)
        return out

    def _check_unchanged(self) -> None:
        try:
            stat = self.bank.path.stat()
        except OSError as exc:
            raise BackendError(f"the bank file is gone: {exc}", where=str(self.bank.path),
                               fix="restore the file the study was started with") from None
        if (stat.st_size, stat.st_mtime_ns) != (self.bank.size, self.bank.mtime_ns):
            raise BackendError("the bank file changed after it was loaded",
                               where=str(self.bank.path),
                               fix="restart the study so the bank is loaded again")

    def _plan(self, request: GenerationRequest) -> tuple[BankPool, bool]:
        if request.n < 1 or request.offset < 0:
            raise BackendError("request needs n >= 1 and offset >= 0",
                               where="GenerationRequest", value=(request.n, request.offset))
        keep = True
        pool = self.bank.pools.get(request.sampling_key())
        if pool is None and not request.logprobs:
            pool = self.bank.pools.get(replace(request, logprobs=True).sampling_key())
            keep = False
        if pool is None:
            raise self._missing(request)
        stop = request.offset + request.n
        if stop > pool.samples:
            raise BackendError(
                f"the bank holds {pool.samples} samples of this pool, the request needs "
                f"{stop} (samples {request.offset}..{stop - 1})",
                where=f"{self.bank.path}:{pool.line}",
                value={"prompt_id": pool.prompt_id, "example_id": pool.example_id,
                       "temperature": pool.temperature, "max_tokens": pool.max_tokens,
                       "recorded": pool.samples, "needed": stop},
                fix=f"record with --samples >= {stop}, or lower the study's bank.pool_size "
                    "and strategy n to at most the recorded count",
            )
        return pool, keep

    def _missing(self, request: GenerationRequest, label: str | None = None) -> BackendError:
        sampling = sampling_fields(request)
        recorded = self.bank.settings(messages_hash(request.messages))
        if label is not None:
            hint = f"{label} is not in the bank at this temperature and max_tokens"
        elif recorded:
            hint = ("this prompt is recorded only with (temperature, max_tokens) "
                    f"{', '.join(f'({t:g}, {m})' for t, m in recorded)}"
                    + ("; top_p/stop/continuation differ" if any(
                        (t, m) == (request.temperature, request.max_tokens)
                        for t, m in recorded) else ""))
        else:
            hint = "no pool of the bank has this prompt"
        if request.continuation:
            hint += ("; a request with a continuation comes from a sequential or tree "
                     "strategy, which cannot be replayed")
        return BackendError(
            "request not in the recorded bank",
            where=str(self.bank.path),
            value={"prompt": label or preview(request.messages), **sampling},
            fix=f"{hint}. {REPLAY_FIX}",
        )
