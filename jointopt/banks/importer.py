"""``jointopt bank import``: a table of recorded generations -> a bank and a study to run.

:func:`import_bank` reads the table (:mod:`jointopt.banks.rows`), takes the examples from
the table or a dataset file, checks everything, and only then writes, next to the bank:
the examples (``<stem>.examples.jsonl``), a search space over the bank's prompts and
settings (``<stem>.space.yaml``) and a study config that replays the bank
(``<stem>.study.yaml``), so ``jointopt validate`` and ``jointopt run`` work at once.

Nothing about the split is asked of the user: a version-2 bank holds every example, and
the study's held-out split (``validation.test_fraction``, stratified by difficulty label,
seeded by ``validation.seed``) is drawn from them when the study runs, so it may change
freely.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jointopt.backends.bank_file import BANK_FORMAT
from jointopt.backends.bank_write import BankWriter
from jointopt.banks.rows import ParsedPools, parse_rows
from jointopt.banks.scaffold import write_study
from jointopt.banks.tables import Table, read_table
from jointopt.errors import ConfigError, DataError
from jointopt.search.replay_check import examples_hash
from jointopt.tasks import AnswerExtractor, AnswerMatcher, Example
from jointopt.tasks.loaders import load_examples

__all__ = ["ImportOptions", "ImportResult", "import_bank"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportOptions:
    """How a table is read (every field has a command-line flag of the same name).

    Attributes:
        columns: role -> column name, for columns not named as the roles
            (:data:`jointopt.banks.rows.ROLES`).
        format: ``jsonl``, ``csv`` or ``parquet`` (default: the file suffix).
        dataset: a dataset file (JSONL/CSV) holding the examples; else they come from
            the table's rows.
        dataset_id_field, dataset_target_field, dataset_input_fields,
            dataset_difficulty_field: its fields.
        input_columns, target_column, difficulty_column: the examples' inputs, target and
            difficulty label in the table (without ``dataset``).
        prompts: a YAML/JSON file of prompt templates (``[{id, user, system, ...}]``);
            without it the prompts have ids only, and export asks for their texts.
        model: the model's name (default: the table's ``model`` column, else "imported").
        task: the task name.
        temperature, max_tokens: the settings of rows without those columns.
        extractor, matcher: how answers are read from ``text`` and compared with targets.
        test_fraction, seed: the study's held-out split.
        n_trials: the study's trials.
        max_n: the largest ``n`` of the study's voting strategies (at most the pool size).
    """

    columns: Mapping[str, str] = field(default_factory=dict)
    format: str | None = None
    dataset: str | Path | None = None
    dataset_id_field: str = "id"
    dataset_target_field: str = "answer"
    dataset_input_fields: Sequence[str] | None = None
    dataset_difficulty_field: str | None = "difficulty"
    input_columns: Sequence[str] = ()
    target_column: str | None = None
    difficulty_column: str | None = None
    prompts: str | Path | None = None
    model: str | None = None
    task: str = "imported"
    temperature: float = 1.0
    max_tokens: int | None = None
    extractor: str = "first_line"
    matcher: str = "normalized"
    test_fraction: float = 0.2
    seed: int = 0
    n_trials: int = 50
    max_n: int = 16


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_bank` wrote and assumed."""

    bank: Path
    study: Path
    space: Path
    examples_file: Path
    pools: int
    samples: int
    histogram: bool
    prompts: tuple[str, ...]
    examples: int
    settings: tuple[tuple[float, int], ...]
    notes: tuple[str, ...]


