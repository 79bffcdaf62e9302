"""Reading a version-2 (columnar ``.npz``) sample bank: :class:`ColumnBank`.

The arrays are loaded once and checked (lengths, index ranges, histogram totals; errors
name the file and the array). A pool is found by (prompt id, example id, temperature,
max_tokens), or, when the bank holds rendered prompts, by sampling key as in version 1,
and handed to strategies as :class:`~jointopt.core.pool_data.PoolData` without building an
object per sample. Banks with texts also serve completions (``ReplayBackend.generate``).
"""

from __future__ import annotations

import json
import zipfile
from array import array
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import numpy as np

from jointopt.core.generation import ChatMessage, Completion
from jointopt.core.pool_data import PoolData
from jointopt.errors import BackendError, DataError
from jointopt.backends.bank_file import BANK_FORMAT, BankPool, messages_hash, preview
from jointopt.backends.bank_write import BANK_V2, _COLUMNS

__all__ = ["ColumnBank", "load_column_bank"]

_TABLES = ("header", "prompt_ids", "example_ids", "answers", "messages", "pool_keys")
_EXTRA = ("pool_hist_len", "sample_text_offsets", "sample_text_bytes",
          "sample_token_ids_offsets", "sample_token_ids", "sample_logprobs_offsets",
          "sample_logprobs")


def _error(path: Path, message: str, value: Any = None, fix: str | None = None) -> DataError:
    return DataError(message, where=str(path), value=value,
                     fix=fix or "write the bank again (`jointopt bank import` or "
                                "`jointopt record`)")


def _json(path: Path, arrays: Mapping[str, np.ndarray], name: str) -> Any:
    try:
        return json.loads(arrays[name].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _error(path, f"array {name!r} is not UTF-8 JSON ({exc})") from None


#: Environment variable raising the cap on a bank's uncompressed size (megabytes).
BANK_ENV = "JOINTOPT_MAX_BANK_MB"


def _check_size(path: Path) -> None:
    """Refuse a bank whose arrays would unpack to more than the cap (4 GB by default)."""
    from jointopt.safety.safe_load import _env_mb

    limit = _env_mb(BANK_ENV, 4096)
    try:
        with zipfile.ZipFile(path) as archive:
            size = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile) as exc:
        raise _error(path, f"not a readable .npz bank ({exc})") from None
    if size > limit:
        raise _error(path, f"the bank unpacks to {size / 2**20:.0f} MB, more than the limit "
                           f"of {limit / 2**20:.0f} MB", size,
                     fix=f"export {BANK_ENV}={size // 2**20 + 1} if the file is trusted")


