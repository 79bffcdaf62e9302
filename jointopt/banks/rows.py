"""Turning the rows of a table into bank pools, with one clear error per malformed row.

Two row forms (see ``docs/bank_format.md``, "Importing"):

* one row per sample: ``example_id``, ``prompt_id``, ``answer`` and/or ``text``,
  optional ``correct``, ``completion_tokens``, ``prompt_tokens``, ``logprob`` (mean token
  logprob), ``sum_logprob``, ``score``, ``sample_index``, ``finish_reason``, settings
  ``temperature``, ``max_tokens``, ``model``;
* one row per pool (an answer histogram): ``counts`` ({answer: count}), optional
  ``total``, ``correct`` (the correct answers: a list, or {answer: true/false}),
  ``completion_tokens`` (mean per sample), ``answer_tokens`` ({answer: mean tokens}).

Every check runs before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jointopt.backends.bank_write import SampleRow
from jointopt.banks.tables import Table
from jointopt.errors import DataError
from jointopt.tasks import Example

__all__ = ["ROLES", "PoolKey", "ParsedPools", "parse_rows"]

#: Column roles a table can map (``--column ROLE=NAME``); the default name is the role.
ROLES = ("example_id", "prompt_id", "temperature", "max_tokens", "model", "answer", "text",
         "correct", "prompt_tokens", "completion_tokens", "logprob", "sum_logprob", "score",
         "sample_index", "finish_reason", "counts", "total", "answer_tokens")

#: (prompt id, example id, temperature, max_tokens)
PoolKey = tuple[str, str, float, int]


@dataclass
class ParsedPools:
    """Pools read from a table, in first-seen order."""

    histogram: bool
    samples: dict[PoolKey, list[tuple[int, SampleRow]]] = field(default_factory=dict)
    histograms: dict[PoolKey, tuple[list, float]] = field(default_factory=dict)
    prompt_tokens: dict[PoolKey, float] = field(default_factory=dict)
    rows: dict[PoolKey, int] = field(default_factory=dict)  # first row of each pool
    model: str | None = None
    has_tokens: bool = True


class _Rows:
    def __init__(self, table: Table, columns: Mapping[str, str]) -> None:
        self.t = table
        self.col = {role: columns.get(role, role) for role in ROLES}

    def has(self, role: str) -> bool:
        return self.col[role] in self.t.columns

    def missing(self, role: str, why: str) -> DataError:
        return DataError(
            f"column {self.col[role]!r} not found ({why})", where=str(self.t.path),
            value=list(self.t.columns)[:20],
            fix=f"name the column holding {role} with --column {role}=NAME")


def parse_rows(table: Table, columns: Mapping[str, str], *,
               examples: Mapping[str, Example] | None, dataset_label: str,
               prompt_ids: set[str] | None, temperature: float, max_tokens: int | None,
               answer_of: Callable[[str], str | None],
               is_correct: Callable[[Example, str | None], bool] | None) -> ParsedPools:
    """Read every row into pools (see the module docstring for the columns).

    Args:
        examples: the examples rows may name (None: any id, examples come from the rows).
        dataset_label: where those examples come from (named in errors).
        prompt_ids: the prompt ids rows may name (None: any).
        temperature, max_tokens: the settings of rows without those columns
            (``max_tokens`` None: the largest completion_tokens seen, at least 1).
        answer_of: canonical answer of a completion text.
        is_correct: correctness of an answer when the rows carry none (None: they must).

    Raises:
        DataError: naming file, row, column, value and fix, on the first malformed row.
    """
    r = _Rows(table, columns)
    if not r.has("example_id"):
        raise r.missing("example_id", "every row names its example")
    histogram = r.has("counts")
    if not histogram and not (r.has("answer") or r.has("text")):
        raise r.missing("answer", "a per-sample row needs an answer or a text; a histogram "
                                  "row needs counts")
    if is_correct is None and not r.has("correct"):
        raise r.missing("correct", "the examples have no target to compute correctness from")
    out = ParsedPools(histogram=histogram, has_tokens=r.has("completion_tokens"))
    models: dict[PoolKey, tuple[str | None, int]] = {}
    budget = max_tokens
    if budget is None and not r.has("max_tokens"):
        tokens = [table.number(i, r.col["completion_tokens"], minimum=0) or 0
                  for i in range(len(table.rows))] if r.has("completion_tokens") else [1]
        budget = max(1, int(max(tokens, default=1) + 0.999999))
    for i in range(len(table.rows)):
        key = _key(r, i, examples, dataset_label, prompt_ids, temperature, budget)
        model = table.text(i, r.col["model"]) if r.has("model") else None
        _check_model(r, i, key, model, models, out)
        prompt_tokens = table.number(i, r.col["prompt_tokens"], minimum=0) or 0.0
        if key in out.prompt_tokens and prompt_tokens != out.prompt_tokens[key]:
            raise table.error(i, r.col["prompt_tokens"], "mixed settings in one pool: "
                              f"row {out.rows[key] + 1} of this pool has prompt_tokens "
                              f"{out.prompt_tokens[key]:g}", prompt_tokens,
                              "one pool is one prompt: give its rows the same prompt_tokens")
        out.prompt_tokens.setdefault(key, float(prompt_tokens))
        out.rows.setdefault(key, i)
        example = examples[key[1]] if examples is not None else None
        if histogram:
            _histogram_row(r, i, key, example, out, answer_of, is_correct)
        else:
            _sample_row(r, i, key, example, out, answer_of, is_correct)
    if not table.rows:
        raise DataError("the table has no rows", where=str(table.path), value=0,
                        fix="pass a table with one row per sample or per pool")
    if not histogram:
        _order_samples(r, out)
    return out


def _key(r: _Rows, i: int, examples, dataset_label, prompt_ids, temperature,
         budget) -> PoolKey:
    t = r.t
    example_id = t.text(i, r.col["example_id"])
    if example_id is None:
        raise t.error(i, r.col["example_id"], "empty example id", "", "every row names its "
                      "example")
    if examples is not None and example_id not in examples:
        raise t.error(i, r.col["example_id"], f"example id not in the dataset {dataset_label}",
                      example_id, "add the example to the dataset, drop the row, or map the "
                      "right id column with --column example_id=NAME / --dataset-id-field")
    prompt_id = t.text(i, r.col["prompt_id"]) if r.has("prompt_id") else "prompt"
    if prompt_id is None:
        raise t.error(i, r.col["prompt_id"], "empty prompt id", "", "every row names its "
                      "prompt")
    if prompt_ids is not None and prompt_id not in prompt_ids:
        raise t.error(i, r.col["prompt_id"], "prompt id not in the prompts file", prompt_id,
                      f"use one of {sorted(prompt_ids)}, or add its text to the prompts file")
    values: list[Any] = []
    for role, default, integer in (("temperature", temperature, False),
                                   ("max_tokens", budget, True)):
        if not r.has(role):
            values.append(default)
            continue
        value = t.number(i, r.col[role], integer=integer, minimum=0 if not integer else 1)
        if value is None:
            raise t.error(i, r.col[role], f"mixed settings: this row has no {role}, other "
                          "rows have one", "", f"give every row its {role}, or drop the column "
                          f"and pass --{role.replace('_', '-')}")
        values.append(value)
    return (prompt_id, example_id, float(values[0]), int(values[1]))


def _check_model(r: _Rows, i: int, key: PoolKey, model: str | None,
                 models: dict, out: ParsedPools) -> None:
    if key in models and models[key][0] != model:
        raise r.t.error(i, r.col["model"], f"mixed settings in one pool: row "
                        f"{models[key][1] + 1} of the same prompt, example and settings has "
                        f"model {models[key][0]!r}", model,
                        "a bank holds one model: import each model's rows into its own bank")
    models.setdefault(key, (model, i))
    if model is not None and out.model is not None and model != out.model:
        raise r.t.error(i, r.col["model"], f"rows of two models ({out.model!r} and this one)",
                        model, "a bank holds one model: import each model's rows into its "
                        "own bank (filter the table by model)")
    out.model = out.model or model


def _correct(r: _Rows, i: int, answer: str | None, example: Example | None,
             is_correct) -> bool:
    given = r.t.flag(i, r.col["correct"]) if r.has("correct") else None
    if given is not None:
        return given
    if is_correct is None or example is None:
        raise r.t.error(i, r.col["correct"], "no correctness and no target to compute it "
                        "from", None, "fill the correct column, or give the examples' "
                        "targets (--target-column or --dataset)")
    return bool(is_correct(example, answer))


def _sample_row(r: _Rows, i: int, key: PoolKey, example, out: ParsedPools, answer_of,
                is_correct) -> None:
    t = r.t
    text = t.text(i, r.col["text"]) if r.has("text") else None
    if r.has("answer") and r.col["answer"] in t.rows[i] and (
            t.present(i, r.col["answer"]) or text is None or t.rows[i][r.col["answer"]] is None):
        answer = t.text(i, r.col["answer"])  # given (null: nothing was extracted)
    else:
        answer = answer_of(text) if text is not None else None
    index = t.number(i, r.col["sample_index"], integer=True, minimum=0) \
        if r.has("sample_index") else None
    row = SampleRow(
        answer=answer, correct=_correct(r, i, answer, example, is_correct),
        completion_tokens=int(t.number(i, r.col["completion_tokens"], integer=True,
                                       minimum=0) or 0) if r.has("completion_tokens") else 0,
        mean_logprob=t.number(i, r.col["logprob"]) if r.has("logprob") else None,
        sum_logprob=t.number(i, r.col["sum_logprob"]) if r.has("sum_logprob") else None,
        score=t.number(i, r.col["score"]) if r.has("score") else None,
        finish_reason=t.text(i, r.col["finish_reason"]) if r.has("finish_reason") else None,
        text=text)
    pool = out.samples.setdefault(key, [])
    for j, (other_index, other) in enumerate(pool):
        if index is not None and other_index == index:
            raise t.error(i, r.col["sample_index"], "duplicate sample index in one pool "
                          f"(prompt {key[0]!r}, example {key[1]!r})", index,
                          "give each sample of a pool its own index, or drop the repeated row")
        if other.answer == answer and other.correct != row.correct:
            raise t.error(i, r.col["correct"], f"samples with the answer {answer!r} disagree "
                          "on correctness within one pool", row.correct,
                          "correctness must follow from the answer: fix the row or the answer")
    pool.append((index if index is not None else len(pool), row))


def _order_samples(r: _Rows, out: ParsedPools) -> None:
    for key, pool in out.samples.items():
        pool.sort(key=lambda item: item[0])


def _histogram_row(r: _Rows, i: int, key: PoolKey, example, out: ParsedPools, answer_of,
                   is_correct) -> None:
    t = r.t
    if key in out.histograms:
        raise t.error(i, r.col["counts"], f"a second histogram of one pool (first at row "
                      f"{out.rows[key] + 1})", key[1], "give each (prompt, example, setting) "
                      "one row")
    counts = t.mapping(i, r.col["counts"])
    if not isinstance(counts, dict) or not counts:
        raise t.error(i, r.col["counts"], "counts must be a non-empty {answer: count} object",
                      counts, 'write e.g. {"A": 90, "B": 38}')
    answers = []
    for label, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise t.error(i, r.col["counts"], f"the count of {label!r} must be an integer "
                          ">= 0", count, "write whole sample counts")
        answers.append((None if label in ("", None) else str(label), count))
    total = sum(c for _, c in answers)
    given = t.number(i, r.col["total"], integer=True, minimum=0) if r.has("total") else None
    if given is not None and given != total:
        raise t.error(i, r.col["total"], f"the counts sum to {total}, the total says {given}",
                      given, "make the counts add up to the number of samples, or fix the total")
    if total < 1:
        raise t.error(i, r.col["counts"], "a pool needs at least one sample", counts,
                      "drop the row")
    right = _histogram_correct(r, i, [a for a, _ in answers], example, is_correct)
    per = t.mapping(i, r.col["answer_tokens"]) if r.has("answer_tokens") else None
    mean = t.number(i, r.col["completion_tokens"], minimum=0) if r.has("completion_tokens") \
        else None
    rows = [(a, c, right[a], None if not isinstance(per, dict) or per.get(a or "") is None
             else float(per[a or ""])) for a, c in answers]
    if mean is None and rows and all(m is not None for *_, m in rows):
        mean = sum(c * m for _, c, _, m in rows) / total
    out.histograms[key] = (rows, float(mean or 0.0))


def _histogram_correct(r: _Rows, i: int, answers: list, example, is_correct) -> dict:
    t = r.t
    given = t.mapping(i, r.col["correct"]) if r.has("correct") else None
    if given is None:
        return {a: _correct(r, i, a, example, is_correct) for a in answers}
    if isinstance(given, list):  # correct answers never drawn are allowed
        return {a: (a or "") in {str(g) for g in given} for a in answers}
    if isinstance(given, dict):
        return {a: bool(given.get(a or "", False)) for a in answers}
    if isinstance(given, str):
        return {a: (a or "") == given for a in answers}
    raise t.error(i, r.col["correct"], "correct must list the correct answers", given,
                  'write e.g. ["A"] or {"A": true, "B": false}')
