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

The loader reads the file once, validating every line (errors name ``file:line``), and
keeps only a compact index (per pool: prompt token count and the byte offset of each
sample line); samples are parsed from the file when they are requested.
"""

from __future__ import annotations

import hashlib
import json
import logging
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Union

from jointopt.errors import BackendError, ConfigError, DataError
from jointopt.core.generation import (
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
    serve_greedy_once,
)
from jointopt.safety.safe_load import check_line_size, data_limits, parse_json
from jointopt.backends.base import Backend

__all__ = [
    "BANK_FORMAT",
    "BANK_VERSION",
    "SAMPLING_FIELDS",
    "PARALLEL_STRATEGIES",
    "Bank",
    "BankPool",
    "ReplayBackend",
    "load_bank",
    "sampling_fields",
]

log = logging.getLogger(__name__)

#: Value of the header's ``format`` field.
BANK_FORMAT = "jointopt-bank"
#: Bank format version this code reads and writes.
BANK_VERSION = 1
#: Fields of a pool line's ``sampling`` object: everything
#: :meth:`GenerationRequest.sampling_key` hashes besides the messages.
SAMPLING_FIELDS = ("temperature", "max_tokens", "top_p", "logprobs", "stop", "continuation")
#: Strategies that are scored from one pool per example (named in error messages).
PARALLEL_STRATEGIES = ("single", "majority", "best_of_n", "weighted_vote")

REPLAY_FIX = (
    "replay supports the parallel strategies scored from pools ("
    + ", ".join(PARALLEL_STRATEGIES)
    + ") with the recorded prompts, temperatures and max_tokens; record those settings "
    "first (`jointopt record CONFIG --samples N --out bank.jsonl` with this search space)"
)



# --------------------------------------------------------------------------- helpers


def sampling_fields(request: GenerationRequest) -> dict[str, Any]:
    """The ``sampling`` object of a pool line for ``request`` (JSON-ready)."""
    return {
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "top_p": request.top_p,
        "logprobs": request.logprobs,
        "stop": list(request.stop),
        "continuation": request.continuation,
    }


def messages_hash(messages: Sequence[ChatMessage]) -> str:
    raw = json.dumps([[m.role, m.content] for m in messages], ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def preview(messages: Sequence[ChatMessage]) -> str:
    """The prompt as a user reads it: its last user turn, first 80 characters."""
    users = [m.content for m in messages if m.role == "user"]
    text = (users[-1] if users else (messages[-1].content if messages else "")).strip()
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- bank index


@dataclass(frozen=True)
class BankPool:
    """Index entry of one recorded pool.

    Attributes:
        key: ``GenerationRequest.sampling_key()`` of the pool.
        prompt_id: id of the prompt template.
        example_id: id of the example.
        temperature: sampling temperature.
        max_tokens: completion-token cap.
        prompt_tokens: prompt tokens the engine counted for the prompt.
        prompt_hash: hash of the rendered messages (for "recorded with other settings").
        preview: the prompt's last user turn, shortened (for error messages).
        line: line number of the pool line.
        offsets: byte offset of each sample line, by sample index.
    """

    key: str
    prompt_id: str
    example_id: str
    temperature: float
    max_tokens: int
    prompt_tokens: int
    prompt_hash: str
    preview: str
    line: int
    offsets: array = field(repr=False, compare=False)

    @property
    def samples(self) -> int:
        """Number of recorded samples."""
        return len(self.offsets)


@dataclass(frozen=True)
class Bank:
    """A validated bank file: its header and an index of its pools by sampling key.

    Build with :func:`load_bank`.
    """

    path: Path
    header: Mapping[str, Any]
    pools: Mapping[str, BankPool] = field(repr=False)
    size: int = field(repr=False, compare=False)
    mtime_ns: int = field(repr=False, compare=False)
    #: (prompt ids, temperatures, max_tokens) of every pool line, duplicates included.
    recorded: tuple[frozenset, frozenset, frozenset] = field(
        default=(frozenset(), frozenset(), frozenset()), repr=False, compare=False)

    @property
    def model(self) -> str:
        """The recording backend's ``model_id`` (the model part of cache keys)."""
        return str(self.header["model"])

    @property
    def model_name(self) -> str:
        """The model as the study config named it (falls back to :attr:`model`)."""
        return str(self.header.get("model_name") or self.header["model"])

    @property
    def dataset_hash(self) -> str:
        return str(self.header["dataset_hash"])

    @property
    def prompt_ids(self) -> frozenset[str]:
        """Prompt ids with at least one pool line."""
        return self.recorded[0]

    @property
    def temperatures(self) -> frozenset[float]:
        """Recorded temperatures."""
        return self.recorded[1]

    @property
    def max_tokens(self) -> frozenset[int]:
        """Recorded max_tokens values."""
        return self.recorded[2]

    def settings(self, prompt_hash: str) -> list[tuple[float, int]]:
        """Recorded (temperature, max_tokens) of the pools of one rendered prompt."""
        return sorted({(p.temperature, p.max_tokens) for p in self.pools.values()
                       if p.prompt_hash == prompt_hash})

    def read(self, fh: IO[bytes], pool: BankPool, start: int, stop: int) -> list[Completion]:
        """Samples ``start..stop-1`` of ``pool``, parsed from the open bank file ``fh``."""
        out = []
        for index in range(start, stop):
            fh.seek(pool.offsets[index])
            raw = fh.readline()
            out.append(_completion(json.loads(raw)))
        return out


