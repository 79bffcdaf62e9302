"""A tuned DSPy program's values: its inference policy (saved and loaded with DSPy's
``program.save``/``program.load``), its input and output fields, and the trainset check."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.errors import ConfigError
from jointopt.search.results import TrialSummary
from jointopt.core.policy import Policy

importlib.import_module("jointopt.integrations.dspy_lm")  # sets DSPY_CACHEDIR before dspy loads

import dspy  # noqa: E402,I001
from dspy.predict.parameter import Parameter  # noqa: E402

if TYPE_CHECKING:
    import optuna

#: Attribute (and key in DSPy's saved state) that holds a tuned program's policy.
POLICY_ATTRIBUTE = "inference_policy"

# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class InstructionCandidate:
    """One instruction a predictor may get.

    Attributes:
        id: ``original``, the id of a search-space prompt, ``given_<i>`` or
            ``proposed_<i>``.
        text: the instruction text.
        source: ``program``, ``space`` or ``proposed``.
    """

    id: str
    text: str
    source: str


@dataclass(frozen=True)
class ProgramInterface:
    """The input and output fields of a program (what the trainset must provide)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


#: One complete trial of a program study: the study runner's trial record.
ProgramTrial = TrialSummary


@dataclass(frozen=True)
class ProgramResult:
    """The outcome of :func:`optimize_program`.

    Attributes:
        program: a tuned copy of the program: chosen instructions set, policy attached as
            ``program.inference_policy`` (saved and loaded by DSPy's save/load).
        policy: the chosen policy (highest accuracy on the Pareto front, then fewest
            tokens); instructions per predictor in ``policy.metadata["instructions"]``.
        study: the Optuna study.
        pareto: distinct non-dominated trials, by increasing tokens.
        candidates: instruction candidates per predictor name.
        proposer_tokens: tokens spent proposing instructions in this call (0 on cache hits).
    """

    program: Any
    policy: Policy
    study: "optuna.Study"
    pareto: tuple[ProgramTrial, ...] = ()
    candidates: Mapping[str, tuple[InstructionCandidate, ...]] = field(default_factory=dict)
    proposer_tokens: int = 0


class InferencePolicy(Parameter):
    """A DSPy parameter holding a program's inference policy (strategy, budgets,
    instructions), so that ``program.save``/``program.load`` carry it.

    Attributes:
        data: the policy as :meth:`Policy.to_dict` (``None`` when unset).
    """

    def __init__(self, policy: Policy | Mapping[str, Any] | None = None) -> None:
        self.data: dict[str, Any] | None = None
        if policy is not None:
            self.data = policy.to_dict() if isinstance(policy, Policy) else json.loads(
                json.dumps(dict(policy)))

    @property
    def policy(self) -> Policy | None:
        return Policy.from_dict(self.data) if self.data is not None else None

    def reset(self) -> None:
        """Forget the policy (DSPy's ``reset_copy`` resets every parameter)."""
        self.data = None

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        return {"policy": self.data}

    def load_state(self, state: Mapping[str, Any]) -> "InferencePolicy":
        data = state.get("policy") if isinstance(state, Mapping) else None
        if data is not None:
            Policy.from_dict(data)  # validate before keeping it
        self.data = None if data is None else json.loads(json.dumps(data))
        return self

    def __repr__(self) -> str:
        policy = self.policy
        if policy is None:
            return "InferencePolicy(None)"
        bins = {k: f"{a.strategy}{dict(a.params)}" for k, a in policy.bins.items()}
        return f"InferencePolicy(prompt={policy.prompt.id!r}, bins={bins})"


def attach_policy(program: Any, policy: Policy) -> Any:
    """Store ``policy`` on ``program`` as ``program.inference_policy`` (returns the program).

    Raises:
        ConfigError: the program already has an unrelated ``inference_policy`` attribute.
    """
    current = getattr(program, POLICY_ATTRIBUTE, None)
    if current is not None and not isinstance(current, InferencePolicy):
        raise ConfigError(f"the program already has an attribute {POLICY_ATTRIBUTE!r}",
                          where=type(program).__name__, value=type(current).__name__,
                          fix="rename that attribute of your module")
    setattr(program, POLICY_ATTRIBUTE, InferencePolicy(policy))
    return program


def policy_of(program: Any) -> Policy | None:
    """The policy stored on a program, or None."""
    holder = getattr(program, POLICY_ATTRIBUTE, None)
    return holder.policy if isinstance(holder, InferencePolicy) else None


