"""The one input guard: every YAML and JSON file jointopt reads goes through here.

Study configs, search spaces, policy files, dataset files (JSON Lines, JSON arrays, CSV),
sample-bank lines, the proposal cache and saved DSPy programs are read with:

* a **size cap**, checked before a byte is parsed (configs and policies 5 MB, datasets
  200 MB, one line of a dataset or bank 4 MB; raise them with ``JOINTOPT_MAX_CONFIG_MB``,
  ``JOINTOPT_MAX_DATA_MB``, ``JOINTOPT_MAX_LINE_MB``);
* an **alias cap** for YAML: alias uses are counted and the size of the tree they expand
  to is computed while the document is composed, so an alias bomb ("billion laughs") is
  refused at once instead of hanging whatever walks the result; a recursive alias too;
* a **depth cap** (64 levels of nesting);
* **duplicate keys refused** (YAML and JSON), naming the key and both lines, instead of
  the last one silently winning;
* libyaml's C parser (``yaml.CParser``) when PyYAML has it, for speed.

Every problem is one :class:`~jointopt.errors.JointoptError` naming the file and line,
the value and the fix.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jointopt.safety.yaml_loader import GuardedLoader, Refused
from jointopt.errors import ConfigError, JointoptError

__all__ = [
    "Limits",
    "config_limits",
    "data_limits",
    "read_text",
    "load_yaml",
    "parse_yaml",
    "parse_json",
    "parse_document",
    "check_line_size",
]

_MB = 1024 * 1024
#: Environment variables that raise the caps (megabytes; decimals allowed).
CONFIG_ENV = "JOINTOPT_MAX_CONFIG_MB"
DATA_ENV = "JOINTOPT_MAX_DATA_MB"
LINE_ENV = "JOINTOPT_MAX_LINE_MB"


@dataclass(frozen=True)
class Limits:
    """Caps applied while a file is read and parsed.

    Attributes:
        max_bytes: largest file (bytes).
        max_line_bytes: largest line of a line-oriented file (JSON Lines, banks).
        max_depth: deepest nesting of mappings and lists (aliases expanded).
        max_nodes: most values a YAML document may expand to once aliases are resolved.
        max_aliases: most alias uses (``*name``) in a YAML document.
        env: the environment variable that raises ``max_bytes`` (named in errors).
        line_env: the environment variable that raises ``max_line_bytes``.
    """

    max_bytes: int = 5 * _MB
    max_line_bytes: int = 4 * _MB
    max_depth: int = 64
    max_nodes: int = 100_000
    max_aliases: int = 1_000
    env: str = CONFIG_ENV
    line_env: str = LINE_ENV


def _env_mb(name: str, default_mb: float) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return int(default_mb * _MB)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError("the size limit must be a positive number of megabytes", where=name,
                          value=raw, fix=f"export {name}={default_mb:g} (or unset it)")
    return int(value * _MB)


def config_limits() -> Limits:
    """Limits of study configs, search spaces and policy files (5 MB unless
    ``JOINTOPT_MAX_CONFIG_MB`` says otherwise)."""
    return Limits(max_bytes=_env_mb(CONFIG_ENV, 5), max_line_bytes=_env_mb(LINE_ENV, 4))


def data_limits() -> Limits:
    """Limits of dataset files (200 MB, ``JOINTOPT_MAX_DATA_MB``), their lines and bank
    lines (4 MB, ``JOINTOPT_MAX_LINE_MB``)."""
    return Limits(max_bytes=_env_mb(DATA_ENV, 200), max_line_bytes=_env_mb(LINE_ENV, 4),
                  env=DATA_ENV)


def _mb(size: int) -> str:
    return f"{size / _MB:.1f} MB" if size >= _MB // 10 else f"{size} bytes"


def _raise_to(size: int) -> str:
    return f"{max(1, -(-size // _MB)) + 1}"


def read_text(path: str | Path, what: str, *, limits: Limits | None = None,
              error: type[JointoptError] = ConfigError, missing_fix: str | None = None) -> str:
    """The text of a UTF-8 file, refused when missing, a folder, too large or not UTF-8.

    The size is checked before anything is read; a byte-order mark is dropped.
    """
    limits = limits or config_limits()
    path = Path(path)
    if path.is_dir():
        raise error(f"the {what} path is a folder, not a file", where=str(path), value=str(path),
                    fix=f"point to the {what} file inside that folder")
    if not path.is_file():
        raise error(f"{what} file not found", where=str(path), value=str(path),
                    fix=missing_fix or "check the path (relative paths start at the config "
                                       "file's folder)")
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise _too_big(path, what, size, limits, error)
        with path.open("rb") as fh:
            data = fh.read(limits.max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read the {what} file: {exc.strerror}", where=str(path),
                    value=str(path), fix="check the file's permissions") from None
    if len(data) > limits.max_bytes:  # grew while being read, or a special file
        raise _too_big(path, what, len(data), limits, error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(f"the {what} file is not valid UTF-8 ({exc.reason})", where=f"{path}:{line}",
                    value=data[exc.start: exc.start + 8], fix="save the file as UTF-8") from None


def _too_big(path: Path, what: str, size: int, limits: Limits,
             error: type[JointoptError]) -> JointoptError:
    return error(f"the {what} file is {_mb(size)}, above the limit of {_mb(limits.max_bytes)}; "
                 "it was not parsed", where=str(path), value=size,
                 fix=f"use a smaller file, or raise the limit: export {limits.env}="
                     f"{_raise_to(size)}")


def check_line_size(size: int, where: str, *, limits: Limits | None = None,
                    error: type[JointoptError] = ConfigError) -> None:
    """Refuse one line of a line-oriented file (JSON Lines, a bank) above the line cap."""
    limits = limits or data_limits()
    if size > limits.max_line_bytes:
        raise error(f"the line is longer than the limit of {_mb(limits.max_line_bytes)} per "
                    "line; it was not parsed", where=where, value=f"{size} bytes",
                    fix=f"split that record, or raise the limit: export {limits.line_env}="
                        f"{_raise_to(size)}")


# ---------------------------------------------------------------------------- YAML


def parse_yaml(text: str, source: str, *, limits: Limits | None = None,
               error: type[JointoptError] = ConfigError) -> Any:
    """Parse one YAML document like ``yaml.safe_load``, within ``limits``.

    Args:
        text: the document.
        source: the file name errors start with (``file:line``).
    """
    limits = limits or config_limits()
    _check_text_size(text, source, "YAML", limits, error)
    loader = GuardedLoader(text, max_depth=limits.max_depth, max_nodes=limits.max_nodes,
                           max_aliases=limits.max_aliases)
    try:
        return loader.get_single_data()
    except Refused as exc:
        raise error(exc.message, where=_at(source, exc.mark), value=exc.value,
                    fix=exc.fix) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise error(f"invalid YAML: {getattr(exc, 'problem', None) or exc}",
                    where=_at(source, mark), fix="fix the YAML syntax at that line") from None
    except RecursionError:
        raise error("values are nested too deeply", where=source,
                    fix="flatten the structure") from None
    finally:
        loader.dispose()


def _check_text_size(text: str, source: str, what: str, limits: Limits,
                     error: type[JointoptError]) -> None:
    if len(text) > limits.max_bytes // 4:  # UTF-8 takes at most 4 bytes a character
        size = len(text.encode("utf-8"))
        if size > limits.max_bytes:
            raise _too_big(Path(source), what, size, limits, error)


def _at(source: str, mark: Any) -> str:
    return f"{source}:{mark.line + 1}" if mark is not None else source


def load_yaml(path: str | Path, what: str, *, limits: Limits | None = None,
              error: type[JointoptError] = ConfigError, missing_fix: str | None = None) -> Any:
    """Read and parse a YAML file within ``limits`` (see :func:`read_text`, :func:`parse_yaml`)."""
    limits = limits or config_limits()
    text = read_text(path, what, limits=limits, error=error, missing_fix=missing_fix)
    return parse_yaml(text, str(path), limits=limits, error=error)


# ---------------------------------------------------------------------------- JSON


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')


def _find_duplicate(text: str) -> tuple[str, int, int] | None:
    """The first key given twice in one object of a JSON text: (key, first line, second
    line), or None (only called once a duplicate is known, to name the lines)."""
    stack: list[dict[str, int] | None] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "{[":
            stack.append({} if token == "{" else None)
        elif token in "}]":
            if stack:
                stack.pop()
        elif stack and stack[-1] is not None:
            rest = text[match.end(): match.end() + 64].lstrip()
            if not rest.startswith(":"):
                continue
            try:
                key = json.loads(token)
            except ValueError:
                continue
            line = text.count("\n", 0, match.start()) + 1
            if key in stack[-1]:
                return key, stack[-1][key], line
            stack[-1][key] = line
    return None


def _depth(data: Any, limit: int) -> bool:
    """Whether ``data`` nests containers more than ``limit`` levels deep (no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            if level > limit:
                return True
            stack.extend((v, level + 1) for v in value if isinstance(v, (dict, list)))
    return False


def parse_json(text: str | bytes, source: str, *, line: int | None = None,
               limits: Limits | None = None, error: type[JointoptError] = ConfigError,
               label: str = "line is", fix: str | None = None) -> Any:
    """Parse JSON (a whole file, or one ``line`` of a JSON Lines file) within ``limits``,
    refusing a key given twice in one object.

    Args:
        source: the file name errors start with.
        line: the line number when ``text`` is one line of a line-oriented file.
        label: how a line is named in a syntax error (``"line is"`` -> "line is not valid
            JSON: ...").
        fix: the fix of a syntax error.
    """
    limits = limits or config_limits()
    try:
        data = json.loads(text, object_pairs_hook=_pairs)
    except _DuplicateKey as exc:
        body = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        found = _find_duplicate(body)
        key = found[0] if found else exc.key
        if line is not None:
            where, lines = f"{source}:{line}", ""
        elif found:
            where, lines = f"{source}:{found[2]}", f" (lines {found[1]} and {found[2]})"
        else:
            where, lines = source, ""
        raise error(f"the key {key!r} is given twice in one object{lines}; JSON readers "
                    "would silently keep the last one", where=where, value=key,
                    fix=f"keep one {json.dumps(key)} and delete the other") from None
    except json.JSONDecodeError as exc:
        if line is not None:
            shown = exc.doc if len(exc.doc) <= 120 else exc.doc[:117] + "..."
            raise error(f"{label} not valid JSON: {exc.msg} (column {exc.colno})",
                        where=f"{source}:{line}", value=shown,
                        fix=fix or "write one JSON object per line") from None
        raise error(f"invalid JSON: {exc.msg} (column {exc.colno})",
                    where=f"{source}:{exc.lineno}",
                    fix=fix or "fix the JSON syntax at that line") from None
    except UnicodeDecodeError as exc:
        raise error(f"{label} not valid UTF-8 ({exc.reason})",
                    where=f"{source}:{line}" if line else source,
                    value=exc.object[exc.start: exc.start + 8], fix="save the file as UTF-8") \
            from None
    except RecursionError:
        data = None
        deep = True
    else:
        deep = _depth(data, limits.max_depth)
    if deep:
        raise error(f"values are nested more than {limits.max_depth} levels deep",
                    where=f"{source}:{line}" if line else source, fix="flatten the structure")
    return data


def parse_document(text: str, fmt: str, source: str, *, limits: Limits | None = None,
                   what: str = "policy") -> Any:
    """A YAML or JSON document (``fmt`` ``"yaml"`` or ``"json"``) already read as text,
    size-capped and guarded like every other file (used for policy files)."""
    limits = limits or config_limits()
    _check_text_size(text, source, what, limits, ConfigError)
    if fmt == "json":
        return parse_json(text, source, limits=limits)
    return parse_yaml(text, source, limits=limits)

