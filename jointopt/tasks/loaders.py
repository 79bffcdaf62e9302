"""Load user datasets (JSON Lines, JSON arrays, CSV) into :class:`Example` tuples and tasks.

Every problem is reported as a :class:`~jointopt.errors.DataError` that names the file and
line (``data.jsonl:12``), the offending value and the fix.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from jointopt.errors import ConfigError, DataError
from jointopt.tasks._common import did_you_mean
from jointopt.tasks.dataset_files import read_records, resolve_format
from jointopt.tasks.base import Example, Task
from jointopt.tasks.extraction import AnswerExtractor, AnswerMatcher

__all__ = ["load_examples", "make_dataset_task", "DatasetFormat"]

logger = logging.getLogger(__name__)

DatasetFormat = Literal["jsonl", "csv"]


def _scalar(value: Any, field: str, where: str) -> str:
    """A JSON/CSV cell as a string: ints without '.0', bools as true/false."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return str(int(value))
        return repr(value)
    if value is None:
        raise DataError(
            f"field {field!r} is null",
            where=where,
            value=value,
            fix=f"give {field!r} a value or drop the record",
        )
    kind = {dict: "object", list: "array"}.get(type(value), type(value).__name__)
    raise DataError(
        f"field {field!r} must be a string or number, not a JSON {kind}",
        where=where,
        value=value,
        fix=f"flatten {field!r} into a string (e.g. join a list) or leave it out of the inputs",
    )


def _require(record: Mapping[str, Any], field: str, role: str, where: str, parameter: str) -> Any:
    if field not in record:
        present = sorted(record)
        raise DataError(
            f"record has no {role} field {field!r}.{did_you_mean(field, present)} "
            f"Fields present: {present}",
            where=where,
            value=field,
            fix=f"add {field!r} to every record, or set {parameter} to one of {present}",
        )
    return record[field]


def _check_input_fields(input_fields: Sequence[str], target_field: str) -> tuple[str, ...]:
    """``input_fields`` as a tuple: a non-empty list of names without the target field."""
    if isinstance(input_fields, str):
        raise ConfigError(
            "input_fields must be a list of field names, not one string",
            where="input_fields",
            value=input_fields,
            fix=f"pass input_fields=[{input_fields!r}]",
        )
    input_fields = tuple(input_fields)
    if not all(isinstance(f, str) for f in input_fields):
        raise ConfigError(
            "input_fields must be a list of field names",
            where="input_fields",
            value=input_fields,
            fix="pass a list of strings",
        )
    if not input_fields:
        raise ConfigError(
            "input_fields must not be empty",
            where="input_fields",
            value=list(input_fields),
            fix="name at least one input field, or pass None to use every other field",
        )
    if target_field in input_fields:
        raise ConfigError(
            "the target field cannot also be an input field "
            "(the answer would be in the prompt)",
            where="input_fields",
            value=list(input_fields),
            fix=f"remove {target_field!r} from input_fields",
        )
    return input_fields


def _target_and_inputs(record: Mapping[str, Any], where: str, fields: Sequence[str],
                       target_field: str) -> tuple[str, dict[str, str]]:
    """A record's non-empty target and its input fields, as strings."""
    target = _scalar(_require(record, target_field, "target", where, "target_field"),
                     target_field, where)
    if not target.strip():
        raise DataError(
            f"target field {target_field!r} is empty",
            where=where,
            value=target,
            fix="give every record a reference answer or drop the record",
        )
    inputs = {
        name: _scalar(_require(record, name, "input", where, "input_fields"), name, where)
        for name in fields
    }
    return target, inputs


def _record_id(record: Mapping[str, Any], where: str, id_field: str | None,
               default: str) -> str:
    """The record's id field (non-empty), or ``default`` without an ``id_field``."""
    if id_field is not None:
        ident = _scalar(_require(record, id_field, "id", where, "id_field"), id_field, where)
        if not ident:
            raise DataError(
                f"id field {id_field!r} is empty",
                where=where,
                value=ident,
                fix="give every record a unique, non-empty id",
            )
    else:
        ident = default
    return ident


def _difficulty(record: Mapping[str, Any], where: str,
                difficulty_field: str | None) -> str | None:
    """The record's difficulty label; None when there is no field, a null or an empty cell."""
    difficulty = None
    if difficulty_field is not None:
        raw = record.get(difficulty_field)
        if raw is not None and raw != "":
            difficulty = _scalar(raw, difficulty_field, where)
    return difficulty


