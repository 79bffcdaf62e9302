"""Pydantic validation errors in the words of the file that was read.

Every YAML/JSON boundary (study configs, search spaces, policy files, proposal sources,
DSPy program spaces) validates with a pydantic model; :func:`problems` turns the
``ValidationError`` into :class:`Problem` values (the field path as the user wrote it, the
kind of problem, the keys allowed where an unknown key sits) that each boundary words
into its :class:`~jointopt.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

__all__ = ["Problem", "problems"]


@dataclass(frozen=True)
class Problem:
    """One failed check of a validation."""

    path: tuple[str, ...]
    """The field's path as written in the file (list indexes and dict keys included,
    pydantic's union-member names left out)."""
    kind: Literal["unknown", "missing", "invalid"]
    """An unknown key, a missing required key, or a value that fails a check."""
    message: str
    """Pydantic's description of the failed check."""
    value: Any = None
    """The value given (``invalid`` problems)."""
    known: tuple[str, ...] = ()
    """The keys allowed where an unknown key sits."""

    @property
    def key(self) -> str:
        """The last key of the path (``""`` at the top level)."""
        return self.path[-1] if self.path else ""

    @property
    def field(self) -> str:
        """The dotted path (``prompts.0.user``)."""
        return ".".join(self.path)

    @property
    def hint(self) -> str:
        """``"did you mean 'x'? "`` for an unknown key close to a known one, else ``""``."""
        close = difflib.get_close_matches(self.key, list(self.known), n=1)
        return f"did you mean {close[0]!r}? " if close else ""


def problems(exc: ValidationError, model: type[BaseModel], *,
             hidden: tuple[str, ...] = ()) -> list[Problem]:
    """The problems of ``exc`` (raised validating ``model``), unknown keys first: a
    misspelled key also makes the right one "missing". ``hidden`` fields are never
    offered as known keys."""
    found = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            path, holder = _walk(model, loc[:-1])
            known = tuple(k for k in (holder.model_fields if holder else ()) if k not in hidden)
            found.append(Problem((*path, str(loc[-1])), "unknown", err["msg"], known=known))
        else:
            path, _ = _walk(model, loc)
            found.append(Problem(tuple(path), "missing" if kind == "missing" else "invalid",
                                 err["msg"], err.get("input")))
    return sorted(found, key=lambda p: p.kind != "unknown")


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[str], type[BaseModel] | None]:
    """The path of ``loc`` as written (without union-member names) and the model it ends
    in (None past a plain value)."""
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
        fields = current.model_fields if current is not None else {}
        if part not in fields:
            continue  # a dict key (a bin name): the dict's values have the same model
        candidates = _models_in(fields[part].annotation)
        current = candidates[0] if candidates else None
    return path, current


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (``list[X]``, ``dict[str, X]``, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        found.extend(m for m in _models_in(arg) if m not in found)
    return found