def _examples_from_table(table: Table, options: ImportOptions,
                         id_column: str) -> dict[str, Example]:
    out: dict[str, Example] = {}
    first: dict[str, int] = {}
    for i in range(len(table.rows)):
        example_id = table.text(i, id_column)
        if example_id is None:
            continue
        inputs = {c: table.text(i, c) or "" for c in options.input_columns} or {
            "input": example_id}
        target = table.text(i, options.target_column) if options.target_column else None
        label = table.text(i, options.difficulty_column) if options.difficulty_column else None
        example = Example(id=example_id, inputs=inputs,
                          target=target or "(not given: correctness is recorded in the bank)",
                          difficulty=label)
        if example_id in out and out[example_id] != example:
            raise table.error(i, None, f"the example's inputs, target or difficulty differ "
                              f"from row {first[example_id] + 1}", example_id,
                              "give every row of an example the same inputs, target and label")
        out.setdefault(example_id, example)
        first.setdefault(example_id, i)
    return out


def _check_columns(table: Table, options: ImportOptions) -> None:
    for flag, name in [("--input-column", c) for c in options.input_columns] + [
            ("--target-column", options.target_column),
            ("--difficulty-column", options.difficulty_column)]:
        if name is not None and name not in table.columns:
            raise DataError(f"column {name!r} not found", where=str(table.path),
                            value=list(table.columns)[:20],
                            fix=f"pass {flag} with one of the table's columns")


def _load_prompts(path: str | Path | None) -> dict[str, dict[str, Any]] | None:
    if path is None:
        return None
    from jointopt.safety.safe_load import parse_yaml, read_text

    data = parse_yaml(read_text(path, "prompts file"), str(path))
    items = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(p, dict) and "id" in p for p in items):
        raise ConfigError("a prompts file is a list of templates with an id each",
                          where=str(path), value=type(items).__name__,
                          fix="write e.g. [{id: direct, user: '{{ question }}'}]")
    return {str(p["id"]): dict(p) for p in items}


def import_bank(table: str | Path | Table, out: str | Path,
                options: ImportOptions | None = None) -> ImportResult:
    """Import recorded generations into a version-2 bank plus a study that replays it.

    Raises:
        DataError / ConfigError: a malformed table (one message naming file, row, column,
            value and fix); nothing is written then.
    """
    options = options or ImportOptions()
    table = table if isinstance(table, Table) else read_table(table, options.format)
    out = Path(out)
    _check_columns(table, options)
    matcher = AnswerMatcher(kind=options.matcher)
    extractor = AnswerExtractor(kind=options.extractor)
    prompts = _load_prompts(options.prompts)
    id_column = options.columns.get("example_id", "example_id")
    if options.dataset is not None:
        loaded = load_examples(Path(options.dataset), input_fields=options.dataset_input_fields,
                               target_field=options.dataset_target_field,
                               id_field=options.dataset_id_field,
                               difficulty_field=options.dataset_difficulty_field)
        examples, label, has_target = {e.id: e for e in loaded}, str(options.dataset), True
    else:
        examples = _examples_from_table(table, options, id_column)
        label, has_target = "(the table's rows)", options.target_column is not None

    def answer_of(text: str) -> str | None:
        raw = extractor.extract(text)
        norm = matcher.normalize(raw) if raw is not None else None
        return norm or None

    parsed = parse_rows(
        table, options.columns, examples=examples,
        dataset_label=label, prompt_ids=set(prompts) if prompts is not None else None,
        temperature=options.temperature, max_tokens=options.max_tokens, answer_of=answer_of,
        is_correct=(lambda e, a: matcher.matches(a, e.target)) if has_target else None)
    keys = list(parsed.histograms or parsed.samples)
    used = {k[1] for k in keys}
    examples = {i: e for i, e in examples.items() if i in used}
    _check_coverage(table, keys, list(examples))
    notes = _notes(table, options, parsed, prompts)
    return _write(out, table, options, parsed, examples, prompts, keys, notes)


