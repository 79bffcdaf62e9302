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
      all: {strategy: majority, temperature: 0.4, max_tokens: 12, params: {n: 3},
            thinking?: {budget, min?, engine?: auto | vllm | forcing, start?, end?,
                        answer_cue?, answer_max_tokens?, continue_cue?}}   # ThinkingSpec
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
      certificate:   # optional, `jointopt export --pick certified` (jointopt certify)
        target, risk, method, procedure, n_calibration, dataset_hash, chosen_trial,
        tested: [{trial, mean_tokens, dev_accuracy, calibration_accuracy, p_value,
                  certified, lower_bound, method?, bin_p_values?}],
        bin_targets?, calibration_fraction, split_seed, study_name, certified_at,
        assumption, mlflow_run_id?,
        fallbacks: [{trial, mean_tokens, dev_accuracy, p_value,
                     policy: {model, prompt, difficulty, bins}}]   # next safer first
      notes: {}      # free-form

The ``certificate`` section is optional and was added within ``schema_version`` 1: every
file without it reads as before; a jointopt older than the section refuses a file that
has it (unknown key), so serve certified policies with a jointopt that wrote them.

Loading validates the whole file with pydantic models that reject unknown keys, then
checks what only jointopt knows: strategy parameters, template syntax and variables,
template safety (no private attributes or file loading; a sandboxed render with the
demos), budget caps (``max_tokens`` <= 65536, <= 1024 completions per input), extractor
patterns, demos against ``shots``. Every problem is one
:class:`~jointopt.errors.ConfigError` that names the file, the field and the fix. A file
written by another schema version is refused with the version this jointopt reads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from jointopt.errors import ConfigError
from jointopt.core.policy import SCHEMA_VERSION, Policy
from jointopt.core.policy_build import build_policy
from jointopt.core.policy_schema import PolicyFileModel, validation_error

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
        parsed = PolicyFileModel.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, path) from None
    return build_policy(parsed, path)


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
        build_policy(PolicyFileModel.model_validate(data), path)
    except ValidationError as exc:
        raise validation_error(exc, path) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    log.info("wrote policy file %s", path)
    return path
