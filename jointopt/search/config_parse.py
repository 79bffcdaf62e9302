"""Reading YAML files into strict pydantic models: safe loading (size, alias, depth and
duplicate-key caps), and one :class:`ConfigError` naming the file, the field path, the
value and the fix (with "did you mean" for misspelled keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from jointopt.safety.validation import problems
from jointopt.errors import ConfigError

__all__ = ["StrictModel", "read_yaml", "parse_model"]


class StrictModel(BaseModel):
    """A config section: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def read_yaml(path: Path, what: str) -> Any:
    """Load a YAML file safely, with errors naming the file and line (size, alias, depth
    and duplicate-key caps of :mod:`jointopt.safety.safe_load`)."""
    from jointopt.safety.safe_load import load_yaml

    return load_yaml(path, what, missing_fix="check the path (relative paths start at the "
                                             "config file)")


def _validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> ConfigError:
    lines = []
    for p in problems(exc, model, hidden=("base_dir",)):
        if p.kind == "unknown":
            lines.append(f"{p.field}: unknown key {p.key!r}\n  fix: {p.hint}known keys here: "
                         f"{', '.join(p.known)}")
        elif p.kind == "missing":
            lines.append(f"{p.field}: required key is missing\n  fix: add `{p.key}:`")
        else:
            shown = repr(p.value)
            if len(shown) > 120:
                shown = shown[:117] + "..."
            lines.append(f"{p.field}: {p.message} (got {shown})\n  fix: set `{p.key}` "
                         f"to a value that satisfies: {p.message[0].lower()}{p.message[1:]}")
    return ConfigError(f"invalid {source}:\n" + "\n".join(lines))


def parse_model(model: type[BaseModel], data: Any, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of keys to values", where=source,
                          value="an empty file" if data is None else type(data).__name__,
                          fix="write `key: value` lines at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, model, source) from None
