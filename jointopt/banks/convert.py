"""Converters from what users already have to a version-2 bank.

* ``lm-eval``: lm-evaluation-harness ``--log_samples`` output (``samples_<task>_<date>.jsonl``:
  one line per document and filter, ``resps`` = ``[[text, ...]]`` with one entry per
  repeat, ``filtered_resps`` the filter's answers, ``target``, ``arguments`` =
  ``{"gen_args_0": {"arg_0": prompt, "arg_1": generation kwargs}}``). Answers are the
  filter's per-repeat answers when one filter keeps them all, else read from the texts
  with ``--extractor``; correctness is the task matcher against ``target``. The harness
  logs no token counts.
* ``openai-batch``: an OpenAI Batch API output file with its input file. ``custom_id`` is
  ``<prompt id>/<example id>`` (or just the example id); every choice of a request with
  ``n`` > 1 is a sample; ``usage.completion_tokens`` (a request's total) is spread over
  its choices in whole tokens with the exact mean, or counted per choice from its logprobs.
  Targets come from ``--dataset``.
* ``v1``: a jointopt JSONL bank, kept exactly (texts, token ids, logprobs, rendered
  prompts and keys), so a study replays the converted bank as it replayed the old one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jointopt.banks.importer import ImportOptions, ImportResult, import_bank
from jointopt.banks.tables import Table, _jsonl
from jointopt.errors import ConfigError, DataError

__all__ = ["convert", "lm_eval_rows", "openai_batch_rows", "convert_v1"]

_INVALID = {"[invalid]", ""}


@dataclass(frozen=True)
class V1Converted:
    """A converted version-1 bank (its study config only needs the new bank path)."""

    bank: Path
    pools: int
    samples: int


def convert(kind: str, path: str | Path, out: str | Path, options: ImportOptions, *,
            batch_input: str | Path | None = None) -> "ImportResult | V1Converted":
    """Convert a file of ``kind`` (``lm-eval``, ``openai-batch``, ``v1``) and import it."""
    path = Path(path)
    if kind == "v1":
        return convert_v1(path, out)
    if kind == "lm-eval":
        rows = lm_eval_rows(path)
        opts = ImportOptions(**{**options.__dict__,
                                "input_columns": tuple(options.input_columns) or ("prompt",),
                                "target_column": options.target_column or "target"})
    elif kind == "openai-batch":
        if batch_input is None or options.dataset is None:
            raise ConfigError("the Batch API output needs its input file and the examples",
                              where=str(path), value={"input": batch_input,
                                                      "dataset": options.dataset},
                              fix="pass --input BATCH_INPUT.jsonl (the requests) and --dataset "
                                  "FILE (the examples with their targets, ids = custom ids)")
        rows = openai_batch_rows(path, Path(batch_input))
        opts = options
    else:
        raise ConfigError("unknown converter", where="kind", value=kind,
                          fix="use lm-eval, openai-batch or v1")
    columns = sorted({c for r in rows for c in r})
    return import_bank(Table(path=path, columns=tuple(columns), rows=rows), out, opts)


# --------------------------------------------------------------------------- lm-eval


def _task_name(path: Path) -> str:
    match = re.match(r"samples_(.+?)_\d{4}-\d{2}-\d{2}T", path.name)
    return match.group(1) if match else "lm-eval"


def lm_eval_rows(path: Path) -> list[dict[str, Any]]:
    """Per-sample rows of an lm-evaluation-harness ``--log_samples`` file."""
    docs: dict[str, list[dict[str, Any]]] = {}
    for line in _jsonl(path):
        if "doc_id" not in line or "resps" not in line:
            raise DataError("not an lm-evaluation-harness sample line (no doc_id/resps)",
                            where=str(path), value=sorted(line)[:8],
                            fix="pass the samples_<task>_<date>.jsonl file written with "
                                "--log_samples")
        docs.setdefault(str(line["doc_id"]), []).append(line)
    prompt_id = _task_name(path)
    rows = []
    for doc_id, lines in docs.items():
        first = lines[0]
        resps = first["resps"]
        texts = resps[0] if resps and isinstance(resps[0], list) else resps
        answers = None
        for line in lines:  # a filter that keeps one answer per repeat
            filtered = line.get("filtered_resps") or []
            per = filtered[0] if filtered and isinstance(filtered[0], list) else filtered
            if len(per) == len(texts) and all(isinstance(a, str) for a in per):
                answers = [None if a.strip() in _INVALID else a.strip() for a in per]
                break
        args = (first.get("arguments") or {}).get("gen_args_0", {}) \
            if isinstance(first.get("arguments"), dict) else {}
        prompt = args.get("arg_0", "")
        gen = args.get("arg_1") if isinstance(args.get("arg_1"), dict) else {}
        for i, text in enumerate(texts):
            row = {"example_id": doc_id, "prompt_id": prompt_id, "sample_index": i,
                   "text": str(text), "target": str(first.get("target", "")),
                   "prompt": prompt if isinstance(prompt, str) else json.dumps(prompt)}
            if answers is not None:
                row["answer"] = answers[i]
            if "temperature" in gen:
                row["temperature"] = float(gen["temperature"])
            if "max_gen_toks" in gen:
                row["max_tokens"] = int(gen["max_gen_toks"])
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- OpenAI Batch


def _spread(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` whole numbers with the exact mean."""
    base, extra = divmod(int(total), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def openai_batch_rows(output: Path, batch_input: Path) -> list[dict[str, Any]]:
    """Per-sample rows of a Batch API output file, with settings from its input file."""
    requests = {}
    for line in _jsonl(batch_input):
        requests[str(line.get("custom_id"))] = line.get("body") or {}
    rows = []
    counts: dict[tuple[str, str], int] = {}
    for number, line in enumerate(_jsonl(output), 1):
        custom = str(line.get("custom_id"))
        body = ((line.get("response") or {}).get("body")) or {}
        if line.get("error") or not body.get("choices"):
            raise DataError("a request of the batch failed or returned no choices",
                            where=f"{output}: row {number}, column 'response'", value=custom,
                            fix="re-run the failed requests, or drop them from both files")
        if custom not in requests:
            raise DataError("custom_id not in the batch input file", where=f"{output}: row "
                            f"{number}, column 'custom_id'", value=custom,
                            fix="pass the input file of this batch with --input")
        prompt_id, _, example_id = custom.rpartition("/")
        key = (prompt_id or "prompt", example_id)
        request = requests[custom]
        choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
        usage = body.get("usage") or {}
        spread = _spread(usage.get("completion_tokens", 0), len(choices))
        for choice, tokens in zip(choices, spread):
            content = ((choice.get("logprobs") or {}).get("content")) or None
            logprobs = [t["logprob"] for t in content] if content else None
            rows.append({
                "example_id": example_id, "prompt_id": key[0],
                "sample_index": counts.get(key, 0),
                "text": (choice.get("message") or {}).get("content") or "",
                "completion_tokens": len(logprobs) if logprobs else tokens,
                "prompt_tokens": usage.get("prompt_tokens", 0),
                "logprob": sum(logprobs) / len(logprobs) if logprobs else None,
                "sum_logprob": float(sum(logprobs)) if logprobs is not None else None,
                "finish_reason": choice.get("finish_reason"),
                "temperature": float(request.get("temperature", 1.0)),
                "max_tokens": int(request.get("max_completion_tokens")
                                  or request.get("max_tokens") or 4096),
                "model": body.get("model") or request.get("model")})
            counts[key] = counts.get(key, 0) + 1
    return rows


# --------------------------------------------------------------------------- v1


def convert_v1(path: Path, out: str | Path) -> V1Converted:
    """A version-1 JSONL bank as a version-2 bank, sample for sample."""
    from jointopt.backends.bank_file import Bank
    from jointopt.backends.bank_loader import load_bank
    from jointopt.backends.bank_write import BankWriter

    bank = load_bank(path)
    if not isinstance(bank, Bank):
        raise ConfigError("already a version-2 bank", where=str(path), value=2,
                          fix="use it as it is")
    writer = BankWriter()
    for pool_line, samples in _v1_pools(path):
        writer.add_record(pool_line, samples)
    header = {k: v for k, v in bank.header.items() if k not in ("version",)}
    writer.write(out, {**header, "converted_from": str(path)})
    return V1Converted(bank=Path(out), pools=writer.pools, samples=writer.samples)


def _v1_pools(path: Path) -> Iterable[tuple[dict, list[dict]]]:
    pool, samples = None, []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            if obj.get("type") == "pool":
                pool, samples = obj, []
            elif obj.get("type") == "sample":
                samples.append(obj)
                if pool is not None and len(samples) == pool["samples"]:
                    yield pool, samples
                    pool = None
