"""Building a :class:`~jointopt.core.policy.Policy` from a schema-valid policy file, with the
checks only jointopt can make: strategies and their cost, templates, extractors, demos.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from jointopt.errors import ConfigError, JointoptError
from jointopt.core.policy import DifficultySpec, Policy
from jointopt.core.policy_schema import MAX_COMPLETIONS_CAP, PolicyFileModel, TaskSpecModel
from jointopt.core.thinking import ThinkingSpec

__all__ = ["build_policy", "rewrap"]


def rewrap(exc: JointoptError, path: Path, field: str) -> ConfigError:
    """A library error raised while building the policy, re-addressed to the file."""
    inner = exc.where or ""
    if inner.startswith(field):
        where = f"{path}: {inner}"
    else:
        where = f"{path}: {field}" + (f" ({inner})" if inner else "")
    kwargs: dict[str, Any] = {"where": where, "fix": exc.fix}
    if exc.has_value:
        kwargs["value"] = exc.value
    return ConfigError(exc.message, **kwargs)


def build_policy(parsed: PolicyFileModel, path: Path) -> Policy:
    """The Policy of a schema-valid file, after the checks only jointopt can make."""
    from jointopt.core.prompts import PromptTemplate
    from jointopt._registry import STRATEGIES

    _check_dataclass(DifficultySpec, parsed.difficulty, path, "difficulty")
    missing = [k for k in ("id", "user") if k not in parsed.prompt]
    if missing:
        raise ConfigError("invalid policy file: required key is missing",
                          where=f"{path}: prompt.{missing[0]}", fix=f"add `{missing[0]}:`")
    prompt = _check_dataclass(PromptTemplate, parsed.prompt, path, "prompt")
    for name, alloc in parsed.bins.items():
        if alloc.thinking is not None:
            try:
                ThinkingSpec(**alloc.thinking.model_dump())
            except JointoptError as exc:
                raise rewrap(exc, path, f"bins.{name}") from None
        try:
            strategy = STRATEGIES.create(alloc.strategy, where=f"bins.{name}.strategy",
                                         **dict(alloc.params))
        except JointoptError as exc:
            raise rewrap(exc, path, f"bins.{name}") from None
        cost = strategy.max_completions()
        if cost > MAX_COMPLETIONS_CAP:
            raise ConfigError(
                f"bin {name!r} may cost {cost} completions per input, above the cap of "
                f"{MAX_COMPLETIONS_CAP}", where=f"{path}: bins.{name}.params",
                value=dict(alloc.params),
                fix="lower n / rounds / depth (the study's search space bounds them)")
    if prompt.answer_regex:
        import re

        try:
            re.compile(prompt.answer_regex)
        except re.error as exc:
            raise ConfigError(f"answer_regex is not a valid regular expression: {exc}",
                              where=f"{path}: prompt.answer_regex",
                              value=prompt.answer_regex,
                              fix="fix the pattern (Python 're' syntax)") from None
    task_spec = parsed.metadata.task
    if task_spec is not None:
        _check_task_spec(task_spec, prompt, path)
    _check_template_safety(prompt, task_spec, path)
    if parsed.metadata.certificate is not None:
        _check_fallbacks(parsed, path)
    dumped = parsed.model_dump(mode="json", exclude_none=False)
    # Metadata as written (no defaults filled in), so a file round-trips unchanged.
    metadata = _drop_empty(parsed.metadata.model_dump(mode="json", exclude_unset=True))
    try:
        return Policy.from_dict({**dumped, "metadata": metadata})
    except JointoptError as exc:
        raise rewrap(exc, path, exc.where or "policy") from None


def _check_fallbacks(parsed: PolicyFileModel, path: Path) -> None:
    """Every fallback policy of the certificate is checked as a policy of its own (with
    the file's task section); errors name the fallback."""
    for i, fallback in enumerate(parsed.metadata.certificate.fallbacks):
        body = fallback.policy.model_dump(mode="json")
        inner = PolicyFileModel.model_validate({
            "schema_version": parsed.schema_version, **body,
            "metadata": {"task": parsed.metadata.task.model_dump(mode="json")}
            if parsed.metadata.task is not None else {}})
        build_policy(inner, Path(f"{path} (metadata.certificate.fallbacks[{i}].policy)"))


_SCALARS = (int, float, str, bool, type(None))


def _scalar_types(hint: Any) -> tuple[type, ...]:
    """The scalar types a hint allows (``int``, ``str | None`` ...), or () for others."""
    if hint in _SCALARS:
        return (hint,)
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) is not Literal and all(a in _SCALARS for a in args):
        return tuple(args)
    return ()


