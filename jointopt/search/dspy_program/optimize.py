"""Tune a DSPy program's instructions jointly with its inference strategy
(:func:`optimize_program`)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.backends.base import Backend
from jointopt.integrations.token_meter import TokenCounts, TokenMeter
from jointopt.errors import ConfigError
from jointopt.backends.models import cache_dir
from jointopt.core.policy import DEFAULT_BIN, Policy
from jointopt.integrations.proposal_spec import ProposeSpec
from jointopt.search.dspy_program.candidates import _candidates, _check_predictors
from jointopt.search.dspy_program.program import (
    POLICY_ATTRIBUTE,
    InferencePolicy,
    InstructionCandidate,
    ProgramInterface,
    ProgramResult,
    attach_policy,
    check_trainset,
    program_interface,
)
from jointopt.search.dspy_program.rollouts import _answer_all, _vote_key
from jointopt.search.dspy_program.space import _normalize_space, _Space
from jointopt.search.dspy_program.trials import _bins_of, _open_study, _pareto, _policy, _suggest_allocation
from jointopt.search.space import SearchSpace

import dspy  # noqa: E402,I001  (dspy_lm sets DSPY_CACHEDIR before the first import)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def _check_call(program: Any, trainset: Sequence[Any], metric: Callable[..., Any], n_trials: int,
                signature: Any, output_field: str | None) -> tuple[ProgramInterface, str]:
    """Check the arguments; the program's interface and the output field voted on."""
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
    return interface, output_field


def _check_setup(program: Any, space: _Space, proposer_backend: Backend | None,
                 difficulty: str | Callable[[Any], Any] | None) -> list[tuple[str, Any]]:
    """Check the proposals, predictors and difficulty; the program's named predictors."""
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
    return named


def _check_policy_attribute(program: Any) -> None:
    existing = getattr(program, POLICY_ATTRIBUTE, None)
    if existing is not None and not isinstance(existing, InferencePolicy):
        raise ConfigError(f"the program already has an attribute {POLICY_ATTRIBUTE!r}",
                          where=type(program).__name__, value=type(existing).__name__,
                          fix="rename that attribute of your module")


def _fingerprinted_study(candidates: Mapping[str, Sequence[InstructionCandidate]],
                         trainset: Sequence[Any], labels: Sequence[str], storage: str | None,
                         study_name: str, seed: int, n_trials: int) -> "optuna.Study":
    """Open the study; refuse one run with other candidates or another trainset."""
    fingerprint = hashlib.sha256(json.dumps(
        {"candidates": {n: [[c.id, c.text] for c in cs] for n, cs in candidates.items()},
         "trainset": [ex.toDict() for ex in trainset], "bins": labels},
        sort_keys=True, default=str).encode()).hexdigest()
    study = _open_study(storage, study_name, seed, n_trials)
    stored = study.user_attrs.get("fingerprint")
    if stored is not None and stored != fingerprint:
        raise ConfigError("this study was run with other instruction candidates or another "
                          "trainset", where="study_name", value=study_name,
                          fix="use a new study_name (or storage) for new candidates or data")
    study.set_user_attr("fingerprint", fingerprint)
    return study


