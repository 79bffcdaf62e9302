"""Reading YAML files into strict pydantic models: safe loading (size, alias, depth and
duplicate-key caps), and one :class:`ConfigError` naming the file, the field path, the
value and the fix (with "did you mean" for misspelled keys)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

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
    for err in exc.errors():
        path, holder = _walk(model, err["loc"][:-1])
        key = str(err["loc"][-1]) if err["loc"] else ""
        loc = ".".join([*path, key]) if key else ".".join(path)
        kind = err["type"]
        if kind == "extra_forbidden":
            known = [k for k in holder.model_fields if k != "base_dir"] if holder else []
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(f"{loc}: unknown key {key!r}\n  fix: {hint}known keys here: "
                         f"{', '.join(known)}")
        elif kind == "missing":
            lines.append(f"{loc}: required key is missing\n  fix: add `{key}:`")
        else:
            value = err.get("input")
            shown = repr(value)
            if len(shown) > 120:
                shown = shown[:117] + "..."
            lines.append(f"{loc}: {err['msg']} (got {shown})\n  fix: set `{key}` "
                         f"to a value that satisfies: {err['msg'][0].lower()}{err['msg'][1:]}")
    return ConfigError(f"invalid {source}:\n" + "\n".join(lines))


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[str], type[BaseModel] | None]:
    """The field path of ``loc`` without pydantic's union-member names
    (``prompts.0.PromptConfig.user`` -> ``prompts.0``...), and the model it ends in."""
    path: list[str] = []
    current: type[BaseModel] | None = model
    candidates = [model]
    for part in loc:
        if isinstance(part, int):
            path.append(str(part))
            continue
        named = [m for m in candidates if m.__name__ == part]
        if named:  # the union member pydantic checked the value against
            current, candidates = named[0], named[:1]
            continue
        path.append(str(part))
        field = current.model_fields.get(part) if current is not None else None
        candidates = _models_in(field.annotation) if field is not None else []
        current = candidates[0] if candidates else None
    return path, current


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a field's annotation (``list[X]``, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        found.extend(m for m in _models_in(arg) if m not in found)
    return found


def parse_model(model: type[BaseModel], data: Any, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of keys to values", where=source,
                          value="an empty file" if data is None else type(data).__name__,
                          fix="write `key: value` lines at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, model, source) from None