def _check_coverage(table: Table, keys: list, example_ids: list[str]) -> None:
    """Every prompt x setting has a pool for every example (a study scores them all)."""
    have: dict[tuple, set[str]] = {}
    for prompt_id, example_id, t, m in keys:
        have.setdefault((prompt_id, t, m), set()).add(example_id)
    for (prompt_id, t, m), ids in have.items():
        missing = [e for e in example_ids if e not in ids]
        if missing:
            raise DataError(
                f"prompt {prompt_id!r} at temperature {t:g}, max_tokens {m} has no rows for "
                f"{len(missing)} of the {len(example_ids)} examples", where=str(table.path),
                value=missing[:5], fix="add their rows, or drop those examples (a study "
                "scores every prompt and setting on every example)")


def _notes(table: Table, options: ImportOptions, parsed: ParsedPools,
           prompts: dict | None) -> list[str]:
    notes = []
    if options.columns.get("temperature", "temperature") not in table.columns:
        notes.append(f"no temperature column: pools are at temperature {options.temperature:g} "
                     "(--temperature)")
    if options.columns.get("max_tokens", "max_tokens") not in table.columns:
        notes.append("no max_tokens column: pools are at max_tokens "
                     f"{options.max_tokens if options.max_tokens else 'the largest completion_tokens seen'}"
                     " (--max-tokens)")
    if options.columns.get("prompt_id", "prompt_id") not in table.columns:
        notes.append("no prompt_id column: every row belongs to one prompt named 'prompt'")
    if not parsed.has_tokens:
        notes.append("no completion_tokens column: every sample costs 0 completion tokens, so "
                     "the token objective sees prompt tokens only")
    if prompts is None:
        notes.append("no prompt texts (--prompts): the study optimises prompt ids; export "
                     "asks for the chosen prompt's text")
    return notes


def _write(out: Path, table: Table, options: ImportOptions, parsed: ParsedPools,
           examples: dict[str, Example], prompts: dict | None, keys: list,
           notes: list[str]) -> ImportResult:
    from jointopt._version import __version__

    writer = BankWriter()
    for key in keys:
        prompt_id, example_id, t, m = key
        if parsed.histogram:
            rows, mean = parsed.histograms[key]
            writer.add_histogram(prompt_id, example_id, t, m, parsed.prompt_tokens[key], rows,
                                 mean)
        else:
            writer.add_samples(prompt_id, example_id, t, m, parsed.prompt_tokens[key],
                               [row for _, row in parsed.samples[key]])
    prompt_ids = list(dict.fromkeys(k[0] for k in keys))
    settings = sorted({(k[2], k[3]) for k in keys})
    sizes = [len(p) for p in parsed.samples.values()] or [
        sum(c for _, c, _, _ in rows) for rows, _ in parsed.histograms.values()]
    paths = write_study(out, options, examples, prompt_ids, prompts, settings, max(sizes),
                        has_logprobs=any(row.mean_logprob is not None or row.sum_logprob
                                         is not None for pool in parsed.samples.values()
                                         for _, row in pool))
    model = options.model or parsed.model or "imported"
    header = {
        "type": "header", "format": BANK_FORMAT, "model": model, "model_name": model,
        "task": options.task, "dataset_hash": None, "test_dataset_hash": None,
        "examples_hash": examples_hash(paths.examples),
        "examples": len(examples),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "jointopt_version": __version__, "samples": max(sizes), "seed": None,
        "prompts": prompt_ids, "temperatures": sorted({s[0] for s in settings}),
        "max_tokens": sorted({s[1] for s in settings}),
        "source": {"table": str(table.path), "rows": len(table.rows),
                   "form": "histogram" if parsed.histogram else "samples"},
        "prompt_texts": {p: prompts[p] for p in prompt_ids} if prompts else None,
        "notes": notes,
    }
    writer.write(out, header)
    log.info("imported %s: %d pools, %d samples", table.path, writer.pools, writer.samples)
    return ImportResult(bank=out, study=paths.study, space=paths.space,
                        examples_file=paths.examples_file, pools=writer.pools,
                        samples=sum(sizes), histogram=parsed.histogram,
                        prompts=tuple(prompt_ids), examples=len(examples),
                        settings=tuple(settings), notes=tuple(notes))
