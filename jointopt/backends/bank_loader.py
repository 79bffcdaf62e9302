"""Reading a bank file: every line is validated (errors name ``file:line``) and only a
compact index is kept (per pool: prompt token count and the byte offset of each sample line).
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from jointopt.errors import ConfigError, DataError
from jointopt.core.generation import ChatMessage, GenerationRequest
from jointopt.safety.safe_load import check_line_size, data_limits, parse_json
from jointopt.backends.bank_file import (
    BANK_FORMAT,
    BANK_VERSION,
    SAMPLING_FIELDS,
    Bank,
    BankPool,
    messages_hash,
    preview,
)

if TYPE_CHECKING:
    from jointopt.backends.bank_columns import ColumnBank

__all__ = ["load_bank"]

# the replay backend's logger: loading a bank is part of replaying it
log = logging.getLogger("jointopt.backends.replay")


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

    def pool(self, obj: dict[str, Any], line: int) -> dict[str, Any]:
        """Check a pool line; the pool whose sample lines follow (offsets still empty)."""
        self.require(obj, line, "pool", _POOL_FIELDS)
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
            raise self.error(line, f"malformed pool line: bad sampling ({exc})",
                             sampling) from None
        if key != obj["key"]:
            raise self.error(
                line, "pool key does not match its messages and sampling (the "
                "file was edited or is corrupt)", obj["key"])
        return {**obj, "line": line, "offsets": array("q"), "messages_tuple": messages}

    def sample(self, obj: Mapping[str, Any], line: int,
               current: Mapping[str, Any] | None) -> None:
        """Check a sample line: inside a pool, in order, one logprob per token id."""
        if current is None:
            raise self.error(line, "sample line outside a pool (or more samples "
                                   "than its pool's `samples`)", obj.get("key"))
        self.require(obj, line, "sample", _SAMPLE_FIELDS)
        expected = len(current["offsets"])
        if obj["key"] != current["key"] or obj["index"] != expected:
            raise self.error(
                line, f"sample out of order: expected index {expected} of the pool "
                f"at line {current['line']}", {"key": obj["key"][:16],
                                               "index": obj["index"]})
        logprobs = obj["logprobs"]
        if logprobs is not None and len(logprobs) != len(obj["token_ids"]):
            raise self.error(line, "malformed sample line: one logprob per token "
                                   "id expected",
                             (len(logprobs), len(obj["token_ids"])))

    def end(self, obj: Mapping[str, Any], line: int, pools: int, samples: int) -> None:
        """Check the end line's counts against the pools and samples read."""
        self.require(obj, line, "end", {"pools": _is_int, "samples": _is_int})
        if (obj["pools"], obj["samples"]) != (pools, samples):
            raise self.error(line, f"end line counts do not match the file "
                                   f"({pools} pools, {samples} samples)",
                             {"pools": obj["pools"], "samples": obj["samples"]})

    def complete(self, header: Mapping[str, Any] | None, current: Mapping[str, Any] | None,
                 ended: bool, line: int) -> None:
        """Refuse an empty file, a last pool without all its samples, a missing end line."""
        if header is None:
            raise self.error(1, "empty bank file", None, has_value=False)
        if current is not None:
            raise self.error(current["line"], "truncated bank: the last pool lacks samples",
                             {"recorded": len(current["offsets"]),
                              "declared": current["samples"]})
        if not ended:
            raise self.error(line, "truncated bank: no end line (the copy is incomplete or "
                                   "the recording was interrupted)", None, has_value=False,
                             fix="copy the file again, or re-record it")


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


def load_bank(path: str | Path) -> "Bank | ColumnBank":
    """Read and validate a bank file (see ``docs/bank_format.md``): a version-2 ``.npz``
    bank (:class:`~jointopt.backends.bank_columns.ColumnBank`) or a version-1 JSONL one.

    Raises:
        ConfigError: the file does not exist.
        DataError: a line is not a valid header / pool / sample / end line, naming
            ``file:line``; a sample line out of order; a truncated file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("bank file not found", where="model.bank", value=str(path),
                          fix="record one with `jointopt record CONFIG --samples N --out "
                              "bank.npz` (or `jointopt bank import`); relative paths start at the config file's folder")
    with path.open("rb") as fh:
        if fh.read(2) == b"PK":  # a zip archive: the columnar version 2
            from jointopt.backends.bank_columns import load_column_bank

            return load_column_bank(path)
    reader = _Reader(path)
    pools: dict[str, BankPool] = {}
    header: dict[str, Any] | None = None
    current: dict[str, Any] | None = None  # the pool whose samples are being read
    ended = False
    samples_total = pools_seen = 0
    # prompt ids, temperatures and max_tokens of every pool line
    recorded: tuple[set[str], set[float], set[int]] = (set(), set(), set())
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
                current = reader.pool(obj, line)
            elif kind == "sample":
                reader.sample(obj, line, current)
                current["offsets"].append(offset)
                samples_total += 1
                if len(current["offsets"]) == current["samples"]:
                    _add_pool(pools, recorded, _pool_from(current))
                    pools_seen += 1
                    current = None
            elif kind == "end":
                reader.end(obj, line, pools_seen, samples_total)
                ended = True
            else:
                raise reader.error(line, "unknown line type (expected pool, sample or end)",
                                   kind)
    reader.complete(header, current, ended, line)
    log.info("loaded bank %s: %d pools, %d samples, model %s", path, pools_seen,
             samples_total, header["model"])
    return Bank(path=path, header=MappingProxyType(dict(header)),
                pools=MappingProxyType(pools), size=stat.st_size,
                mtime_ns=stat.st_mtime_ns,
                recorded=(frozenset(recorded[0]), frozenset(recorded[1]),
                          frozenset(recorded[2])))


def _add_pool(pools: dict[str, BankPool], recorded: tuple[set[str], set[float], set[int]],
              pool: BankPool) -> None:
    """Index a pool whose samples are all read (and note its prompt and settings)."""
    recorded[0].add(pool.prompt_id)
    recorded[1].add(pool.temperature)
    recorded[2].add(pool.max_tokens)
    # Two templates that render the same messages for an example share a
    # pool (as they do in the sample store): the larger, else the first, serves.
    if pool.key not in pools or pools[pool.key].samples < pool.samples:
        pools[pool.key] = pool


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
