"""Writing a version-2 (columnar) sample bank: numpy arrays in one ``.npz`` file.

:class:`BankWriter` collects pools — recorded sample by sample, or imported as answer
histograms — into columns and writes them with :func:`numpy.savez_compressed` to a
temporary file that is renamed over the target when complete (a bank that exists is
complete). The layout is documented in ``docs/bank_format.md``; any program with numpy
reads it (``numpy.load(path)``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jointopt.backends.bank_file import write_atomically
from jointopt.core.pool_data import PoolSample

__all__ = ["BANK_V2", "FINISH_REASONS", "BankWriter", "SampleRow", "json_array"]

#: Format version of the columnar bank.
BANK_V2 = 2
#: Finish reasons by code (``sample_finish``); other reasons are added to the header.
FINISH_REASONS = ("stop", "length")


def json_array(value: Any) -> np.ndarray:
    """A JSON value stored as a uint8 array (npz files hold no Python objects)."""
    return np.frombuffer(json.dumps(value, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class SampleRow(PoolSample):
    """One recorded sample of a pool: what pool scoring reads (:class:`PoolSample`), and
    what the bank keeps besides.

    Attributes:
        finish_reason: ``stop``, ``length`` or another engine reason (None: unknown).
        text, token_ids, logprobs: the completion itself, when recorded (a bank without
            texts serves pool scoring only).
    """

    finish_reason: str | None = None
    text: str | None = None
    token_ids: Sequence[int] | None = None
    logprobs: Sequence[float] | None = None


class BankWriter:
    """Collects pools in columns; :meth:`write` saves them as a version-2 bank."""

    def __init__(self) -> None:
        self._strings: dict[str, dict[str, int]] = {"prompts": {}, "examples": {},
                                                    "answers": {}, "messages": {}}
        self._finish = list(FINISH_REASONS)
        self._cols: dict[str, list] = {name: [] for name in _COLUMNS}
        self._keys: list[str] = []
        self._texts: list[bytes] = []
        self._tokens: list[np.ndarray] = []
        self._logprobs: list[np.ndarray] = []
        self.samples = 0

    @property
    def pools(self) -> int:
        """Pools added so far."""
        return len(self._keys)

    def _id(self, table: str, value: str) -> int:
        ids = self._strings[table]
        if value not in ids:
            ids[value] = len(ids)
        return ids[value]

    def _answer(self, answer: str | None) -> int:
        return -1 if answer is None else self._id("answers", answer)

    def _pool(self, prompt_id: str, example_id: str, temperature: float, max_tokens: int,
              prompt_tokens: float, samples: int, tokens_mean: float, sample_start: int,
              messages: Sequence[Mapping[str, str]] | None, key: str | None,
              seed: int | None) -> None:
        c = self._cols
        c["pool_prompt"].append(self._id("prompts", prompt_id))
        c["pool_example"].append(self._id("examples", example_id))
        c["pool_temperature"].append(float(temperature))
        c["pool_max_tokens"].append(int(max_tokens))
        c["pool_prompt_tokens"].append(float(prompt_tokens))
        c["pool_samples"].append(int(samples))
        c["pool_tokens_mean"].append(float(tokens_mean))
        c["pool_sample_start"].append(sample_start)
        c["pool_hist_start"].append(len(c["hist_answer"]))
        c["pool_messages"].append(-1 if messages is None else self._id(
            "messages", json.dumps([[m["role"], m["content"]] for m in messages],
                                   ensure_ascii=False)))
        c["pool_seed"].append(-1 if seed is None else int(seed))
        self._keys.append(key or "")

    def add_samples(self, prompt_id: str, example_id: str, temperature: float,
                    max_tokens: int, prompt_tokens: float, samples: Sequence[SampleRow], *,
                    messages: Sequence[Mapping[str, str]] | None = None,
                    key: str | None = None, seed: int | None = None) -> None:
        """Add a pool recorded sample by sample (its histogram is derived)."""
        tokens = [int(s.completion_tokens) for s in samples]
        self._pool(prompt_id, example_id, temperature, max_tokens, prompt_tokens,
                   len(samples), math.fsum(tokens) / len(samples), self.samples,
                   messages, key, seed)
        c = self._cols
        groups: dict[str | None, list] = {}
        for s in samples:
            c["sample_answer"].append(self._answer(s.answer))
            c["sample_correct"].append(bool(s.correct))
            c["sample_completion_tokens"].append(int(s.completion_tokens))
            c["sample_mean_logprob"].append(_nan(s.mean_logprob))
            c["sample_sum_logprob"].append(_nan(s.sum_logprob))
            c["sample_score"].append(_nan(s.score))
            reason = s.finish_reason
            if reason is not None and reason not in self._finish:
                self._finish.append(reason)
            c["sample_finish"].append(-1 if reason is None else self._finish.index(reason))
            self._texts.append((s.text or "").encode("utf-8"))
            c["sample_has_text"].append(s.text is not None)
            self._tokens.append(np.asarray(s.token_ids or (), dtype=np.int64))
            self._logprobs.append(np.asarray(s.logprobs if s.logprobs is not None else (),
                                             dtype=np.float64))
            c["sample_has_logprobs"].append(s.logprobs is not None)
            group = groups.setdefault(s.answer, [0, bool(s.correct), 0])
            group[0] += 1
            group[2] += int(s.completion_tokens)
        self.samples += len(samples)
        for answer, (count, ok, total) in groups.items():
            self._hist(answer, count, ok, total / count)

    def add_record(self, pool: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> None:
        """Add a pool given as a version-1 pool line and its sample lines (as dicts)."""
        sampling = pool["sampling"]
        self.add_samples(
            pool["prompt_id"], pool["example_id"], sampling["temperature"],
            sampling["max_tokens"], pool["prompt_tokens"],
            [SampleRow(answer=s.get("answer"), correct=bool(s.get("correct")),
                       completion_tokens=len(s["token_ids"]),
                       mean_logprob=s.get("mean_logprob"), sum_logprob=s.get("sum_logprob"),
                       finish_reason=s["finish_reason"], text=s["text"],
                       token_ids=s["token_ids"], logprobs=s["logprobs"]) for s in samples],
            messages=pool["messages"], key=pool["key"], seed=pool.get("seed"))

    def add_histogram(self, prompt_id: str, example_id: str, temperature: float,
                      max_tokens: int, prompt_tokens: float,
                      answers: Sequence[tuple[str | None, int, bool, float | None]],
                      tokens_mean: float) -> None:
        """Add a pool known only as a histogram: (answer, count, correct, mean tokens of
        the answer or None) per answer, and the pool's mean completion tokens."""
        total = sum(int(a[1]) for a in answers)
        self._pool(prompt_id, example_id, temperature, max_tokens, prompt_tokens, total,
                   tokens_mean, -1, None, None, None)
        for answer, count, ok, mean in answers:
            self._hist(answer, int(count), bool(ok), mean)

    def _hist(self, answer: str | None, count: int, ok: bool, mean: float | None) -> None:
        c = self._cols
        c["hist_answer"].append(self._answer(answer))
        c["hist_count"].append(count)
        c["hist_correct"].append(ok)
        c["hist_tokens_mean"].append(_nan(mean))

    def arrays(self, header: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Every array of the file (``header`` gets the tables and counts added)."""
        c = self._cols
        out = {name: np.asarray(c[name], dtype=dtype) for name, dtype in _COLUMNS.items()}
        out["pool_hist_len"] = np.diff(np.append(out["pool_hist_start"],
                                                 len(c["hist_answer"]))).astype(np.int64)
        for name, parts in (("sample_text", self._texts),):
            out[f"{name}_offsets"] = np.cumsum([0] + [len(p) for p in parts], dtype=np.int64)
            out[f"{name}_bytes"] = np.frombuffer(b"".join(parts), dtype=np.uint8)
        for name, parts in (("sample_token_ids", self._tokens),
                            ("sample_logprobs", self._logprobs)):
            out[f"{name}_offsets"] = np.cumsum([0] + [len(p) for p in parts], dtype=np.int64)
            out[name] = (np.concatenate(parts) if parts else np.zeros(0)).astype(
                np.int64 if name == "sample_token_ids" else np.float64)
        tables = {name: list(ids) for name, ids in self._strings.items()}
        full = {**dict(header), "version": BANK_V2, "pools": self.pools,
                "samples_recorded": self.samples, "finish_reasons": self._finish}
        out["header"] = json_array(full)
        out["prompt_ids"] = json_array(tables["prompts"])
        out["example_ids"] = json_array(tables["examples"])
        out["answers"] = json_array(tables["answers"])
        out["messages"] = json_array(tables["messages"])
        out["pool_keys"] = json_array(self._keys)
        return out

    def write(self, path: str | Path, header: Mapping[str, Any]) -> Path:
        """Write the bank to ``path`` atomically (a temporary file renamed when complete)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, ".npz",
                         lambda fh: np.savez_compressed(fh, **self.arrays(header)))
        return path


#: Columns collected per pool, per sample and per histogram row, with their dtypes.
_COLUMNS: dict[str, Any] = {
    "pool_prompt": np.int32, "pool_example": np.int32, "pool_temperature": np.float64,
    "pool_max_tokens": np.int64, "pool_prompt_tokens": np.float64,
    "pool_samples": np.int64, "pool_tokens_mean": np.float64,
    "pool_sample_start": np.int64, "pool_hist_start": np.int64,
    "pool_messages": np.int32, "pool_seed": np.int64,
    "sample_answer": np.int32, "sample_correct": bool, "sample_completion_tokens": np.int64,
    "sample_mean_logprob": np.float64, "sample_sum_logprob": np.float64,
    "sample_score": np.float64, "sample_finish": np.int8, "sample_has_text": bool,
    "sample_has_logprobs": bool,
    "hist_answer": np.int32, "hist_count": np.int64, "hist_correct": bool,
    "hist_tokens_mean": np.float64,
}
