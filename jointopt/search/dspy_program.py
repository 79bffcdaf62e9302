"""Optimize an existing DSPy program jointly with its inference strategy.

:func:`optimize_program` searches, with a multi-objective Optuna study (metric accuracy
up, tokens down), over

* the instructions of every predictor of the program: its own instruction, instructions
  given in the search space, and instructions proposed by an LM
  (:func:`jointopt.integrations.proposals.propose_instructions`);
* the inference strategy: ``single``, ``majority`` or ``best_of_n`` with their ``n``,
  and the sampling ``temperature`` and ``max_tokens`` (per difficulty bin when asked).

A trial sets the instructions on the predictors and answers every training example by
running the *whole program* ``n`` times (rollouts with distinct ``rollout_id`` and seed,
at the trial's temperature and max_tokens), then aggregates the output field: majority
vote, or best-of-n by the mean token logprob of the rollout's LM calls (the first rollout
when the backend gives no logprobs). Tokens are those the backend counted, prompt plus
completion, of every LM call of every rollout (parse-failure fallbacks included).

The tuned program is a copy of the input program with the chosen instructions set and
an :class:`InferencePolicy` parameter attached as ``program.inference_policy``. DSPy's
``program.save(path)`` writes it under the key ``"inference_policy"`` next to the
predictors' state, and ``program.load(path)`` restores it into any program that has the
attribute. A program built fresh (``dspy.ChainOfThought("question -> answer")``) loads
its instructions with ``program.load(path)``; its policy comes from :func:`load_policy`
(or :func:`attach_policy`). :func:`run_program` answers inputs with a program's policy.

Search-space mapping form (``search_space=`` as a dict or YAML)::

    strategies:
      single: {}
      majority: {n: {low: 2, high: 6}}
      best_of_n: {n: {choices: [2, 4]}}
    temperature: {low: 0.3, high: 1.0}
    max_tokens: {choices: [64, 128]}
    instructions:                       # extra candidates (optional)
      - Answer with the final answer only.
      - propose: {k: 3, n_examples: 3, seed: 0}
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jointopt.backends.base import Backend
from jointopt.integrations.dspy_lm import BackendEngine, CallRecord, TokenCounts, TokenMeter, engine_of, make_dspy_lm
from jointopt.errors import ConfigError, JointoptError, StrategyError, relocate
from jointopt.backends.models import cache_dir
from jointopt.core.policy import DEFAULT_BIN, Allocation, DifficultySpec, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.integrations.proposals import ProposalSource, ProposeSpec, _as_jinja_text, propose_instructions
from jointopt.search.space import Param, SearchSpace
from jointopt.strategies import get_strategy_class
from jointopt.tasks import AnswerExtractor, AnswerMatcher, Example, Task

import dspy  # noqa: E402,I001  (dspy_lm sets DSPY_CACHEDIR before the first import)
from dspy.predict.parameter import Parameter  # noqa: E402
from dspy.utils.exceptions import AdapterParseError, LMError  # noqa: E402

if TYPE_CHECKING:
    import optuna

__all__ = [
    "InstructionCandidate",
    "ProgramInterface",
    "ProgramTrial",
    "ProgramResult",
    "InferencePolicy",
    "ProgramSpaceConfig",
    "optimize_program",
    "run_program",
    "program_interface",
    "check_trainset",
    "attach_policy",
    "policy_of",
    "load_policy",
    "POLICY_ATTRIBUTE",
    "PROGRAM_STRATEGIES",
]

log = logging.getLogger(__name__)

#: Attribute (and key in DSPy's saved state) that holds a tuned program's policy.
POLICY_ATTRIBUTE = "inference_policy"
#: Strategies a DSPy program can be run with (rollouts of the whole program).
PROGRAM_STRATEGIES = ("single", "majority", "best_of_n")
_SAMPLING_CONFIG = ("temperature", "max_tokens", "n", "num_generations", "rollout_id", "seed",
                    "top_p")
_ORIGINAL = "original"


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


@dataclass(frozen=True)
class ProgramTrial:
    """One complete trial of a program study."""

    number: int
    accuracy: float
    mean_tokens: float
    params: Mapping[str, Any]
    policy: Policy


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


# --------------------------------------------------------------------------- search space

ParamValue = Union[str, int, float, bool, None, dict[str, Any]]


class ProgramSpaceConfig(BaseModel):
    """The search space of :func:`optimize_program` in mapping (YAML) form."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    strategies: dict[str, dict[str, ParamValue] | None] = Field(min_length=1)
    """Strategy name (``single``, ``majority``, ``best_of_n``) -> its parameters
    (constants, ``{choices: [...]}`` or ``{low, high, step?, log?}``)."""
    temperature: ParamValue = 0.7
    """Sampling temperature of every LM call."""
    max_tokens: ParamValue = 256
    """Completion-token cap of every LM call (DSPy's field markers cost tokens too)."""
    instructions: list[Union[str, ProposalSource]] = Field(default_factory=list)
    """Extra instruction candidates for every predictor: literal texts, or
    ``{propose: {k, n_examples, seed, ...}}`` entries (proposed per predictor)."""


