"""The sample bank format: its header constants, and the index of a loaded bank file
(:class:`Bank`, :class:`BankPool`) from which recorded samples are read on demand.

The format is documented in ``docs/bank_format.md``;
:func:`jointopt.backends.bank_loader.load_bank` reads and validates a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from jointopt.core.generation import ChatMessage, Completion, GenerationRequest

__all__ = [
    "BANK_FORMAT",
    "BANK_VERSION",
    "SAMPLING_FIELDS",
    "Bank",
    "BankPool",
    "messages_hash",
    "preview",
    "sampling_fields",
    "write_atomically",
    "write_jsonl_bank",
]

#: Value of the header's ``format`` field.
BANK_FORMAT = "jointopt-bank"
#: Bank format version this code reads and writes.
BANK_VERSION = 1
#: Fields of a pool line's ``sampling`` object: everything
#: :meth:`GenerationRequest.sampling_key` hashes besides the messages.
SAMPLING_FIELDS = ("temperature", "max_tokens", "top_p", "logprobs", "stop", "continuation")


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


def _dump(obj: Mapping[str, Any]) -> str:
    # allow_nan: a -inf logprob is written as -Infinity (Python's json reads it back).
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def write_atomically(out: Path, suffix: str, write: Callable[[IO[bytes]], None]) -> None:
    """``write(fh)`` into a temporary file next to ``out``, synced and renamed over ``out``
    when complete (removed on any error): a bank that exists is complete."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp{suffix}")
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_jsonl_bank(out: Path, header: Mapping[str, Any],
                     fill: Callable[[Callable[[dict, list[dict]], None]], None],
                     counts: Mapping[str, int]) -> None:
    """Write a version-1 (JSONL) bank atomically: the header, then ``fill(sink)`` calls
    ``sink(pool_line, sample_lines)`` per pool, then the end line with ``counts``
    (``pools``, ``samples``, read after ``fill``)."""

    def write(fh: IO[bytes]) -> None:
        def lines(pool: dict, samples: list[dict]) -> None:
            fh.write("".join(_dump(x) for x in (pool, *samples)).encode("utf-8"))

        fh.write(_dump(header).encode("utf-8"))
        fill(lines)
        fh.write(_dump({"type": "end", "pools": counts["pools"],
                        "samples": counts["samples"]}).encode("utf-8"))

    write_atomically(out, "", write)


def messages_hash(messages: Sequence[ChatMessage]) -> str:
    raw = json.dumps([[m.role, m.content] for m in messages], ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def preview(messages: Sequence[ChatMessage]) -> str:
    """The prompt as a user reads it: its last user turn, first 80 characters."""
    users = [m.content for m in messages if m.role == "user"]
    text = (users[-1] if users else (messages[-1].content if messages else "")).strip()
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


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
        line: line number of the pool line (version 2: the pool's row).
        offsets: byte offset of each sample line, by sample index (version 1).
        count: number of samples when there are no offsets (version 2), else -1.
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
    count: int = -1

    @property
    def samples(self) -> int:
        """Number of recorded samples."""
        return self.count if self.count >= 0 else len(self.offsets)


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