def load_examples(
    path: str | os.PathLike[str],
    *,
    format: DatasetFormat | None = None,
    input_fields: Sequence[str] | None = None,
    target_field: str = "answer",
    id_field: str | None = None,
    difficulty_field: str | None = "difficulty",
) -> tuple[Example, ...]:
    """Read a dataset file into examples.

    Args:
        path: a ``.jsonl``/``.json``/``.ndjson`` file (one JSON object per line; a ``.json``
            file that holds one JSON array of objects works too) or a ``.csv`` file with a
            header row.
        format: ``"jsonl"`` or ``"csv"``; ``None`` picks it from the suffix.
        input_fields: the fields that become ``Example.inputs``. ``None`` means every
            field of the first record except the target, id and difficulty fields (and a
            field named ``id``); later records must have them too (extra fields are ignored).
        target_field: the field holding the reference answer (must be non-empty).
        id_field: the field holding a unique id; ``None`` gives ids ``"<file stem>:<line>"``.
        difficulty_field: an optional field with the difficulty label; a record without
            it (or with null / an empty cell) gets ``difficulty=None``.

    Values are converted to strings: ``3`` and ``3.0`` become ``"3"``, ``0.5`` becomes
    ``"0.5"``, booleans ``"true"``/``"false"``. Blank lines are skipped.

    Raises:
        DataError: missing or empty file, malformed JSON, a line that is not an object,
            a missing target/input/id field, an empty target, a null or non-scalar value,
            duplicate ids, CSV rows with too many cells. Each names ``file:line``.
        ConfigError: invalid arguments (unknown format, the target also listed as input).
    """
    file = Path(path)
    fmt = resolve_format(file, format)
    if input_fields is not None:
        input_fields = _check_input_fields(input_fields, target_field)
    records = read_records(file, fmt)
    # Never inputs: the target, the id and difficulty fields, and a column named "id".
    reserved = {target_field, id_field or "id", difficulty_field} - {None}

    fields: tuple[str, ...] | None = tuple(input_fields) if input_fields is not None else None
    examples: list[Example] = []
    first_seen: dict[str, str] = {}
    for where, position, record in records:
        if fields is None:
            fields = tuple(k for k in record if k not in reserved)
            if not fields:
                raise DataError(
                    f"record has no input fields besides {sorted(reserved)}",
                    where=where,
                    value=sorted(record),
                    fix="add an input field such as 'question', or pass input_fields",
                )
        target, inputs = _target_and_inputs(record, where, fields, target_field)
        ident = _record_id(record, where, id_field, f"{file.stem}:{position}")
        if ident in first_seen:
            raise DataError(
                f"duplicate id (first used at {first_seen[ident]})",
                where=where,
                value=ident,
                fix="make ids unique, or pass id_field=None to number records by line",
            )
        first_seen[ident] = where
        difficulty = _difficulty(record, where, difficulty_field)
        examples.append(Example(id=ident, inputs=inputs, target=target, difficulty=difficulty))

    if not examples:
        raise DataError(
            "dataset file has no records",
            where=str(file),
            value=str(file),
            fix="add records (JSON Lines: one object per line; CSV: a header and rows)",
        )
    return tuple(examples)


def make_dataset_task(
    path: str | os.PathLike[str],
    *,
    name: str,
    description: str,
    extractor: AnswerExtractor,
    matcher: AnswerMatcher,
    input_fields: Sequence[str] | None = None,
    target_field: str = "answer",
    id_field: str | None = None,
    difficulty_field: str | None = "difficulty",
    demos_path: str | os.PathLike[str] | None = None,
    verifier: Callable[[Example, str], bool] | None = None,
    format: DatasetFormat | None = None,
) -> Task:
    """Build a :class:`Task` from a user dataset file (and an optional demos file).

    The demos file is read with the same field options and must hold the same input
    fields. Demos whose inputs equal an evaluation example's are dropped (with a logged
    warning) so no answer leaks into a prompt; without ``demos_path`` the task has no demos.

    Raises:
        DataError / ConfigError: as :func:`load_examples`; also when a demo id equals an
            example id (give the demos an ``id_field`` or use different file names).
    """
    examples = load_examples(
        path,
        format=format,
        input_fields=input_fields,
        target_field=target_field,
        id_field=id_field,
        difficulty_field=difficulty_field,
    )
    fields = tuple(examples[0].inputs)
    demos: tuple[Example, ...] = ()
    if demos_path is not None:
        loaded = load_examples(
            demos_path,
            input_fields=fields,
            target_field=target_field,
            id_field=id_field,
            difficulty_field=difficulty_field,
        )
        seen = {ex.inputs for ex in examples}
        demos = tuple(d for d in loaded if d.inputs not in seen)
        if len(demos) < len(loaded):
            logger.warning(
                "%s: dropped %d demo(s) whose inputs equal an evaluation example in %s",
                demos_path,
                len(loaded) - len(demos),
                path,
            )
    return Task(
        name=name,
        description=description,
        fields=fields,
        examples=examples,
        demos=demos,
        extractor=extractor,
        matcher=matcher,
        verifier=verifier,
    )