@dataclass(frozen=True)
class _Space:
    strategies: Mapping[str, Mapping[str, Param]]
    temperature: Param
    max_tokens: Param
    literal: tuple[tuple[str, str], ...]  # (id, text)
    proposals: tuple[ProposeSpec, ...]
    split_by_difficulty: bool = False  # a SearchSpace whose difficulty source is not "none"


def _pydantic_error(exc: ValidationError) -> ConfigError:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown key (known: {', '.join(ProgramSpaceConfig.model_fields)})")
        else:
            parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return ConfigError("invalid program search space: " + "; ".join(parts), where="search_space",
                       fix="see the mapping form in jointopt.search.dspy_program's docstring")


def _normalize_space(search_space: SearchSpace | Mapping[str, Any],
                     propose: ProposeSpec | Mapping[str, Any] | None) -> _Space:
    literal: list[tuple[str, str]] = []
    proposals: list[ProposeSpec] = []
    split = False
    if isinstance(search_space, SearchSpace):
        split = getattr(getattr(search_space, "difficulty", None), "source", "none") != "none"
        strategies = {k: dict(v) for k, v in search_space.strategies.items()}
        temperature, max_tokens = search_space.temperature, search_space.max_tokens
        for template in search_space.prompts:
            if template.system is None or any(template.variables().get("system", ())) \
                    or template.shots:
                raise ConfigError(
                    "a DSPy program's prompt is its predictors' instructions: a search-space "
                    "template must have a `system` text without variables and no shots",
                    where=f"{search_space.source}: prompts {template.id!r}",
                    value=template.to_dict(),
                    fix="give the template a plain `system` instruction, or use the mapping "
                        "form with `instructions:`",
                )
            literal.append((template.id, template._render("system", {})))
    elif isinstance(search_space, Mapping):
        try:
            cfg = ProgramSpaceConfig.model_validate(dict(search_space))
        except ValidationError as exc:
            raise _pydantic_error(exc) from None
        strategies = {
            name: {p: SearchSpace.param_from_spec(spec, f"search_space.strategies.{name}.{p}")
                   for p, spec in (params or {}).items()}
            for name, params in cfg.strategies.items()
        }
        temperature = SearchSpace.param_from_spec(cfg.temperature, "search_space.temperature")
        max_tokens = SearchSpace.param_from_spec(cfg.max_tokens, "search_space.max_tokens")
        given = 0
        for entry in cfg.instructions:
            if isinstance(entry, ProposalSource):
                proposals.append(entry.propose)
            else:
                literal.append((f"given_{given}", entry))
                given += 1
    else:
        raise ConfigError("search_space must be a SearchSpace or a mapping",
                          where="search_space", value=type(search_space).__name__,
                          fix="pass e.g. {'strategies': {'single': {}, 'majority': {'n': 3}}}")
    if propose is not None:
        try:
            spec = propose if isinstance(propose, ProposeSpec) else ProposeSpec.model_validate(
                dict(propose))
        except ValidationError as exc:
            raise ConfigError(f"invalid `propose`: {exc.errors()[0]['msg']}", where="propose",
                              value=propose, fix="e.g. propose={'k': 3}") from None
        proposals.append(spec)
    for name, params in strategies.items():
        if name not in PROGRAM_STRATEGIES:
            raise ConfigError(
                "a DSPy program can run only parallel strategies over its rollouts",
                where=f"search_space.strategies.{name}", value=name,
                fix=f"use some of {list(PROGRAM_STRATEGIES)}",
            )
        cls = get_strategy_class(name, where=f"search_space.strategies.{name}")
        for pname, spec in params.items():
            if name == "best_of_n" and pname == "scorer":
                bad = [v for v in spec.extremes() if v not in ("logprob", "auto")]
                if bad:
                    raise ConfigError(
                        "a DSPy program's best_of_n ranks rollouts by mean token logprob",
                        where="search_space.strategies.best_of_n.scorer", value=bad[0],
                        fix="use scorer: logprob (or leave it out)")
                continue
            for value in spec.extremes():
                try:
                    cls(**{pname: value})
                except StrategyError as exc:
                    raise ConfigError(exc.message, where=f"search_space.strategies.{name}.{pname}",
                                      value=value, fix=exc.fix) from None
    for label, spec, low in (("temperature", temperature, 0.0), ("max_tokens", max_tokens, 1)):
        for value in spec.extremes():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise ConfigError(f"`{label}` must be a number >= {low}",
                                  where=f"search_space.{label}", value=value,
                                  fix=f"use values >= {low}")
            if label == "max_tokens" and not isinstance(value, int):
                raise ConfigError("`max_tokens` must be an integer", where="search_space.max_tokens",
                                  value=value, fix="use whole numbers of tokens")
            if label == "temperature" and value > 2:
                raise ConfigError("`temperature` must be <= 2", where="search_space.temperature",
                                  value=value, fix="use values in [0, 2]")
    return _Space(strategies, temperature, max_tokens, tuple(literal), tuple(proposals), split)