def _is_instance(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _check_dataclass(cls: type, data: Mapping[str, Any], path: Path, field: str) -> Any:
    """Build ``cls(**data)``: unknown keys, Literal choices and the class's own checks
    become ConfigErrors naming ``field``."""
    where = f"{path}: {field}"
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - annotations naming type-checking-only imports
        hints = {}
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"invalid policy file: unknown key {key!r}", where=f"{where}.{key}",
                              fix=f"{hint}known keys here: {', '.join(known)}")
        hint_type = hints.get(key)
        choices = typing.get_args(hint_type) if typing.get_origin(hint_type) is Literal else ()
        if choices and value not in choices:
            raise ConfigError(f"invalid policy file: unknown {field} {key}",
                              where=f"{where}.{key}", value=value,
                              fix=f"use one of: {', '.join(map(str, choices))}")
        wanted = _scalar_types(hint_type)
        if wanted and not _is_instance(value, wanted):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in wanted)
            raise ConfigError(f"invalid policy file: `{key}` must be {names}",
                              where=f"{where}.{key}", value=value, fix=f"write `{key}` as {names}")
    try:
        return cls(**data)
    except JointoptError as exc:
        raise rewrap(exc, path, field) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid policy file: {exc}", where=where, value=dict(data),
                          fix=f"write the {field} section as jointopt export does") from None


def _check_task_spec(spec: TaskSpecModel, prompt: Any, path: Path) -> None:
    from jointopt.tasks import AnswerExtractor, AnswerMatcher

    where = f"{path}: metadata.task"
    try:
        AnswerExtractor(kind=spec.extractor.kind, pattern=spec.extractor.pattern,
                        group=spec.extractor.group)
    except JointoptError as exc:
        raise rewrap(exc, path, "metadata.task.extractor") from None
    try:
        AnswerMatcher(kind=spec.matcher.kind, tolerance=spec.matcher.tolerance)
    except JointoptError as exc:
        raise rewrap(exc, path, "metadata.task.matcher") from None
    fields = set(spec.fields)
    for part, used in prompt.variables().items():
        allowed = fields | ({"target"} if part == "shot_answer" else set())
        unknown = sorted(used - allowed)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(allowed), n=1)
            hint = f"did you mean {{{{ {close[0]} }}}}? " if close else ""
            raise ConfigError(
                f"template variable {unknown[0]!r} is not one of the task fields",
                where=f"{path}: prompt.{part}", value=unknown[0],
                fix=f"{hint}fields in metadata.task.fields: {', '.join(sorted(fields))}",
            )
    if prompt.shots > len(spec.demos):
        raise ConfigError(
            f"the template uses {prompt.shots} demonstrations but the file holds "
            f"{len(spec.demos)}",
            where=f"{where}.demos", value=len(spec.demos),
            fix="re-export the policy (it copies the demos it needs) or lower prompt.shots",
        )
    for i, demo in enumerate(spec.demos):
        missing = sorted(fields - set(demo.inputs))
        if missing:
            raise ConfigError(f"demo lacks input field {missing[0]!r}",
                              where=f"{where}.demos[{i}].inputs", value=sorted(demo.inputs),
                              fix=f"give every demo the fields {sorted(fields)}")


def _check_template_safety(prompt: Any, spec: TaskSpecModel | None, path: Path) -> None:
    """Refuse, at load time, a template the sandbox would refuse on every request
    (rendered with the file's demonstrations when it holds some)."""
    from jointopt.core.prompts import check_template_safety

    samples = [{**d.inputs, "target": d.target} for d in spec.demos] if spec else []
    try:
        check_template_safety(prompt, samples[:8] or None)
    except JointoptError as exc:
        part = (exc.where or "").rpartition(".")[2] or "user"
        kwargs: dict[str, Any] = {"where": f"{path}: prompt.{part}", "fix": exc.fix}
        if exc.has_value:
            kwargs["value"] = exc.value
        raise ConfigError(f"invalid policy file: {exc.message}", **kwargs) from None


def _drop_empty(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metadata.items() if v not in (None, {}, [])}
