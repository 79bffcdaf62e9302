"""Load user datasets (JSON Lines, JSON arrays, CSV) into :class:`Example` tuples and tasks.

Every problem is reported as a :class:`~jointopt.errors.DataError` that names the file and
line (``data.jsonl:12``), the offending value and the fix.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from jointopt.errors import ConfigError, DataError
from jointopt.safety.safe_load import check_line_size, data_limits, parse_json, read_text
from jointopt.tasks._common import did_you_mean
from jointopt.tasks.base import Example, Task
from jointopt.tasks.extraction import AnswerExtractor, AnswerMatcher

__all__ = ["load_examples", "make_dataset_task", "DatasetFormat"]

logger = logging.getLogger(__name__)

DatasetFormat = Literal["jsonl", "csv"]
_FORMATS: tuple[str, ...] = ("jsonl", "csv")
_SUFFIXES: Mapping[str, str] = MappingProxyType(
    {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
)

# (where, position, record); where is "file:line" or "file: item N", position the line
# number (item index for a JSON array) used for default ids.
_Records = Iterator[tuple[str, int, Mapping[str, Any]]]
_EXTRA = "\0extra"


def _resolve_format(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in _FORMATS:
            raise ConfigError(
                f"unknown dataset format.{did_you_mean(format, _FORMATS)}",
                where="format",
                value=format,
                fix=f"use one of {list(_FORMATS)} (or omit it to use the file suffix)",
            )
        return format
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            "cannot tell the dataset format from the file suffix",
            where=str(path),
            value=path.suffix,
            fix="name the file .jsonl/.json/.csv or pass format='jsonl' or format='csv'",
        )
    return fmt


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataError(
            "dataset file not found",
            where=str(path),
            value=str(path),
            fix=f"check the path; a relative path is resolved against the current working "
            f"directory ({os.getcwd()}), i.e. {path.absolute()}",
        )
    if not path.is_file():
        raise DataError(
            "dataset path is not a file",
            where=str(path),
            value=str(path),
            fix="point to a .jsonl, .json or .csv file, not a directory",
        )
    # size cap (JOINTOPT_MAX_DATA_MB) before reading; utf-8-sig also accepts a byte-order
    # mark (as written by spreadsheet programs)
    return read_text(path, "dataset", limits=data_limits(), error=DataError)


def _iter_json(path: Path, text: str) -> _Records:
    if text.lstrip().startswith("["):
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            raise DataError(
                f"a {path.suffix} file holds one JSON object per line, but this one starts "
                "with a JSON array",
                where=f"{path}:{text[: len(text) - len(text.lstrip())].count(chr(10)) + 1}",
                value=text.lstrip()[:40],
                fix="write one object per line (e.g. jq -c '.[]' data.json > data.jsonl), or "
                "rename the file to .json to read it as one JSON array",
            )
        yield from _iter_json_array(path, text)
        return
    limits = data_limits()
    # split on "\n" only: str.splitlines() would also split on U+2028 inside JSON strings
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        if len(line) > limits.max_line_bytes // 4:
            check_line_size(len(line.encode("utf-8")), where, limits=limits, error=DataError)
        record = parse_json(line, str(path), line=lineno, limits=limits, error=DataError,
                            fix='write one JSON object per line, e.g. '
                            '{"question": "...", "answer": "..."}')
        if not isinstance(record, dict):
            raise DataError(
                f"each line must be a JSON object, not a JSON {type(record).__name__}",
                where=where,
                value=record,
                fix='write one JSON object per line, e.g. {"question": "...", "answer": "..."}',
            )
        yield where, lineno, record


def _iter_json_array(path: Path, text: str) -> _Records:
    data = parse_json(text, str(path), limits=data_limits(), error=DataError,
                      fix="fix the JSON, or write one JSON object per line (JSON Lines)")
    if not isinstance(data, list):
        raise DataError(
            "a .json dataset must be JSON Lines or one JSON array of objects",
            where=str(path),
            value=type(data).__name__,
            fix="write one JSON object per line (JSON Lines) or a list of objects",
        )
    for index, record in enumerate(data):
        where = f"{path}: item {index}"
        if not isinstance(record, dict):
            raise DataError(
                f"each item must be a JSON object, not a JSON {type(record).__name__}",
                where=where,
                value=record,
                fix='make the file a list of objects, e.g. [{"question": "...", "answer": "..."}]',
            )
        yield where, index, record


def _iter_csv(path: Path, text: str) -> _Records:
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey=_EXTRA)
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise DataError(
            f"the CSV header cannot be parsed: {exc}", where=f"{path}:1", value=None,
            fix="write a header row of column names",
        ) from None
    if not header:
        return
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataError(
            f"the CSV header repeats the column {duplicates[0]!r}",
            where=f"{path}:1",
            value=header,
            fix="give every column a unique name",
        )
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(
                f"the CSV row cannot be parsed: {exc}",
                where=f"{path}:{reader.line_num}",
                value=None,
                fix="check the quoting of that row",
            ) from None
        # line_num is the (last) physical line of the record; DictReader skips empty lines.
        lineno = reader.line_num
        where = f"{path}:{lineno}"
        extra = row.pop(_EXTRA, None)
        if extra is not None:
            raise DataError(
                f"row has {len(header) + len(extra)} cells but the header has {len(header)} "
                "columns",
                where=where,
                value=extra,
                fix="quote cells that contain commas, or fix the row",
            )
        short = [k for k, v in row.items() if v is None]
        if short:
            raise DataError(
                f"row has {len(header) - len(short)} cells but the header has {len(header)} "
                f"columns (no value for {short})",
                where=where,
                value=[v for v in row.values() if v is not None],
                fix="give every row one cell per column (an empty cell is fine: a,,c)",
            )
        if not any(v.strip() for v in row.values()):
            continue  # a row of empty cells
        yield where, lineno, row


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
    fmt = _resolve_format(file, format)
    if input_fields is not None:
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
    text = _read_text(file)
    records = _iter_csv(file, text) if fmt == "csv" else _iter_json(file, text)
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
            ident = f"{file.stem}:{position}"
        if ident in first_seen:
            raise DataError(
                f"duplicate id (first used at {first_seen[ident]})",
                where=where,
                value=ident,
                fix="make ids unique, or pass id_field=None to number records by line",
            )
        first_seen[ident] = where
        difficulty = None
        if difficulty_field is not None:
            raw = record.get(difficulty_field)
            if raw is not None and raw != "":
                difficulty = _scalar(raw, difficulty_field, where)
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
