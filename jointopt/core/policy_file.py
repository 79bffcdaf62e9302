"""The versioned policy file: what ``jointopt export`` writes and the runtime reads.

A policy file is :meth:`Policy.to_dict` written as YAML (``.yaml``/``.yml``) or JSON
(``.json``). Everything that is not part of the :class:`~jointopt.core.policy.Policy` itself
lives in ``Policy.metadata``, in four known sections (every one optional)::

    schema_version: 1
    model: smollm2-135m-instruct
    prompt: {id, user, system?, shots?, shot_answer?, answer_regex?, ...}   # PromptTemplate
    difficulty: {source: none | label | probe | predictor, bins, default_bin,
                 probe_k?, probe_temperature?, probe_max_tokens?, thresholds?,   # probe
                 predictor?: {kind, features, classes, means, scales, weights}}  # predictor
    bins:
      all: {strategy: majority, temperature: 0.4, max_tokens: 12, params: {n: 3}}
    metadata:
      task:          # answer extraction and inputs: what the runtime needs without data
        name, description,
        fields: [words, question]          # every input field the task had
        extractor: {kind, pattern?, group?}
        matcher: {kind, tolerance?}
        verifier: "module:function" | null # serve-time verifier, imported at load, only
                                           # from jointopt or an allowed module
        demos: [{id, inputs, target, difficulty?}]   # the demos the template can show
      metrics:       # measured on the study's data, with bootstrap confidence intervals
        n_examples, confidence, n_bootstrap, bootstrap_seed,
        accuracy: {estimate, low, high}, mean_tokens: {estimate, low, high},
        per_bin: {bin: {n_examples, accuracy, mean_tokens}}
        test: {n_examples, accuracy, mean_tokens}   (held-out split, when the study had one)
      provenance:    # where the numbers come from
        study_name, storage, trial_number, dataset_hash, dataset_hash_matches,
        jointopt_version, exported_at, pick, budget
      serving:       # names used by the exported serving configs, the proxy's input cap
        served_model_name, model_path, max_input_chars
      notes: {}      # free-form

Loading validates the whole file with pydantic models that reject unknown keys, then
checks what only jointopt knows: strategy parameters, template syntax and variables,
template safety (no private attributes or file loading; a sandboxed render with the
demos), budget caps (``max_tokens`` <= 65536, <= 1024 completions per input), extractor
patterns, demos against ``shots``. Every problem is one
:class:`~jointopt.errors.ConfigError` that names the file, the field and the fix. A file
written by another schema version is refused with the version this jointopt reads.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jointopt.errors import ConfigError, JointoptError
from jointopt.core.policy import SCHEMA_VERSION, DifficultySpec, Policy

__all__ = [
    "POLICY_SUFFIXES",
    "save_policy",
    "load_policy_file",
    "read_policy_dict",
    "policy_file_text",
    "jointopt_version",
]

log = logging.getLogger(__name__)

#: File suffixes a policy file may have, and the format each means.
POLICY_SUFFIXES: Mapping[str, str] = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}

_HEADER = (
    "# jointopt policy file (schema_version {version}).\n"
    "# Run it:   jointopt serve --policy {name} --upstream http://127.0.0.1:8000/v1\n"
    "# or from Python: jointopt.serving.runtime.load_policy({name!r}, backend=...)\n"
)


# ------------------------------------------------------------------------------ schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: Largest ``max_tokens`` a policy file may give a bin (a guard against typos such as
#: ``1e9``, which the upstream would otherwise be asked for on every request).
MAX_TOKENS_CAP = 65_536
#: Largest number of completions one input may cost under a bin's strategy.
MAX_COMPLETIONS_CAP = 1_024
#: Highest sampling temperature a policy file may give a bin.
MAX_TEMPERATURE = 10.0


class _AllocationModel(_Strict):
    strategy: str
    temperature: float = Field(0.7, ge=0, le=MAX_TEMPERATURE)
    max_tokens: int = Field(64, ge=1, le=MAX_TOKENS_CAP)
    params: dict[str, Any] = Field(default_factory=dict)


class _ExtractorModel(_Strict):
    kind: Literal["regex", "last_number", "choice_letter", "exact", "first_line"]
    pattern: str | None = None
    group: int | str = 1


class _MatcherModel(_Strict):
    kind: Literal["exact", "normalized", "numeric", "words"]
    tolerance: float = Field(1e-6, ge=0)


class _DemoModel(_Strict):
    id: str
    inputs: dict[str, str]
    target: str
    difficulty: str | None = None


class _TaskSpecModel(_Strict):
    name: str = "policy"
    description: str = ""
    fields: list[str] = Field(min_length=1)
    extractor: _ExtractorModel
    matcher: _MatcherModel
    verifier: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$")
    demos: list[_DemoModel] = Field(default_factory=list)


class _IntervalModel(_Strict):
    estimate: float
    low: float | None = None
    high: float | None = None


class _BinMetricsModel(_Strict):
    n_examples: int = Field(ge=0)
    accuracy: _IntervalModel
    mean_tokens: _IntervalModel


class _MetricsModel(_Strict):
    n_examples: int | None = Field(None, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)
    n_bootstrap: int | None = Field(None, ge=1)
    bootstrap_seed: int | None = None
    accuracy: _IntervalModel | None = None
    mean_tokens: _IntervalModel | None = None
    mean_prompt_tokens: float | None = None
    mean_completion_tokens: float | None = None
    per_bin: dict[str, _BinMetricsModel] = Field(default_factory=dict)
    #: Scores on the study's held-out test split (when it had one).
    test: _BinMetricsModel | None = None


class _ProvenanceModel(_Strict):
    study_name: str | None = None
    storage: str | None = None
    trial_number: int | None = None
    dataset_hash: str | None = None
    dataset_hash_matches: bool | None = None
    jointopt_version: str | None = None
    exported_at: str | None = None
    pick: str | None = None
    budget: float | None = None


class _ServingModel(_Strict):
    served_model_name: str | None = None
    model_path: str | None = None
    #: Largest input (characters over all fields) ``jointopt serve`` accepts; the study's
    #: ``optimizer.max_input_chars`` when exported.
    max_input_chars: int | None = Field(None, ge=1)


class _MetadataModel(_Strict):
    task: _TaskSpecModel | None = None
    metrics: _MetricsModel | None = None
    provenance: _ProvenanceModel | None = None
    serving: _ServingModel | None = None
    notes: dict[str, Any] = Field(default_factory=dict)


class _PolicyFileModel(_Strict):
    schema_version: int
    model: str = Field(min_length=1)
    # prompt and difficulty are checked against the PromptTemplate and DifficultySpec
    # dataclasses themselves (see _check_dataclass), so the file format follows them.
    prompt: dict[str, Any]
    difficulty: dict[str, Any] = Field(default_factory=dict)
    bins: dict[str, _AllocationModel] = Field(min_length=1)
    metadata: _MetadataModel = Field(default_factory=_MetadataModel)


_FIXES: Mapping[str, str] = {
    "schema_version": "write the integer schema_version this jointopt reads",
    "prompt": "give the prompt template as {id, user, system?, shots?, ...}",
    "bins": "give at least one bin: {all: {strategy: single, temperature: 0.7, max_tokens: 64}}",
    "kind": "use one of the listed kinds",
    "verifier": "write the verifier as 'package.module:function', or null",
    "max_tokens": f"use a budget between 1 and {MAX_TOKENS_CAP} tokens (e.g. 512)",
    "temperature": f"use a temperature between 0 and {MAX_TEMPERATURE:g} (e.g. 0.7)",
    "max_input_chars": "use a positive number of characters, e.g. 100000",
}


# ------------------------------------------------------------------------------ helpers


def jointopt_version() -> str:
    """The installed jointopt version (distribution metadata, else the package constant)."""
    from importlib import metadata

    try:
        return metadata.version("jointopt")
    except metadata.PackageNotFoundError:
        from jointopt._version import __version__

        return __version__


def _format(path: Path) -> str:
    fmt = POLICY_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            "a policy file must end in .yaml, .yml or .json",
            where=str(path),
            value=path.suffix or path.name,
            fix="name the file policy.yaml (YAML) or policy.json (JSON)",
        )
    return fmt


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return []
        if part not in fields:
            # a dict key (bin name, per_bin name): the value's model is the dict's values
            continue
        current = _inner_model(fields[part].annotation)
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _validation_error(exc: ValidationError, path: Path) -> ConfigError:
    problems = []
    # A misspelled key also makes the right one "missing": report the misspelling first.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    for err in errors:
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        last = str(loc[-1]) if loc else ""
        if err["type"] == "extra_forbidden":
            known = _known_keys(_PolicyFileModel, loc[:-1])
            close = difflib.get_close_matches(last, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append((field, f"unknown key {last!r}", None,
                             f"{hint}known keys here: {', '.join(known)}"))
        elif err["type"] == "missing":
            problems.append((field, "required key is missing", None, f"add `{last}:`"))
        else:
            problems.append((field, err["msg"], err.get("input"),
                             _FIXES.get(last, f"change the value of `{last}` as described")))
    field, message, value, fix = problems[0]
    if len(problems) > 1:
        others = "; ".join(f"{f}: {m}" for f, m, _, _ in problems[1:6])
        message += f" (and {len(problems) - 1} more: {others})"
    kwargs: dict[str, Any] = {"where": f"{path}: {field}", "fix": fix}
    if value is not None:
        kwargs["value"] = value
    return ConfigError(f"invalid policy file: {message}", **kwargs)


def _rewrap(exc: JointoptError, path: Path, field: str) -> ConfigError:
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


# ------------------------------------------------------------------------------ read


def read_policy_dict(path: str | Path) -> dict[str, Any]:
    """Read a policy file into a plain dict, checking only syntax and schema version."""
    from jointopt.safety.safe_load import parse_document, read_text  # size, alias, depth, duplicate keys

    path = Path(path)
    fmt = _format(path)
    text = read_text(path, "policy", missing_fix="check the path; `jointopt export ... "
                                                 "--out DIR` writes DIR/policy.yaml")
    try:
        data = parse_document(text, fmt, str(path))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON: {exc.msg}", where=f"{path}:{exc.lineno}",
                          fix="fix the JSON syntax at that line") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", where=where,
                          fix="fix the YAML syntax at that line") from None
    if not isinstance(data, dict):
        raise ConfigError("a policy file must hold a mapping of keys to values", where=str(path),
                          value=type(data).__name__,
                          fix="write the file with jointopt.core.policy_file.save_policy")
    version = data.get("schema_version")
    if "schema_version" not in data:
        raise ConfigError(
            "the policy file has no schema_version",
            where=f"{path}: schema_version",
            fix=f"add `schema_version: {SCHEMA_VERSION}` if the file follows this format, "
                "or re-export it with `jointopt export`",
        )
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError("schema_version must be an integer", where=f"{path}: schema_version",
                          value=version, fix=f"write `schema_version: {SCHEMA_VERSION}`")
    if version != SCHEMA_VERSION:
        newer = version > SCHEMA_VERSION
        raise ConfigError(
            f"unsupported policy schema_version {version}: this jointopt "
            f"({jointopt_version()}) reads schema_version {SCHEMA_VERSION} only",
            where=f"{path}: schema_version",
            value=version,
            fix=("upgrade jointopt to read this newer file" if newer else
                 "re-export the policy with this jointopt (`jointopt export CONFIG --out DIR`)"),
        )
    return data


def load_policy_file(path: str | Path) -> Policy:
    """Read and fully validate a policy file.

    Raises:
        ConfigError: a missing or unreadable file, a wrong suffix, an unsupported
            ``schema_version``, an unknown or misspelled key, a bad value, an unknown
            strategy or strategy parameter, a template that does not parse or uses a
            variable the task lacks, a bad extractor pattern, or fewer demos than
            ``prompt.shots``. The message names the file and the field.
    """
    path = Path(path)
    data = read_policy_dict(path)
    try:
        parsed = _PolicyFileModel.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, path) from None
    return _build(parsed, path)


def _build(parsed: _PolicyFileModel, path: Path) -> Policy:
    from jointopt.core.prompts import PromptTemplate
    from jointopt._registry import STRATEGIES

    _check_dataclass(DifficultySpec, parsed.difficulty, path, "difficulty")
    missing = [k for k in ("id", "user") if k not in parsed.prompt]
    if missing:
        raise ConfigError("invalid policy file: required key is missing",
                          where=f"{path}: prompt.{missing[0]}", fix=f"add `{missing[0]}:`")
    prompt = _check_dataclass(PromptTemplate, parsed.prompt, path, "prompt")
    for name, alloc in parsed.bins.items():
        try:
            strategy = STRATEGIES.create(alloc.strategy, where=f"bins.{name}.strategy",
                                         **dict(alloc.params))
        except JointoptError as exc:
            raise _rewrap(exc, path, f"bins.{name}") from None
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
    dumped = parsed.model_dump(mode="json", exclude_none=False)
    # Metadata as written (no defaults filled in), so a file round-trips unchanged.
    metadata = _drop_empty(parsed.metadata.model_dump(mode="json", exclude_unset=True))
    try:
        return Policy.from_dict({**dumped, "metadata": metadata})
    except JointoptError as exc:
        raise _rewrap(exc, path, exc.where or "policy") from None


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
        raise _rewrap(exc, path, field) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid policy file: {exc}", where=where, value=dict(data),
                          fix=f"write the {field} section as jointopt export does") from None


def _check_task_spec(spec: _TaskSpecModel, prompt: Any, path: Path) -> None:
    from jointopt.tasks import AnswerExtractor, AnswerMatcher

    where = f"{path}: metadata.task"
    try:
        AnswerExtractor(kind=spec.extractor.kind, pattern=spec.extractor.pattern,
                        group=spec.extractor.group)
    except JointoptError as exc:
        raise _rewrap(exc, path, "metadata.task.extractor") from None
    try:
        AnswerMatcher(kind=spec.matcher.kind, tolerance=spec.matcher.tolerance)
    except JointoptError as exc:
        raise _rewrap(exc, path, "metadata.task.matcher") from None
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


def _check_template_safety(prompt: Any, spec: _TaskSpecModel | None, path: Path) -> None:
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


# ------------------------------------------------------------------------------ write


def policy_file_text(policy: Policy, fmt: Literal["yaml", "json"], name: str = "policy.yaml") -> str:
    """The text :func:`save_policy` writes."""
    data = policy.to_dict()
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    return _HEADER.format(version=policy.schema_version, name=name) + body


def save_policy(policy: Policy, path: str | Path) -> Path:
    """Write ``policy`` to ``path`` as YAML or JSON (by suffix) and check it reads back.

    The file is validated exactly as :func:`load_policy_file` does before it replaces
    anything at ``path``, so a policy that could not be loaded is never written.

    Returns:
        The path written.
    """
    path = Path(path)
    fmt = _format(path)
    text = policy_file_text(policy, fmt, path.name)  # type: ignore[arg-type]
    from jointopt.safety.safe_load import parse_document

    data = parse_document(text, fmt, str(path))
    try:
        _build(_PolicyFileModel.model_validate(data), path)
    except ValidationError as exc:
        raise _validation_error(exc, path) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    log.info("wrote policy file %s", path)
    return path
