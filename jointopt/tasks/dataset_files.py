"""Reading dataset files (JSON Lines, JSON arrays, CSV) into records, each with the
``file:line`` that problems are reported at.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from jointopt.errors import ConfigError, DataError
from jointopt.safety.safe_load import check_line_size, data_limits, parse_json, read_text
from jointopt.tasks._common import did_you_mean

__all__ = ["Records", "read_records", "resolve_format"]

_FORMATS: tuple[str, ...] = ("jsonl", "csv")
_SUFFIXES: Mapping[str, str] = MappingProxyType(
    {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
)

# (where, position, record); where is "file:line" or "file: item N", position the line
# number (item index for a JSON array) used for default ids.
Records = Iterator[tuple[str, int, Mapping[str, Any]]]
_EXTRA = "\0extra"


def resolve_format(path: Path, format: str | None) -> str:
    """``format`` when given (checked), else the format the file suffix names."""
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


def _iter_json(path: Path, text: str) -> Records:
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


def _iter_json_array(path: Path, text: str) -> Records:
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


def _iter_csv(path: Path, text: str) -> Records:
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


def read_records(path: Path, fmt: str) -> Records:
    """Read the file (checked now: exists, is a file, size cap) and iterate its records."""
    text = _read_text(path)
    return _iter_csv(path, text) if fmt == "csv" else _iter_json(path, text)