def _memo_of(study: "optuna.Study") -> tuple[dict[str, tuple[float, float, int]], int]:
    """Values of the complete trials by trial key, and how many trials are complete."""
    import optuna

    memo: dict[str, tuple[float, float, int]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if "key" in t.user_attrs:
            memo.setdefault(t.user_attrs["key"], (t.values[0], t.values[1], t.number))
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    return memo, done


@dataclass(frozen=True)
class _Run:
    """What every trial of one optimize_program call shares."""

    program: Any
    named: Sequence[tuple[str, Any]]
    candidates: Mapping[str, tuple[InstructionCandidate, ...]]
    space: _Space
    labels: Sequence[str]
    bins: Sequence[str]
    interface: ProgramInterface
    output_field: str
    difficulty_field: str | None
    model_name: str
    examples: Sequence[Any]
    inputs: Sequence[Mapping[str, Any]]
    metric: Callable[..., Any]
    backend: Backend
    seed: int
    num_threads: int
    normalize: Callable[[Any], Hashable]


def _ask(study: "optuna.Study", run: _Run
         ) -> tuple[Any, dict[str, InstructionCandidate], dict[str, Any], Policy, str]:
    """Ask the study for a trial; its instructions, allocations, policy and key."""
    trial = study.ask()
    single = len(run.named) == 1
    chosen = {}
    for name, _ in run.named:
        ids = [c.id for c in run.candidates[name]]
        pick = trial.suggest_categorical("prompt" if single else f"prompt.{name}", ids)
        chosen[name] = next(c for c in run.candidates[name] if c.id == pick)
    split = run.bins != [DEFAULT_BIN]
    allocations = {b: _suggest_allocation(trial, run.space, f"{b}." if split else "")
                   for b in run.bins}
    policy = _policy(run.model_name, chosen, allocations, run.labels, run.interface,
                     run.output_field, run.difficulty_field, run.program, {"trial": trial.number})
    key = hashlib.sha256(json.dumps(
        {"i": {n: c.id for n, c in chosen.items()},
         "b": {b: a.to_dict() for b, a in allocations.items()}}, sort_keys=True
    ).encode()).hexdigest()
    trial.set_user_attr("policy", policy.to_dict())
    trial.set_user_attr("key", key)
    return trial, chosen, allocations, policy, key


def _evaluate(study: "optuna.Study", trial: Any, run: _Run, work: Any,
              chosen: Mapping[str, InstructionCandidate], allocations: Mapping[str, Any],
              ) -> tuple[float, float]:
    """Answer the trainset with the trial's instructions and allocations; tell the study."""
    import optuna

    work_named = dict(work.named_predictors())
    for name, cand in chosen.items():
        predictor = work_named[name]
        predictor.signature = predictor.signature.with_instructions(cand.text)
    meter = TokenMeter()
    try:
        answers = _answer_all(work, run.inputs, [allocations[b] for b in run.labels],
                              backend=run.backend, seed=run.seed, output_field=run.output_field,
                              meter=meter, num_threads=run.num_threads, normalize=run.normalize,
                              history=False)
        scores = [0.0 if pred is None else float(run.metric(ex, pred))
                  for ex, pred in zip(run.examples, answers)]
    except BaseException as exc:
        trial.set_user_attr("fail_reason", str(exc) or type(exc).__name__)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    counts: TokenCounts = meter.snapshot()
    accuracy = sum(scores) / len(scores)
    mean_tokens = counts.total_tokens / len(run.examples)
    trial.set_user_attr("calls", counts.calls)
    trial.set_user_attr("prompt_tokens", counts.prompt_tokens)
    trial.set_user_attr("completion_tokens", counts.completion_tokens)
    trial.set_user_attr("unparsed", sum(pred is None for pred in answers))
    study.tell(trial, [accuracy, mean_tokens])
    return accuracy, mean_tokens


def _run_trials(study: "optuna.Study", run: _Run, n_trials: int) -> None:
    """Run trials until the study holds ``n_trials`` complete ones (repeats reuse values)."""
    work = run.program.deepcopy()
    memo, done = _memo_of(study)
    while done < n_trials:
        trial, chosen, allocations, policy, key = _ask(study, run)
        if key in memo:
            accuracy, mean_tokens, source = memo[key]
            trial.set_user_attr("reused_from", source)
            study.tell(trial, [accuracy, mean_tokens])
            done += 1
            continue
        accuracy, mean_tokens = _evaluate(study, trial, run, work, chosen, allocations)
        memo[key] = (accuracy, mean_tokens, trial.number)
        done += 1
        log.info("trial %d: prompt=%s %s accuracy=%.3f tokens=%.1f", trial.number,
                 policy.prompt.id, {b: (a.strategy, dict(a.params)) for b, a in allocations.items()},
                 accuracy, mean_tokens)


def _result(program: Any, study: "optuna.Study", study_name: str,
            candidates: Mapping[str, tuple[InstructionCandidate, ...]],
            proposal_meter: TokenMeter) -> ProgramResult:
    """The best trial of the Pareto front as a tuned copy of the program."""
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
    interface, output_field = _check_call(program, trainset, metric, n_trials, signature,
                                          output_field)
    space = _normalize_space(search_space, propose)
    named = _check_setup(program, space, proposer_backend, difficulty)
    labels, difficulty_field = _bins_of(trainset, difficulty)
    bins = sorted(set(labels))
    _check_policy_attribute(program)

    # -- instruction candidates (proposal calls happen here, after every check) --------
    proposal_meter = TokenMeter()
    candidates = _candidates(named, space, trainset, proposer_backend or backend,
                             Path(proposal_cache) if proposal_cache else cache_dir() / "proposals.json",
                             proposal_meter)
    study = _fingerprinted_study(candidates, trainset, labels, storage, study_name, seed, n_trials)
    examples = list(trainset)
    run = _Run(program=program, named=named, candidates=candidates, space=space, labels=labels,
               bins=bins, interface=interface, output_field=output_field,
               difficulty_field=difficulty_field, model_name=model or backend.model_id,
               examples=examples, inputs=[dict(ex.inputs()) for ex in examples], metric=metric,
               backend=backend, seed=seed, num_threads=num_threads, normalize=normalize)
    _run_trials(study, run, n_trials)
    return _result(program, study, study_name, candidates, proposal_meter)
