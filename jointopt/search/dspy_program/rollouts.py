"""Answering inputs with a DSPy program under a policy: ``n`` rollouts of the whole
program per input, aggregated by majority vote or best-of-n (:func:`run_program`)."""

from __future__ import annotations

import contextvars
import logging
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from jointopt.core.seeds import stable_seed
from jointopt.backends.base import Backend
from jointopt.integrations.dspy_lm import BackendEngine, engine_of, make_dspy_lm
from jointopt.integrations.token_meter import CallRecord, TokenMeter
from jointopt.errors import ConfigError, JointoptError
from jointopt.core.policy import Allocation, Policy
from jointopt.search.dspy_program.program import policy_of

import dspy  # noqa: E402,I001  (dspy_lm sets DSPY_CACHEDIR before the first import)
from dspy.utils.exceptions import AdapterParseError, LMError  # noqa: E402

log = logging.getLogger(__name__)


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
            jobs.append((row, allocation, r, stable_seed("jointopt/dspy_program", seed, i, r)))
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