def load_column_bank(path: str | Path) -> "ColumnBank":
    """Read and check a version-2 bank (see ``docs/bank_format.md``).

    Raises:
        DataError: not a bank, another version, a missing array, inconsistent lengths,
            indices out of range, or histogram counts that disagree with the pool sizes.
    """
    path = Path(path)
    stat = path.stat()
    _check_size(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise _error(path, f"not a readable .npz bank ({exc})") from None
    missing = [n for n in (*_TABLES, *_COLUMNS, *_EXTRA) if n not in arrays]
    if "header" in missing:
        raise _error(path, "not a jointopt bank: no header array", sorted(arrays)[:8],
                     fix="pass a file written by `jointopt record` or `jointopt bank import`")
    header = _json(path, arrays, "header")
    if not isinstance(header, dict) or header.get("format") != BANK_FORMAT:
        raise _error(path, f"not a jointopt bank: header format is not {BANK_FORMAT!r}",
                     header.get("format") if isinstance(header, dict) else header)
    if header.get("version") != BANK_V2:
        raise _error(path, f"unknown bank format version (this file reader reads {BANK_V2})",
                     header.get("version"), fix="use the jointopt version that wrote it "
                     f"({header.get('jointopt_version', 'unknown')})")
    if missing:
        raise _error(path, "the bank lacks arrays", missing)
    tables = {name: _json(path, arrays, name) for name in _TABLES[1:]}
    _check(path, arrays, tables)
    return ColumnBank(path, header, arrays, tables, stat.st_size, stat.st_mtime_ns)


def _check(path: Path, a: Mapping[str, np.ndarray], tables: Mapping[str, list]) -> None:
    """Lengths, ranges and totals of the arrays (a damaged or hand-edited file fails here)."""
    groups = {"pool": len(a["pool_prompt"]), "sample": len(a["sample_answer"]),
              "hist": len(a["hist_answer"])}
    for name in (*_COLUMNS, "pool_hist_len"):
        prefix = name.split("_", 1)[0]
        if len(a[name]) != groups[prefix]:
            raise _error(path, f"array {name!r} has {len(a[name])} entries, "
                               f"the {prefix} table {groups[prefix]}")
    if len(tables["pool_keys"]) != groups["pool"]:
        raise _error(path, "pool_keys does not have one entry per pool")
    checks = (
        ("pool_prompt", 0, len(tables["prompt_ids"])),
        ("pool_example", 0, len(tables["example_ids"])),
        ("pool_messages", -1, len(tables["messages"])),
        ("sample_answer", -1, len(tables["answers"])),
        ("hist_answer", -1, len(tables["answers"])),
    )
    for name, low, high in checks:
        bad = (a[name] < low) | (a[name] >= high)
        if bad.any():
            raise _error(path, f"array {name!r} points outside its table",
                         int(a[name][bad][0]))
    for name in ("pool_samples", "hist_count", "sample_completion_tokens"):
        if (a[name] < 0).any() or (name == "pool_samples" and (a[name] < 1).any()):
            raise _error(path, f"array {name!r} holds a negative or zero count")
    ends = a["pool_hist_start"] + a["pool_hist_len"]
    if groups["pool"] and ((a["pool_hist_len"] < 1).any() or ends.max() > groups["hist"]):
        raise _error(path, "a pool's histogram rows lie outside the histogram table")
    sums = np.add.reduceat(a["hist_count"], a["pool_hist_start"]) if groups["hist"] else []
    wrong = np.nonzero(np.asarray(sums) != a["pool_samples"])[0] if groups["pool"] else []
    if len(wrong):
        row = int(wrong[0])
        raise _error(path, f"pool {row}: histogram counts sum to {int(sums[row])}, the pool "
                           f"holds {int(a['pool_samples'][row])} samples")
    sampled = a["pool_sample_start"] >= 0
    if (a["pool_sample_start"][sampled] + a["pool_samples"][sampled] > groups["sample"]).any():
        raise _error(path, "a pool's sample rows lie outside the sample table")


class ColumnBank:
    """A loaded version-2 bank: header, tables, arrays, and an index of its pools.

    Offers what :class:`~jointopt.backends.bank_file.Bank` offers (``pools`` by sampling
    key, ``settings``, ``read``, ``header`` ...), plus :meth:`find` and :meth:`pool_data`.
    """

    version = BANK_V2

    def __init__(self, path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray],
                 tables: dict[str, list], size: int, mtime_ns: int) -> None:
        self.path = path
        self.header = MappingProxyType(header)
        self.arrays = arrays
        self.tables = tables
        self.size = size
        self.mtime_ns = mtime_ns
        self._cache: dict[tuple[int, int], PoolData] = {}
        a = arrays
        prompts, examples = tables["prompt_ids"], tables["example_ids"]
        temps = a["pool_temperature"].tolist()
        budgets = a["pool_max_tokens"].tolist()
        self._rows: dict[tuple[str, str, float, int], int] = {}
        pools: dict[str, BankPool] = {}
        hashes = [messages_hash(self._messages(i)) for i in range(len(tables["messages"]))]
        message_ids = a["pool_messages"].tolist()
        for row, (p, e, key) in enumerate(zip(a["pool_prompt"].tolist(),
                                              a["pool_example"].tolist(), tables["pool_keys"])):
            ident = (prompts[p], examples[e], float(temps[row]), int(budgets[row]))
            self._rows.setdefault(ident, row)
            m = message_ids[row]
            pool = BankPool(key=key or "|".join(map(str, ident)), prompt_id=ident[0],
                            example_id=ident[1], temperature=ident[2], max_tokens=ident[3],
                            prompt_tokens=int(a["pool_prompt_tokens"][row]),
                            prompt_hash=hashes[m] if m >= 0 else "",
                            preview=preview(self._messages(m)) if m >= 0 else ident[0],
                            line=row, offsets=array("q"), count=int(a["pool_samples"][row]))
            if pool.key not in pools or pools[pool.key].samples < pool.samples:
                pools[pool.key] = pool
        self.pools: Mapping[str, BankPool] = MappingProxyType(pools)
        self.recorded = (frozenset(prompts[i] for i in set(a["pool_prompt"].tolist())),
                         frozenset(float(t) for t in temps), frozenset(int(m) for m in budgets))
        self.has_messages = bool(len(message_ids)) and min(message_ids) >= 0

    def _messages(self, index: int) -> tuple[ChatMessage, ...]:
        return tuple(ChatMessage(r, c) for r, c in json.loads(self.tables["messages"][index]))

    # -- the interface of a version-1 Bank
    model = property(lambda self: str(self.header["model"]))
    model_name = property(lambda self: str(self.header.get("model_name") or self.header["model"]))
    dataset_hash = property(lambda self: str(self.header.get("dataset_hash")))
    prompt_ids = property(lambda self: self.recorded[0])
    temperatures = property(lambda self: self.recorded[1])
    max_tokens = property(lambda self: self.recorded[2])

    @property
    def samples(self) -> int:
        """The largest pool at temperature > 0 (1 when every pool is greedy)."""
        a = self.arrays
        sampled = a["pool_samples"][a["pool_temperature"] > 0]
        return int(sampled.max()) if len(sampled) else 1

    @property
    def example_ids(self) -> list[str]:
        """Every example id with a pool."""
        return list(self.tables["example_ids"])

    def settings(self, prompt_hash: str) -> list[tuple[float, int]]:
        """Recorded (temperature, max_tokens) of the pools of one rendered prompt."""
        return sorted({(p.temperature, p.max_tokens) for p in self.pools.values()
                       if p.prompt_hash == prompt_hash})

    def find(self, prompt_id: str, example_id: str, temperature: float,
             max_tokens: int) -> int | None:
        """The row of a pool, or None."""
        return self._rows.get((prompt_id, example_id, float(temperature), int(max_tokens)))

    def read(self, fh: IO[bytes] | None, pool: BankPool, start: int,
             stop: int) -> list[Completion]:
        """Samples ``start..stop-1`` of ``pool`` as completions (banks with texts only)."""
        a, row = self.arrays, pool.line
        first = int(a["pool_sample_start"][row])
        if first < 0 or not a["sample_has_text"][first:first + pool.samples].all():
            raise BackendError(
                "this pool holds answers and counts, not completion texts",
                where=f"{self.path}: pool {row}", value={"prompt_id": pool.prompt_id,
                                                         "example_id": pool.example_id},
                fix="score only strategies that read pools from arrays (single, majority, "
                    "best_of_n, weighted_vote), or import the samples with their texts")
        return [self._completion(first + i) for i in range(start, stop)]

    def _completion(self, i: int) -> Completion:
        a = self.arrays
        text = a["sample_text_bytes"][a["sample_text_offsets"][i]:
                                      a["sample_text_offsets"][i + 1]].tobytes().decode("utf-8")
        ids = a["sample_token_ids"][a["sample_token_ids_offsets"][i]:
                                    a["sample_token_ids_offsets"][i + 1]]
        logprobs = None
        if a["sample_has_logprobs"][i]:
            logprobs = tuple(a["sample_logprobs"][a["sample_logprobs_offsets"][i]:
                                                  a["sample_logprobs_offsets"][i + 1]].tolist())
        code = int(a["sample_finish"][i])
        reason = self.header["finish_reasons"][code] if code >= 0 else "stop"
        return Completion(text=text, token_ids=tuple(ids.tolist()), finish_reason=reason,
                          logprobs=logprobs)

    def pool_data(self, row: int, n: int) -> PoolData:
        """The first ``n`` samples of pool ``row`` as arrays (a histogram pool only whole)."""
        cached = self._cache.get((row, n))
        if cached is None:
            cached = self._cache[(row, n)] = self._pool_data(row, n)
        return cached

    def _pool_data(self, row: int, n: int) -> PoolData:
        a = self.arrays
        total = int(a["pool_samples"][row])
        first = int(a["pool_sample_start"][row])
        tokens = float(a["pool_prompt_tokens"][row])
        if n == total:
            h0 = int(a["pool_hist_start"][row])
            h1 = h0 + int(a["pool_hist_len"][row])
            group = None
            if first >= 0:  # per sample: the histogram row of its answer
                hist_ids = a["hist_answer"][h0:h1].tolist()
                lookup = {aid: j for j, aid in enumerate(hist_ids)}
                group = np.array([lookup[v] for v in a["sample_answer"][first:first + n].tolist()],
                                 dtype=np.int64)
            return self._data(row, a["hist_answer"][h0:h1], a["hist_count"][h0:h1],
                              a["hist_correct"][h0:h1], float(a["pool_tokens_mean"][row]),
                              tokens, group, first, n)
        if first < 0:
            raise BackendError(
                f"a pool imported as a histogram is scored from all its {total} samples; "
                f"the study asks for {n}", where=f"{self.path}: pool {row}",
                value={"recorded": total, "requested": n},
                fix="leave bank.pool_size unset (replay scores from every recorded sample)")
        ids = a["sample_answer"][first:first + n]
        uniq, group = np.unique(ids, return_inverse=True)
        correct = np.zeros(len(uniq), dtype=bool)
        correct[group] = a["sample_correct"][first:first + n]
        mean = int(a["sample_completion_tokens"][first:first + n].sum()) / n
        return self._data(row, uniq, np.bincount(group, minlength=len(uniq)), correct, mean,
                          tokens, group.astype(np.int64), first, n)

    def _data(self, row, answer_ids, counts, correct, mean, prompt_tokens, group, first,
              n) -> PoolData:
        a, answers = self.arrays, self.tables["answers"]
        per = {}
        if group is not None:
            for name in ("mean_logprob", "sum_logprob", "score"):
                values = a[f"sample_{name}"][first:first + n]
                per[name] = None if np.isnan(values).all() else values
        return PoolData(answers=tuple(None if i < 0 else answers[i] for i in answer_ids.tolist()),
                        counts=np.asarray(counts, dtype=np.int64),
                        correct=np.asarray(correct, dtype=bool), mean_completion_tokens=mean,
                        prompt_tokens=prompt_tokens, sample_group=group, cached=n, **per)