# --------------------------------------------------------------------------- rollouts


def _stable_seed(*parts: Any) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31)


def _vote_key(value: Any) -> Hashable:
    return " ".join(str(value).split()).casefold()


@dataclass(frozen=True)
class _Rollout:
    prediction: Any  # dspy.Prediction | None (the adapter could not parse the reply)
    records: tuple[CallRecord, ...]

    @property
    def score(self) -> float | None:
        """Mean token logprob over every LM call of the rollout (None when unknown)."""
        tokens = sum(r.completion_tokens for r in self.records)
        if not self.records or tokens == 0 or any(r.mean_logprob is None for r in self.records):
            return None
        return sum(r.mean_logprob * r.completion_tokens for r in self.records) / tokens


def _aggregate(allocation: Allocation, rollouts: Sequence[_Rollout], output_field: str,
               normalize: Callable[[Any], Hashable]) -> Any:
    ok = [r for r in rollouts if r.prediction is not None and output_field in r.prediction]
    if not ok:
        return None
    if allocation.strategy == "majority":
        keys = [normalize(r.prediction[output_field]) for r in ok]
        counts = Counter(keys)
        top = max(counts.values())
        winner = next(k for k in keys if counts[k] == top)  # first-seen among ties
        return ok[keys.index(winner)].prediction
    if allocation.strategy == "best_of_n":
        scored = [(r.score, i) for i, r in enumerate(ok)]
        if any(s is None for s, _ in scored):
            return ok[0].prediction
        best = max(scored, key=lambda item: (item[0], -item[1]))
        return ok[best[1]].prediction
    return ok[0].prediction


def _n_of(allocation: Allocation) -> int:
    return int(allocation.params.get("n", 1)) if allocation.strategy != "single" else 1