def _completion(sample: Mapping[str, Any]) -> Completion:
    logprobs = sample.get("logprobs")
    return Completion(
        text=sample["text"],
        token_ids=tuple(sample["token_ids"]),
        finish_reason=sample["finish_reason"],
        logprobs=None if logprobs is None else tuple(float(x) for x in logprobs),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Reader:
    """Line-by-line validation of a bank file (errors name ``file:line``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, line: int, message: str, value: Any = None, fix: str | None = None,
              *, has_value: bool = True) -> DataError:
        kwargs: dict[str, Any] = {"where": f"{self.path}:{line}",
                                  "fix": fix or "re-record the bank with `jointopt record`"}
        if has_value:
            kwargs["value"] = value
        return DataError(message, **kwargs)

    def parse(self, raw: bytes, line: int) -> dict[str, Any]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            shown = raw.decode("utf-8", "replace").strip()
            raise self.error(line, "malformed line: not valid JSON (not UTF-8)",
                             shown[:120] + ("..." if len(shown) > 120 else "")) from None
        # duplicate keys and nesting depth are refused too (jointopt.safety.safe_load)
        obj = parse_json(text, str(self.path), line=line, error=DataError,
                         label="malformed line:", fix="re-record the bank with `jointopt record`")
        if not isinstance(obj, dict):
            raise self.error(line, "malformed line: every line is a JSON object",
                             type(obj).__name__)
        return obj

    def require(self, obj: Mapping[str, Any], line: int, kind: str,
                fields: Mapping[str, Any]) -> None:
        for name, check in fields.items():
            if name not in obj:
                raise self.error(line, f"malformed {kind} line: missing field {name!r}",
                                 sorted(obj))
            if not check(obj[name]):
                raise self.error(line, f"malformed {kind} line: bad value of {name!r}",
                                 obj[name])

    def header(self, obj: Mapping[str, Any]) -> None:
        fmt = obj.get("format")
        if fmt != BANK_FORMAT:
            raise self.error(1, f"not a jointopt bank: the first line must be a header "
                                f"object with format {BANK_FORMAT!r}", fmt,
                             fix="pass a file written by `jointopt record`")
        version = obj.get("version")
        if version != BANK_VERSION:
            raise self.error(1, f"unknown bank format version (this jointopt reads version "
                                f"{BANK_VERSION})", version,
                             fix="re-record the bank with this jointopt version, or use the "
                                 "jointopt version that wrote it "
                                 f"({obj.get('jointopt_version', 'unknown')})")
        self.require(obj, 1, "header", {
            "model": lambda v: isinstance(v, str) and v,
            "task": lambda v: isinstance(v, str),
            "dataset_hash": lambda v: isinstance(v, str) and len(v) == 64,
        })


_POOL_FIELDS = {
    "prompt_id": lambda v: isinstance(v, str),
    "example_id": lambda v: isinstance(v, str),
    "key": lambda v: isinstance(v, str),
    "messages": lambda v: isinstance(v, list) and v and all(
        isinstance(m, dict) and isinstance(m.get("role"), str)
        and isinstance(m.get("content"), str) for m in v),
    "sampling": lambda v: isinstance(v, dict) and set(v) == set(SAMPLING_FIELDS),
    "prompt_tokens": lambda v: _is_int(v) and v >= 0,
    "samples": lambda v: _is_int(v) and v >= 1,
}
_SAMPLE_FIELDS = {
    "key": lambda v: isinstance(v, str),
    "index": _is_int,
    "text": lambda v: isinstance(v, str),
    "token_ids": lambda v: isinstance(v, list) and all(_is_int(t) for t in v),
    "finish_reason": lambda v: isinstance(v, str),
    "logprobs": lambda v: v is None or (isinstance(v, list) and all(_is_number(x) for x in v)),
}


def load_bank(path: str | Path) -> Bank:
    """Read and validate a bank file (see ``docs/bank_format.md``).

    Raises:
        ConfigError: the file does not exist.
        DataError: a line is not a valid header / pool / sample / end line, naming
            ``file:line``; a sample line out of order; a truncated file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("bank file not found", where="model.bank", value=str(path),
                          fix="record one with `jointopt record CONFIG --samples N --out "
                              "bank.jsonl`; relative paths start at the config file's folder")
    reader = _Reader(path)
    pools: dict[str, BankPool] = {}
    header: dict[str, Any] | None = None
    current: dict[str, Any] | None = None  # the pool whose samples are being read
    ended = False
    samples_total = pools_seen = 0
    prompt_ids: set[str] = set()
    temperatures: set[float] = set()
    budgets: set[int] = set()
    stat = path.stat()
    limits = data_limits()
    with path.open("rb") as fh:
        line = 0
        while True:
            offset = fh.tell()
            raw = fh.readline(limits.max_line_bytes + 1)  # a line is never read whole if huge
            if not raw:
                break
            line += 1
            check_line_size(len(raw), f"{path}:{line}", limits=limits, error=DataError)
            if not raw.strip():
                raise reader.error(line, "malformed line: empty line", "",
                                   has_value=False)
            obj = reader.parse(raw, line)
            if header is None:
                reader.header(obj)
                header = obj
                continue
            if ended:
                raise reader.error(line, "line after the end line", obj.get("type"))
            kind = obj.get("type")
            if current is not None and kind != "sample":
                raise reader.error(
                    current["line"], f"pool has {len(current['offsets'])} sample lines, its "
                    f"`samples` field says {current['samples']}", current["key"][:16])
            if kind == "pool":
                reader.require(obj, line, "pool", _POOL_FIELDS)
                messages = tuple(ChatMessage(m["role"], m["content"]) for m in obj["messages"])
                sampling = obj["sampling"]
                try:
                    request = GenerationRequest(
                        messages=messages, temperature=sampling["temperature"],
                        max_tokens=sampling["max_tokens"], top_p=sampling["top_p"],
                        logprobs=sampling["logprobs"], stop=tuple(sampling["stop"]),
                        continuation=sampling["continuation"])
                    key = request.sampling_key()
                except (TypeError, ValueError) as exc:
                    raise reader.error(line, f"malformed pool line: bad sampling ({exc})",
                                       sampling) from None
                if key != obj["key"]:
                    raise reader.error(
                        line, "pool key does not match its messages and sampling (the "
                        "file was edited or is corrupt)", obj["key"])
                current = {**obj, "line": line, "offsets": array("q"),
                           "messages_tuple": messages}
            elif kind == "sample":
                if current is None:
                    raise reader.error(line, "sample line outside a pool (or more samples "
                                             "than its pool's `samples`)", obj.get("key"))
                reader.require(obj, line, "sample", _SAMPLE_FIELDS)
                expected = len(current["offsets"])
                if obj["key"] != current["key"] or obj["index"] != expected:
                    raise reader.error(
                        line, f"sample out of order: expected index {expected} of the pool "
                        f"at line {current['line']}", {"key": obj["key"][:16],
                                                       "index": obj["index"]})
                logprobs = obj["logprobs"]
                if logprobs is not None and len(logprobs) != len(obj["token_ids"]):
                    raise reader.error(line, "malformed sample line: one logprob per token "
                                             "id expected",
                                       (len(logprobs), len(obj["token_ids"])))
                current["offsets"].append(offset)
                samples_total += 1
                if len(current["offsets"]) == current["samples"]:
                    pool = _pool_from(current)
                    pools_seen += 1
                    prompt_ids.add(pool.prompt_id)
                    temperatures.add(pool.temperature)
                    budgets.add(pool.max_tokens)
                    # Two templates that render the same messages for an example share a
                    # pool (as they do in the sample store): the larger, else the first, serves.
                    if pool.key not in pools or pools[pool.key].samples < pool.samples:
                        pools[pool.key] = pool
                    current = None
            elif kind == "end":
                reader.require(obj, line, "end", {"pools": _is_int, "samples": _is_int})
                if (obj["pools"], obj["samples"]) != (pools_seen, samples_total):
                    raise reader.error(line, f"end line counts do not match the file "
                                             f"({pools_seen} pools, {samples_total} samples)",
                                       {"pools": obj["pools"], "samples": obj["samples"]})
                ended = True
            else:
                raise reader.error(line, "unknown line type (expected pool, sample or end)",
                                   kind)
    if header is None:
        raise reader.error(1, "empty bank file", None, has_value=False)
    if current is not None:
        raise reader.error(current["line"], "truncated bank: the last pool lacks samples",
                           {"recorded": len(current["offsets"]),
                            "declared": current["samples"]})
    if not ended:
        raise reader.error(line, "truncated bank: no end line (the copy is incomplete or "
                                 "the recording was interrupted)", None, has_value=False,
                           fix="copy the file again, or re-record it")
    log.info("loaded bank %s: %d pools, %d samples, model %s", path, pools_seen,
             samples_total, header["model"])
    return Bank(path=path, header=MappingProxyType(dict(header)),
                pools=MappingProxyType(pools), size=stat.st_size,
                mtime_ns=stat.st_mtime_ns,
                recorded=(frozenset(prompt_ids), frozenset(temperatures), frozenset(budgets)))


def _pool_from(current: Mapping[str, Any]) -> BankPool:
    sampling = current["sampling"]
    return BankPool(
        key=current["key"], prompt_id=current["prompt_id"], example_id=current["example_id"],
        temperature=float(sampling["temperature"]), max_tokens=int(sampling["max_tokens"]),
        prompt_tokens=int(current["prompt_tokens"]),
        prompt_hash=messages_hash(current["messages_tuple"]),
        preview=preview(current["messages_tuple"]), line=current["line"],
        offsets=current["offsets"],
    )


# --------------------------------------------------------------------------- backend


BankSource = Union[str, Path, Bank]


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
                                   "--out bank.jsonl` and set model: {backend: replay, "
                                   "bank: bank.jsonl}")
        self.bank = bank if isinstance(bank, Bank) else load_bank(bank)
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

    def _missing(self, request: GenerationRequest) -> BackendError:
        sampling = sampling_fields(request)
        recorded = self.bank.settings(messages_hash(request.messages))
        if recorded:
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
            value={"prompt": preview(request.messages), **sampling},
            fix=f"{hint}. {REPLAY_FIX}",
        )