def load_policy(path: str | Path) -> Policy | None:
    """The policy inside a program saved with DSPy's ``program.save(path)`` (``.json``),
    or None when the program had none."""
    from jointopt.safety.safe_load import data_limits, parse_json, read_text

    path = Path(path)
    try:  # size, depth and duplicate-key caps of jointopt.safety.safe_load
        state = parse_json(read_text(path, "saved program", limits=data_limits()), str(path),
                           limits=data_limits())
    except ConfigError as exc:
        raise ConfigError(f"cannot read the saved program: {exc.message}",
                          where=exc.where or str(path),
                          fix="pass the .json file written by program.save") from None
    data = (state.get(POLICY_ATTRIBUTE) or {}).get("policy") if isinstance(state, dict) else None
    return Policy.from_dict(data) if data else None


# --------------------------------------------------------------------------- interface


def program_interface(program: Any, signature: Any = None) -> ProgramInterface:
    """The input and output fields of ``program``.

    Taken from ``signature`` when given; else from a ``dspy.Predict`` program's
    signature; from a ``dspy.ChainOfThought``'s signature without the ``reasoning`` it
    adds; from the one predictor of a single-predictor module.

    Raises:
        ConfigError: the fields cannot be inferred (pass ``signature=``).
    """
    if signature is not None:
        sig = dspy.ensure_signature(signature)
        return ProgramInterface(tuple(sig.input_fields), tuple(sig.output_fields))
    if isinstance(program, dspy.Predict):
        sig = program.signature
        return ProgramInterface(tuple(sig.input_fields), tuple(sig.output_fields))
    if isinstance(program, dspy.ChainOfThought):
        sig = program.predict.signature
        outputs = list(sig.output_fields)
        if outputs and outputs[0] == "reasoning":
            outputs = outputs[1:]
        return ProgramInterface(tuple(sig.input_fields), tuple(outputs))
    predictors = program.predictors() if isinstance(program, dspy.Module) else []
    if len(predictors) == 1:
        sig = predictors[0].signature
        return ProgramInterface(tuple(sig.input_fields), tuple(sig.output_fields))
    raise ConfigError(
        "cannot infer the program's input and output fields",
        where=type(program).__name__, value=f"{len(predictors)} predictors",
        fix="pass signature='question -> answer' (the program's inputs -> its outputs)",
    )


def check_trainset(interface: ProgramInterface, trainset: Sequence[Any]) -> None:
    """Check every example against the program's fields, before any compute.

    Raises:
        ConfigError: not a non-empty list of ``dspy.Example``; an example without
            ``with_inputs``; input keys that differ from the program's input fields; or
            an output field missing from an example. The message names both field lists.
    """
    if isinstance(trainset, (str, bytes)) or not isinstance(trainset, Sequence) or not trainset:
        raise ConfigError("the trainset must be a non-empty list of dspy.Example",
                          where="trainset", value=type(trainset).__name__,
                          fix="pass [dspy.Example(question=..., answer=...).with_inputs('question'), ...]")
    want_in = list(interface.inputs)
    for i, ex in enumerate(trainset):
        if not isinstance(ex, dspy.Example):
            raise ConfigError("trainset items must be dspy.Example", where=f"trainset[{i}]",
                              value=type(ex).__name__, fix="wrap the item in dspy.Example(...)")
        if getattr(ex, "_input_keys", None) is None:
            raise ConfigError(
                f"trainset example has no input keys; the program's input fields are {want_in}",
                where=f"trainset[{i}]", value=sorted(ex.keys()),
                fix=f"call .with_inputs({', '.join(repr(f) for f in want_in)}) on every example",
            )
        got_in = sorted(ex.inputs().keys())
        if set(got_in) != set(want_in):
            raise ConfigError(
                f"trainset example input keys {got_in} do not match the program's input "
                f"fields {want_in}", where=f"trainset[{i}]", value=got_in,
                fix=f"call .with_inputs({', '.join(repr(f) for f in want_in)}), or pass the "
                    "program's real signature",
            )
        labels = sorted(ex.labels().keys())
        missing = [f for f in interface.outputs if f not in labels]
        if missing:
            raise ConfigError(
                f"trainset example lacks output field(s) {missing}: the program's output "
                f"fields are {list(interface.outputs)}, the example's labels are {labels}",
                where=f"trainset[{i}]", value=labels,
                fix="give every example a value for each output field of the program",
            )