def _rollouts(program: Any, jobs: Sequence[tuple[Mapping[str, Any], Allocation, int, int]],
              engine: BackendEngine, base_lm: Any, num_threads: int,
              history: bool) -> list[_Rollout]:
    """Run ``program`` once per job ``(inputs, allocation, rollout index, seed)``."""

    def one(job: tuple[Mapping[str, Any], Allocation, int, int]) -> _Rollout:
        inputs, allocation, index, seed = job
        view = engine.recording()
        overrides: dict[str, Any] = {"temperature": float(allocation.temperature),
                                     "max_tokens": int(allocation.max_tokens), "seed": seed}
        if allocation.temperature > 0:
            overrides["rollout_id"] = index
        lm = base_lm.copy(engine=view, **overrides)
        settings: dict[str, Any] = {"lm": lm}
        if not history:
            settings["disable_history"] = True
        with dspy.context(**settings):
            try:
                prediction = program(**dict(inputs))
            except AdapterParseError as exc:
                log.debug("rollout %d: the adapter could not parse the reply: %s", index,
                          str(exc).splitlines()[0])
                prediction = None
            except LMError as exc:
                # DSPy wraps engine failures; show the backend's own error (it has a fix).
                if isinstance(exc.__cause__, JointoptError):
                    raise exc.__cause__ from None
                raise
        return _Rollout(prediction, tuple(view.records or ()))

    if num_threads <= 1 or len(jobs) <= 1:
        return [one(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=min(num_threads, len(jobs)),
                            thread_name_prefix="jointopt-dspy") as pool:
        futures = [pool.submit(contextvars.copy_context().run, one, job) for job in jobs]
        return [f.result() for f in futures]


def _answer_all(program: Any, inputs: Sequence[Mapping[str, Any]], allocations: Sequence[Allocation],
                *, backend: Backend, seed: int, output_field: str, meter: TokenMeter,
                num_threads: int, normalize: Callable[[Any], Hashable], history: bool,
                ) -> list[Any]:
    base_lm = make_dspy_lm(backend, meter)
    engine = engine_of(base_lm)
    jobs, owners = [], []
    for i, (row, allocation) in enumerate(zip(inputs, allocations)):
        for r in range(_n_of(allocation)):
            jobs.append((row, allocation, r, _stable_seed("jointopt/dspy_program", seed, i, r)))
            owners.append(i)
    done = _rollouts(program, jobs, engine, base_lm, num_threads, history)
    grouped: list[list[_Rollout]] = [[] for _ in inputs]
    for owner, rollout in zip(owners, done):
        grouped[owner].append(rollout)
    return [_aggregate(a, g, output_field, normalize) for a, g in zip(allocations, grouped)]


def _inputs_of(row: Any) -> dict[str, Any]:
    if isinstance(row, dspy.Example):
        if getattr(row, "_input_keys", None) is None:
            raise ConfigError("an example passed to run_program has no input keys",
                              where="inputs", value=sorted(row.keys()),
                              fix="call .with_inputs(...) or pass plain dicts of inputs")
        return dict(row.inputs())
    if isinstance(row, Mapping):
        return dict(row)
    raise ConfigError("each input must be a mapping or a dspy.Example", where="inputs",
                      value=type(row).__name__, fix="pass dicts such as {'question': '...'}")


def run_program(
    program: Any,
    inputs: Sequence[Mapping[str, Any] | Any],
    *,
    backend: Backend,
    policy: Policy | None = None,
    seed: int = 0,
    meter: TokenMeter | None = None,
    num_threads: int = 8,
    difficulty: Callable[[Mapping[str, Any]], str] | None = None,
    normalize: Callable[[Any], Hashable] = _vote_key,
) -> list[Any]:
    """Answer ``inputs`` with ``program`` under a policy's strategy.

    Every input is answered by ``n`` rollouts of the whole program (the bin's
    allocation) aggregated on the policy's output field. The same program, policy,
    inputs, seed and backend give the same answers (on backends that honour request
    seeds).

    Args:
        program: the DSPy program (its instructions are used as they are).
        inputs: dicts of input fields, or ``dspy.Example`` with input keys.
        backend: the backend that generates.
        policy: the policy; default: the one stored on the program.
        seed: seed of the rollouts.
        meter: token counters to add to.
        num_threads: concurrent rollouts (their LM calls are batched together).
        difficulty: ``input -> bin label`` (gets the input as passed) when the policy's
            bins came from a callable; otherwise the policy's ``difficulty_field`` is read
            from each input (the default bin when absent).
        normalize: answer key for majority votes.

    Returns:
        One ``dspy.Prediction`` per input (None when no rollout could be parsed).
    """
    policy = policy or policy_of(program)
    if policy is None:
        raise ConfigError("the program carries no inference policy", where="policy",
                          fix="pass policy=..., or use the program optimize_program returned "
                              "(or attach_policy(program, load_policy(path)))")
    output_field = policy.metadata.get("output_field")
    if not output_field:
        raise ConfigError("the policy names no output field (not made by optimize_program)",
                          where="policy.metadata.output_field", fix="re-run optimize_program")
    rows = [_inputs_of(row) for row in inputs]
    field_name = policy.metadata.get("difficulty_field")
    allocations = []
    for original, row in zip(inputs, rows):
        label = None
        if difficulty is not None:
            label = str(difficulty(original))
        elif field_name and original.get(field_name) is not None:
            label = str(original[field_name])
        name = label if label in policy.bins else policy.difficulty.default_bin
        allocations.append(policy.bins[name])
    interface_inputs = policy.metadata.get("inputs")
    if interface_inputs:
        rows = [{k: v for k, v in row.items() if k in interface_inputs} for row in rows]
    return _answer_all(program, rows, allocations, backend=backend, seed=seed,
                       output_field=str(output_field), meter=meter or TokenMeter(),
                       num_threads=num_threads, normalize=normalize, history=True)


# --------------------------------------------------------------------------- candidates


def _check_predictors(named: Sequence[tuple[str, Any]]) -> None:
    if not named:
        raise ConfigError("the program has no predictors to tune", where="program",
                          fix="pass a dspy.Module built from dspy.Predict / ChainOfThought ...")
    for name, predictor in named:
        if predictor.lm is not None:
            raise ConfigError(
                "a predictor has its own LM, which would bypass the backend being tuned",
                where=f"program.{name}.lm", value=getattr(predictor.lm, "model", "?"),
                fix="remove the predictor's LM (predictor.lm = None) before optimizing")
        clash = sorted(set(predictor.config) & set(_SAMPLING_CONFIG))
        if clash:
            raise ConfigError(
                "a predictor fixes sampling settings that the search sets per trial",
                where=f"program.{name}.config", value={k: predictor.config[k] for k in clash},
                fix="drop these keys from the predictor's config (the search chooses them)")


def _predictor_task(name: str, predictor: Any, trainset: Sequence[Any]) -> Task:
    """A jointopt Task describing one predictor, for the instruction proposer."""
    sig = predictor.signature
    inputs, outputs = list(sig.input_fields), list(sig.output_fields)

    def describe(fields: Mapping[str, Any]) -> str:
        out = []
        for fname, info in fields.items():
            desc = (info.json_schema_extra or {}).get("desc", "")
            shown = "" if not desc or desc.startswith("${") else f" ({desc})"
            out.append(f"`{fname}`{shown}")
        return ", ".join(out)

    description = (f"{sig.instructions.strip()}\nInputs: {describe(sig.input_fields)}. "
                   f"Outputs: {describe(sig.output_fields)}.")
    demos, seen = [], set()
    for i, ex in enumerate(trainset):
        labels = [o for o in outputs if o in ex and ex[o] is not None]
        if not labels or any(f not in ex for f in inputs):
            continue
        values = {f: str(ex[f]) for f in inputs}
        key = tuple(sorted(values.items()))
        if key in seen:
            continue
        seen.add(key)
        target = str(ex[labels[0]]) if len(labels) == 1 else "; ".join(
            f"{o}: {ex[o]}" for o in labels)
        demos.append(Example(id=f"train-{i:04d}", inputs=values, target=target))
    return Task(name=f"dspy_{re.sub(r'[^A-Za-z0-9_]', '_', name)}", description=description,
                fields=tuple(inputs), examples=(), demos=tuple(demos),
                extractor=AnswerExtractor("first_line"), matcher=AnswerMatcher("normalized"))


def _candidates(named: Sequence[tuple[str, Any]], space: _Space, trainset: Sequence[Any],
                proposer: Backend, cache_path: Path, meter: TokenMeter,
                ) -> dict[str, tuple[InstructionCandidate, ...]]:
    out: dict[str, tuple[InstructionCandidate, ...]] = {}
    for name, predictor in named:
        found: list[InstructionCandidate] = [
            InstructionCandidate(_ORIGINAL, predictor.signature.instructions, "program")]
        for cid, text in space.literal:
            found.append(InstructionCandidate(cid, text, "space"))
        for spec in space.proposals:
            task = _predictor_task(name, predictor, trainset)
            try:
                proposals = propose_instructions(
                    task, proposer, spec.k, n_examples=spec.n_examples, seed=spec.seed,
                    cache_path=cache_path, meter=meter, temperature=spec.temperature,
                    max_tokens=spec.max_tokens, id_prefix=spec.id_prefix)
            except JointoptError as exc:
                raise relocate(exc, f"instructions of predictor {name!r}: propose.") from None
            found += [InstructionCandidate(t.id, text, "proposed")
                      for t, text in zip(proposals.templates, proposals.instructions)]
        unique: dict[str, InstructionCandidate] = {}
        texts: set[str] = set()
        for cand in found:
            if cand.id in unique:
                raise ConfigError("duplicate instruction candidate id", where=f"predictor {name!r}",
                                  value=cand.id, fix="set propose.id_prefix or rename the prompt")
            if cand.text.strip() in texts:
                log.info("predictor %s: candidate %s repeats an earlier text; skipped", name, cand.id)
                continue
            texts.add(cand.text.strip())
            unique[cand.id] = cand
        out[name] = tuple(unique.values())
    return out


# --------------------------------------------------------------------------- optimize


def _bins_of(trainset: Sequence[Any], difficulty: str | Callable[[Any], Any] | None
             ) -> tuple[list[str], str | None]:
    if difficulty is None:
        return [DEFAULT_BIN] * len(trainset), None
    if isinstance(difficulty, str):
        labels = []
        for i, ex in enumerate(trainset):
            value = ex.get(difficulty) if hasattr(ex, "get") else None
            if value is None:
                raise ConfigError(f"trainset example has no difficulty field {difficulty!r}",
                                  where=f"trainset[{i}]", value=sorted(ex.keys()),
                                  fix="give every example that field, or pass difficulty=None")
            labels.append(str(value))
        return labels, difficulty
    if callable(difficulty):
        return [str(difficulty(ex)) for ex in trainset], None
    raise ConfigError("difficulty must be None, a field name or a callable", where="difficulty",
                      value=type(difficulty).__name__, fix="pass e.g. difficulty='level'")


def _suggest_allocation(trial: Any, space: _Space, prefix: str) -> Allocation:
    strategy = trial.suggest_categorical(f"{prefix}strategy", list(space.strategies))
    params = {p: spec.suggest(trial, f"{prefix}{strategy}.{p}")
              for p, spec in space.strategies[strategy].items()}
    if strategy == "best_of_n":
        params["scorer"] = "logprob"
    return Allocation(strategy=strategy,
                      temperature=float(space.temperature.suggest(trial, f"{prefix}temperature")),
                      max_tokens=int(space.max_tokens.suggest(trial, f"{prefix}max_tokens")),
                      params=params)


def _user_template(inputs: Sequence[str]) -> str:
    if list(inputs) == ["question"] or len(inputs) == 1:
        return "{{ %s }}" % inputs[0]
    return "\n".join(f"{f}: {{{{ {f} }}}}" for f in inputs)


def _policy(model: str, chosen: Mapping[str, InstructionCandidate], allocations: Mapping[str, Allocation],
            bins: Sequence[str], interface: ProgramInterface, output_field: str,
            difficulty_field: str | None, program: Any, extra: Mapping[str, Any]) -> Policy:
    first = next(iter(chosen.values()))
    prompt_id = first.id if len(chosen) == 1 else "__".join(c.id for c in chosen.values())
    prompt = PromptTemplate(
        id=prompt_id, system=_as_jinja_text(first.text), user=_user_template(interface.inputs),
        description="DSPy program instructions (per predictor in metadata.instructions)")
    split = len(set(bins)) > 1 or bins[0] != DEFAULT_BIN
    default_bin = Counter(bins).most_common(1)[0][0] if split else DEFAULT_BIN
    metadata = {
        "kind": "dspy_program",
        "program": type(program).__name__,
        "instructions": {name: c.text for name, c in chosen.items()},
        "instruction_ids": {name: c.id for name, c in chosen.items()},
        "inputs": list(interface.inputs),
        "outputs": list(interface.outputs),
        "output_field": output_field,
        "difficulty_field": difficulty_field,
        **dict(extra),
    }
    return Policy(model=model, prompt=prompt, bins=dict(allocations),
                  difficulty=DifficultySpec(source="label" if split else "none",
                                            bins=tuple(sorted(set(bins))) if split else (),
                                            default_bin=default_bin),
                  metadata=metadata)


def _open_study(storage: str | None, study_name: str, seed: int, n_trials: int) -> "optuna.Study":
    import optuna

    if storage and storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                             n_startup_trials=min(8, max(n_trials // 2, 1)),
                                             constant_liar=True)
    try:
        return optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True,
                                   directions=["maximize", "minimize"], sampler=sampler)
    except ValueError as exc:
        raise ConfigError(f"cannot open the Optuna study: {exc}", where="storage", value=storage,
                          fix="use a fresh study_name or storage") from None


def _pareto(study: "optuna.Study") -> tuple[ProgramTrial, ...]:
    seen, front = set(), []
    for t in sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0], t.number)):
        point = (round(t.values[0], 9), round(t.values[1], 6))
        if point in seen or "policy" not in t.user_attrs:
            continue
        seen.add(point)
        front.append(ProgramTrial(t.number, t.values[0], t.values[1], dict(t.params),
                                  Policy.from_dict(t.user_attrs["policy"])))
    return tuple(front)


