"""Reading a plain table of recorded generations (JSONL, CSV, Parquet) and its cells.

Rows are numbered from 1 (the first data row; in a CSV file the header is not a row).
Every conversion error names the file, the row, the column, the value and the fix.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jointopt.errors import ConfigError, DataError

__all__ = ["Table", "read_table"]

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


@dataclass(frozen=True)
class Table:
    """The rows of one table file, as dicts of column -> value."""

    path: Path
    columns: tuple[str, ...]
    rows: Sequence[Mapping[str, Any]]

    def where(self, row: int, column: str | None = None) -> str:
        """``file: row N, column 'c'`` (rows count from 1)."""
        return f"{self.path}: row {row + 1}" + (f", column {column!r}" if column else "")

    def error(self, row: int, column: str | None, message: str, value: Any,
              fix: str) -> DataError:
        return DataError(message, where=self.where(row, column), value=value, fix=fix)

    # -- cells
    def present(self, row: int, column: str) -> bool:
        value = self.rows[row].get(column)
        return value is not None and value != "" and not (
            isinstance(value, float) and math.isnan(value))

    def text(self, row: int, column: str) -> str | None:
        if not self.present(row, column):
            return None
        value = self.rows[row][column]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)

    def number(self, row: int, column: str, *, integer: bool = False,
               minimum: float | None = None) -> float | int | None:
        if not self.present(row, column):
            return None
        raw = self.rows[row][column]
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
            if integer:
                if not value.is_integer():
                    raise ValueError
                value = int(value)
        except (TypeError, ValueError):
            kind = "an integer" if integer else "a number"
            raise self.error(row, column, f"not {kind}", raw,
                             f"write {kind} in column {column!r}") from None
        if isinstance(value, float) and math.isnan(value):
            return None
        if minimum is not None and value < minimum:
            raise self.error(row, column, f"must be >= {minimum:g}", raw,
                             f"a count or token number is never below {minimum:g}; fix the "
                             "row or drop it")
        return value

    def flag(self, row: int, column: str) -> bool | None:
        if not self.present(row, column):
            return None
        raw = self.rows[row][column]
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, (int, float)) and raw in (0, 1):
            return bool(raw)
        text = str(raw).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise self.error(row, column, "not a true/false value", raw,
                         "write true/false (or 1/0)")

    def mapping(self, row: int, column: str) -> Any:
        """A JSON object or list cell (a CSV cell holds it as JSON text)."""
        if not self.present(row, column):
            return None
        raw = self.rows[row][column]
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise self.error(row, column, "not JSON", raw[:80],
                                 'write a JSON object, e.g. {"A": 90, "B": 38}') from None
        return raw


def read_table(path: str | Path, format: str | None = None) -> Table:
    """Read a ``.jsonl``, ``.csv`` or ``.parquet`` table (``format`` overrides the suffix).

    Raises:
        ConfigError: a missing file, an unknown format, Parquet without pyarrow.
        DataError: a line that is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("table file not found", where=str(path), value=str(path),
                          fix="pass the path of a .jsonl, .csv or .parquet file")
    kind = (format or path.suffix.lstrip(".")).lower()
    if kind in ("jsonl", "json", "ndjson"):
        rows = _jsonl(path)
    elif kind == "csv":
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    elif kind in ("parquet", "pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError("reading Parquet needs pyarrow", where=str(path),
                              fix="pip install 'jointopt[banks]' (pyarrow), or export the table as CSV or JSONL"
                              ) from None
        rows = pq.read_table(path).to_pylist()
    else:
        raise ConfigError("unknown table format", where=str(path), value=kind,
                          fix="use a .jsonl, .csv or .parquet file, or pass --format")
    columns: dict[str, None] = {}
    for row in rows[:1000]:
        columns.update(dict.fromkeys(row))
    return Table(path=path, columns=tuple(columns), rows=rows)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file, through the guard for untrusted data (line
    size, nesting depth, keys given twice)."""
    from jointopt.safety.safe_load import check_line_size, data_limits, parse_json

    limits = data_limits()
    rows = []
    with path.open("rb") as fh:
        for number, raw in enumerate(iter(lambda: fh.readline(limits.max_line_bytes + 1), b""),
                                     1):
            check_line_size(len(raw), f"{path}:{number}", limits=limits, error=DataError)
            if not raw.strip():
                continue
            obj = parse_json(raw, str(path), line=number, limits=limits, error=DataError,
                             fix="one JSON object per line")
            if not isinstance(obj, dict):
                raise DataError("line is not a JSON object", where=f"{path}:{number}",
                                value=type(obj).__name__, fix="one JSON object per line")
            rows.append(obj)
    return rows
