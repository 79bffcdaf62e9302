"""The schema of a policy file: pydantic models that reject unknown keys, the budget
caps, and the translation of a validation failure into one ConfigError naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jointopt.safety.validation import problems
from jointopt.errors import ConfigError
from jointopt.core.thinking import MAX_THINKING_BUDGET

__all__ = [
    "MAX_COMPLETIONS_CAP",
    "MAX_TEMPERATURE",
    "MAX_TOKENS_CAP",
    "PolicyFileModel",
    "TaskSpecModel",
    "validation_error",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: Largest ``max_tokens`` a policy file may give a bin (a guard against typos such as
#: ``1e9``, which the upstream would otherwise be asked for on every request).
MAX_TOKENS_CAP = 65_536
#: Largest number of completions one input may cost under a bin's strategy.
MAX_COMPLETIONS_CAP = 1_024
#: Highest sampling temperature a policy file may give a bin.
MAX_TEMPERATURE = 10.0


class _ThinkingModel(_Strict):
    budget: int = Field(ge=0, le=MAX_THINKING_BUDGET)
    min: int = Field(0, ge=0, le=MAX_THINKING_BUDGET)
    engine: Literal["auto", "vllm", "forcing"] = "auto"
    start: str = "<think>\n"
    end: str = Field("\n</think>\n\n", min_length=1)
    answer_cue: str = "Final answer: "
    answer_max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CAP)
    continue_cue: str = "\nWait,"


class _AllocationModel(_Strict):
    strategy: str
    temperature: float = Field(0.7, ge=0, le=MAX_TEMPERATURE)
    max_tokens: int = Field(64, ge=1, le=MAX_TOKENS_CAP)
    params: dict[str, Any] = Field(default_factory=dict)
    #: Optional (schema_version 1 files without it load unchanged); see ThinkingSpec.
    thinking: _ThinkingModel | None = None
    model: str | None = Field(None, min_length=1)  # the policy's own model when absent


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


class TaskSpecModel(_Strict):
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
    mean_cost: _IntervalModel | None = None  # studies with optimizer.cost: flops | price


class _MetricsModel(_Strict):
    n_examples: int | None = Field(None, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)
    n_bootstrap: int | None = Field(None, ge=1)
    bootstrap_seed: int | None = None
    accuracy: _IntervalModel | None = None
    mean_tokens: _IntervalModel | None = None
    mean_prompt_tokens: float | None = None
    mean_completion_tokens: float | None = None
    #: Mean cost per example (``cost_objective``: ``flops`` or ``price``), when the study
    #: optimised a cost instead of tokens.
    mean_cost: _IntervalModel | None = None
    cost_objective: str | None = None
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


class _TestedModel(_Strict):
    trial: int
    mean_tokens: float
    dev_accuracy: float
    calibration_accuracy: float
    p_value: float = Field(ge=0, le=1)
    certified: bool
    lower_bound: float
    method: str | None = None
    bin_p_values: dict[str, float] = Field(default_factory=dict)


class _FallbackPolicyModel(_Strict):
    model: str = Field(min_length=1)
    prompt: dict[str, Any]
    difficulty: dict[str, Any] = Field(default_factory=dict)
    bins: dict[str, _AllocationModel] = Field(min_length=1)


class _FallbackModel(_Strict):
    trial: int
    mean_tokens: float
    dev_accuracy: float
    p_value: float = Field(ge=0, le=1)
    policy: _FallbackPolicyModel


class _CertificateModel(_Strict):
    """``jointopt certify``'s evidence (optional; files without it read as before)."""

    target: float | None = Field(None, gt=0, lt=1)
    risk: float = Field(gt=0, lt=1)
    method: str
    procedure: str | None = None
    n_calibration: int = Field(ge=1)
    dataset_hash: str | None = None
    chosen_trial: int | None = None
    tested: list[_TestedModel] = Field(default_factory=list)
    bin_targets: dict[str, float] = Field(default_factory=dict)
    calibration_fraction: float | None = None
    split_seed: int | None = None
    study_name: str | None = None
    certified_at: str | None = None
    assumption: str | None = None
    mlflow_run_id: str | None = None
    #: The other certified policies, the next safer first (the serving monitor's steps).
    fallbacks: list[_FallbackModel] = Field(default_factory=list)


class _MetadataModel(_Strict):
    task: TaskSpecModel | None = None
    metrics: _MetricsModel | None = None
    provenance: _ProvenanceModel | None = None
    serving: _ServingModel | None = None
    certificate: _CertificateModel | None = None
    notes: dict[str, Any] = Field(default_factory=dict)


class PolicyFileModel(_Strict):
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
    "budget": f"use a thinking budget between 0 and {MAX_THINKING_BUDGET} tokens (0 = none)",
    "min": "use a minimum between 0 and the budget",
    "answer_max_tokens": f"use an answer cap between 1 and {MAX_TOKENS_CAP} tokens, or null",
    "engine": "use auto, vllm or forcing",
    "end": "give the text that closes a thought, e.g. '</think>'",
}


def validation_error(exc: ValidationError, path: Path) -> ConfigError:
    """One ConfigError for a failed validation of the file at ``path`` (the first problem
    with its fix; a misspelled key before the missing one it causes)."""
    found = []
    for p in problems(exc, PolicyFileModel):
        field = p.field or "(top level)"
        if p.kind == "unknown":
            found.append((field, f"unknown key {p.key!r}", None,
                          f"{p.hint}known keys here: {', '.join(p.known)}"))
        elif p.kind == "missing":
            found.append((field, "required key is missing", None, f"add `{p.key}:`"))
        else:
            found.append((field, p.message, p.value,
                          _FIXES.get(p.key, f"change the value of `{p.key}` as described")))
    field, message, value, fix = found[0]
    if len(found) > 1:
        others = "; ".join(f"{f}: {m}" for f, m, _, _ in found[1:6])
        message += f" (and {len(found) - 1} more: {others})"
    kwargs: dict[str, Any] = {"where": f"{path}: {field}", "fix": fix}
    if value is not None:
        kwargs["value"] = value
    return ConfigError(f"invalid policy file: {message}", **kwargs)