def optimize_program(
    program: Any,
    trainset: Sequence[Any],
    metric: Callable[..., Any],
    *,
    backend: Backend,
    search_space: SearchSpace | Mapping[str, Any],
    n_trials: int,
    seed: int = 0,
    difficulty: str | Callable[[Any], Any] | None = None,
    storage: str | None = None,
    study_name: str = "dspy_program",
    signature: Any = None,
    output_field: str | None = None,
    propose: ProposeSpec | Mapping[str, Any] | None = None,
    proposer_backend: Backend | None = None,
    proposal_cache: str | Path | None = None,
    model: str | None = None,
    num_threads: int = 8,
    normalize: Callable[[Any], Hashable] = _vote_key,
) -> ProgramResult:
    """Tune a DSPy program's instructions jointly with its inference strategy.

    Args:
        program: the DSPy program; it is not modified (the result holds a tuned copy).
        trainset: ``dspy.Example`` items with ``with_inputs`` set to the program's inputs
            and a value for every output field.
        metric: DSPy metric ``metric(example, prediction) -> bool | float``.
        backend: the backend every LM call goes to.
        search_space: a :class:`~jointopt.search.space.SearchSpace` (its templates' ``system``
            texts become instruction candidates) or the mapping form of
            :class:`ProgramSpaceConfig`.
        n_trials: complete trials the study should hold (a rerun on the same ``storage``
            and ``study_name`` continues up to this number).
        seed: seed of the sampler and of every rollout.
        difficulty: ``None`` (one bin), an example field holding a bin label, or a callable
            ``example -> label``; with bins, each gets its own strategy and budget.
        storage: Optuna storage URL (default: in memory).
        study_name: name inside the storage.
        signature: the program's ``inputs -> outputs`` when they cannot be inferred.
        output_field: the output that votes and best-of-n aggregate (default: the only
            output field).
        propose: propose instructions for every predictor (``{k, n_examples, seed, ...}``).
        proposer_backend: the backend that proposes (default: ``backend``; required when a
            proposal entry names a ``model``).
        proposal_cache: proposal cache file (default ``<cache_dir>/proposals.json``).
        model: the model name recorded in the policy (default ``backend.model_id``).
        num_threads: concurrent rollouts (their LM calls share backend batches).
        normalize: answer key for majority votes (default: case- and space-insensitive).

    Returns:
        :class:`ProgramResult`.

    Raises:
        ConfigError: the trainset does not fit the program's fields (the message names
            both field lists), an invalid search space, or an unusable program; all
            before any generation.
    """
    import optuna

    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError("`n_trials` must be an integer >= 1", where="n_trials", value=n_trials,
                          fix="use e.g. n_trials=12")
    if not callable(metric):
        raise ConfigError("`metric` must be callable as metric(example, prediction)",
                          where="metric", value=metric, fix="pass a function")
    if not isinstance(program, dspy.Module):
        raise ConfigError("`program` must be a dspy.Module", where="program",
                          value=type(program).__name__, fix="pass e.g. dspy.ChainOfThought('question -> answer')")
    interface = program_interface(program, signature)
    check_trainset(interface, trainset)
    if output_field is None:
        if len(interface.outputs) != 1:
            raise ConfigError("the program has several output fields; say which one is voted on",
                              where="output_field", value=list(interface.outputs),
                              fix=f"pass output_field=one of {list(interface.outputs)}")
        output_field = interface.outputs[0]
    elif output_field not in interface.outputs:
        raise ConfigError(f"output_field is not an output of the program {list(interface.outputs)}",
                          where="output_field", value=output_field,
                          fix=f"use one of {list(interface.outputs)}")
    space = _normalize_space(search_space, propose)
    for spec in space.proposals:
        if spec.model is not None and proposer_backend is None:
            raise ConfigError(
                "a proposal names its own model, but no backend for it was given",
                where="propose.model", value=spec.model,
                fix="pass proposer_backend=<a Backend on that model>, or drop `model`")
    named = list(program.named_predictors())
    _check_predictors(named)
    if space.split_by_difficulty and difficulty is None:
        raise ConfigError(
            "the search space splits by difficulty, but the examples' bins are not given",
            where="difficulty", value=None,
            fix="pass difficulty='<example field holding the bin label>' (or a callable)")
    labels, difficulty_field = _bins_of(trainset, difficulty)
    bins = sorted(set(labels))
    existing = getattr(program, POLICY_ATTRIBUTE, None)
    if existing is not None and not isinstance(existing, InferencePolicy):
        raise ConfigError(f"the program already has an attribute {POLICY_ATTRIBUTE!r}",
                          where=type(program).__name__, value=type(existing).__name__,
                          fix="rename that attribute of your module")

    # -- instruction candidates (proposal calls happen here, after every check) --------
    proposal_meter = TokenMeter()
    candidates = _candidates(named, space, trainset, proposer_backend or backend,
                             Path(proposal_cache) if proposal_cache else cache_dir() / "proposals.json",
                             proposal_meter)
    fingerprint = hashlib.sha256(json.dumps(
        {"candidates": {n: [[c.id, c.text] for c in cs] for n, cs in candidates.items()},
         "trainset": [ex.toDict() for ex in trainset], "bins": labels},
        sort_keys=True, default=str).encode()).hexdigest()
    model_name = model or backend.model_id
    examples = list(trainset)
    inputs = [dict(ex.inputs()) for ex in examples]

    study = _open_study(storage, study_name, seed, n_trials)
    stored = study.user_attrs.get("fingerprint")
    if stored is not None and stored != fingerprint:
        raise ConfigError("this study was run with other instruction candidates or another "
                          "trainset", where="study_name", value=study_name,
                          fix="use a new study_name (or storage) for new candidates or data")
    study.set_user_attr("fingerprint", fingerprint)

    work = program.deepcopy()
    work_named = dict(work.named_predictors())
    memo: dict[str, tuple[float, float, int]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if "key" in t.user_attrs:
            memo.setdefault(t.user_attrs["key"], (t.values[0], t.values[1], t.number))
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    single = len(named) == 1
    while done < n_trials:
        trial = study.ask()
        chosen = {}
        for name, _ in named:
            ids = [c.id for c in candidates[name]]
            pick = trial.suggest_categorical("prompt" if single else f"prompt.{name}", ids)
            chosen[name] = next(c for c in candidates[name] if c.id == pick)
        split = bins != [DEFAULT_BIN]
        allocations = {b: _suggest_allocation(trial, space, f"{b}." if split else "")
                       for b in bins}
        policy = _policy(model_name, chosen, allocations, labels, interface, output_field,
                         difficulty_field, program, {"trial": trial.number})
        key = hashlib.sha256(json.dumps(
            {"i": {n: c.id for n, c in chosen.items()},
             "b": {b: a.to_dict() for b, a in allocations.items()}}, sort_keys=True
        ).encode()).hexdigest()
        trial.set_user_attr("policy", policy.to_dict())
        trial.set_user_attr("key", key)
        if key in memo:
            accuracy, mean_tokens, source = memo[key]
            trial.set_user_attr("reused_from", source)
            study.tell(trial, [accuracy, mean_tokens])
            done += 1
            continue
        for name, cand in chosen.items():
            predictor = work_named[name]
            predictor.signature = predictor.signature.with_instructions(cand.text)
        meter = TokenMeter()
        try:
            answers = _answer_all(work, inputs, [allocations[b] for b in labels],
                                  backend=backend, seed=seed, output_field=output_field,
                                  meter=meter, num_threads=num_threads, normalize=normalize,
                                  history=False)
            scores = [0.0 if pred is None else float(metric(ex, pred))
                      for ex, pred in zip(examples, answers)]
        except BaseException as exc:
            trial.set_user_attr("fail_reason", str(exc) or type(exc).__name__)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        counts: TokenCounts = meter.snapshot()
        accuracy = sum(scores) / len(scores)
        mean_tokens = counts.total_tokens / len(examples)
        trial.set_user_attr("calls", counts.calls)
        trial.set_user_attr("prompt_tokens", counts.prompt_tokens)
        trial.set_user_attr("completion_tokens", counts.completion_tokens)
        trial.set_user_attr("unparsed", sum(pred is None for pred in answers))
        study.tell(trial, [accuracy, mean_tokens])
        memo[key] = (accuracy, mean_tokens, trial.number)
        done += 1
        log.info("trial %d: prompt=%s %s accuracy=%.3f tokens=%.1f", trial.number,
                 policy.prompt.id, {b: (a.strategy, dict(a.params)) for b, a in allocations.items()},
                 accuracy, mean_tokens)

    front = _pareto(study)
    if not front:
        raise ConfigError("the study has no complete trial", where="study_name", value=study_name,
                          fix="check the failures recorded in the study")
    best = max(front, key=lambda t: (t.accuracy, -t.mean_tokens, -t.number))
    chosen_policy = Policy.from_dict({**best.policy.to_dict(), "metadata": {
        **dict(best.policy.metadata), "accuracy": best.accuracy, "mean_tokens": best.mean_tokens,
        "study": study_name, "proposer_tokens": proposal_meter.snapshot().total_tokens}})
    tuned = program.deepcopy()
    instructions = chosen_policy.metadata["instructions"]
    for name, predictor in tuned.named_predictors():
        predictor.signature = predictor.signature.with_instructions(instructions[name])
    attach_policy(tuned, chosen_policy)
    return ProgramResult(program=tuned, policy=chosen_policy, study=study, pareto=front,
                         candidates=candidates,
                         proposer_tokens=proposal_meter.snapshot().total_tokens)
