"""Execute a tuned policy on new inputs: difficulty -> allocation -> strategy -> answer.

>>> runner = load_policy("out/policy.yaml", backend=OpenAIBackend("http://127.0.0.1:8000/v1"))
>>> result = runner.answer({"question": "Reverse the order of these words: red, cat"})
>>> result.answer, result.usage.total_tokens

A :class:`PolicyRunner` needs three things: the :class:`~jointopt.core.policy.Policy`, a
:class:`~jointopt.backends.Backend` that generates, and a task-like object that reads
answers out of completions. The task comes from the policy file's ``metadata.task``
section (extractor, matcher, input fields, few-shot demos, optional serve-time verifier;
see :mod:`jointopt.core.policy_file`) unless one is passed in. A batch of inputs runs as one
:func:`~jointopt.evaluation.evaluate.drive`: every strategy round of every input goes to the
backend as one batch, exactly as during the study, and every token of every round
(samples, revisions, verifier calls) is counted in the answer's usage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jointopt.backends.base import Backend
from jointopt.errors import ConfigError, DataError
from jointopt.evaluation.evaluate import EvaluationResult, check_policy, drive, evaluate, policy_run
from jointopt.core.generation import GenerationResult
from jointopt.core.policy import Policy
from jointopt.strategies import Candidate, StrategyOutcome
from jointopt.core.task_spec import task_from_spec, task_spec, template_inputs
from jointopt.tasks import Example, Task

__all__ = [
    "Usage",
    "Answer",
    "PolicyRunner",
    "load_policy",
    "task_from_spec",
    "task_spec",
    "template_inputs",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    """Tokens spent, OpenAI-style (prompt tokens counted once per engine request);
    ``reasoning_tokens``: the part of ``completion_tokens`` spent thinking, reported as
    ``completion_tokens_details.reasoning_tokens`` when there is any."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    reasoning_tokens: int = 0

    @classmethod
    def of(cls, results: Sequence[GenerationResult], reasoning_tokens: int | None = None
           ) -> "Usage":
        prompt = sum(r.prompt_tokens for r in results)
        completion = sum(r.completion_tokens for r in results)
        if reasoning_tokens is None:
            reasoning_tokens = sum(r.thinking_tokens for r in results)
        return cls(prompt, completion, prompt + completion, int(reasoning_tokens))

    def to_dict(self) -> dict:
        out: dict = {"prompt_tokens": self.prompt_tokens,
                     "completion_tokens": self.completion_tokens,
                     "total_tokens": self.total_tokens}
        if self.reasoning_tokens:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return out


@dataclass(frozen=True)
class Answer:
    """The policy's answer to one input.

    Attributes:
        answer: the aggregated, canonical answer (``None`` when no completion held one).
        text: the full text of the completion the answer was taken from (for best-of-N
            the best-scored one, otherwise the latest completion that gave the answer;
            the first completion when none did).
        usage: every token spent on this input, over all engine calls.
        bin: the difficulty bin the input was assigned to.
        strategy: the strategy of that bin's allocation.
        calls: usage of each engine request, in order (``usage`` is their sum).
        completions: how many completions were generated (or served from a cache).
        wall_time: seconds from the start of the batch to its end.
        candidates: every completion the strategy considered, read as answers.
    """

    answer: str | None
    text: str
    usage: Usage
    bin: str
    strategy: str
    calls: tuple[Usage, ...] = ()
    completions: int = 0
    wall_time: float = 0.0
    candidates: tuple[Candidate, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "text": self.text,
            "usage": self.usage.to_dict(),
            "bin": self.bin,
            "strategy": self.strategy,
            "calls": [c.to_dict() for c in self.calls],
            "completions": self.completions,
            "wall_time_s": round(self.wall_time, 4),
        }


# ------------------------------------------------------------------------------ task spec


# ------------------------------------------------------------------------------ runner


def _input_id(inputs: Mapping[str, str], difficulty: str | None) -> str:
    raw = json.dumps([sorted(inputs.items()), difficulty], ensure_ascii=False).encode()
    return "input-" + hashlib.sha256(raw).hexdigest()[:16]


def _chosen(outcome: StrategyOutcome) -> str:
    """The text of the candidate the outcome's answer came from."""
    candidates = outcome.candidates
    if not candidates:
        return ""
    same = [c for c in candidates if c.answer == outcome.answer]
    if not same:
        return candidates[0].text
    scored = [c for c in same if c.score is not None]
    if scored:
        return max(scored, key=lambda c: c.score).text  # type: ignore[arg-type, return-value]
    return same[-1].text  # the latest (a revision chain's final attempt)


class PolicyRunner:
    """Answers inputs with a policy on a backend (see the module docstring).

    Args:
        policy: the policy to execute.
        backend: where generations come from.
        task: reads answers out of completions and supplies demos; its ``fields`` are the
            input fields an input may carry (the template's variables are required).
        seed: base of the per-input request seeds (an input's seed depends only on its
            content, so the same input gets the same seed every time).
        owns_backend: close the backend in :meth:`close`.

    Raises:
        TemplateError, StrategyError: the policy does not fit the task.

    A runner may be shared between threads: calls are serialised with a lock unless the
    backend declares ``thread_safe = True`` (as :class:`~jointopt.backends.openai.
    OpenAIBackend` does).
    """

    def __init__(self, policy: Policy, backend: Backend, task: Task, *, seed: int = 0,
                 owns_backend: bool = False) -> None:
        self._strategies = check_policy(policy, task, backend)
        self._policy = policy
        self._backend = backend
        self._task = task
        self._seed = int(seed)
        self._owns_backend = owns_backend
        self._required = template_inputs(policy)
        self._allowed = frozenset(task.fields) | frozenset(self._required)
        self._lock = None if getattr(backend, "thread_safe", False) else threading.Lock()

    # ---------------------------------------------------------------- properties

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def task(self) -> Task:
        return self._task

    @property
    def input_fields(self) -> tuple[str, ...]:
        """Fields every input must provide (the template's variables), sorted."""
        return self._required

    @property
    def optional_fields(self) -> tuple[str, ...]:
        """Further fields an input may provide (read only by a serve-time verifier)."""
        return tuple(sorted(self._allowed - set(self._required)))

    # ---------------------------------------------------------------- inputs

    def example(self, inputs: Mapping[str, Any], difficulty: str | int | None = None) -> Example:
        """Check one input and turn it into an :class:`Example` (with an empty target).

        Raises:
            DataError: not a mapping, a missing required field, an unknown field, or a
                value that is not a string or number.
        """
        if not isinstance(inputs, Mapping):
            raise DataError("an input must be a mapping of field name to value",
                            where="inputs", value=type(inputs).__name__,
                            fix=f"send an object with the fields {list(self._required)}")
        clean: dict[str, str] = {}
        for key, value in inputs.items():
            if key not in self._allowed:
                raise DataError(f"unknown input field {key!r}", where=f"inputs.{key}",
                                value=key, fix=f"the policy's template reads "
                                f"{list(self._required)}" + (
                                    f" (optional: {list(self.optional_fields)})"
                                    if self.optional_fields else ""))
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise DataError("input values must be strings (or numbers)",
                                where=f"inputs.{key}", value=value,
                                fix="send the field's text as a string")
            clean[str(key)] = value if isinstance(value, str) else str(value)
        missing = [f for f in self._required if f not in clean]
        if missing:
            raise DataError(f"input lacks the field {missing[0]!r}", where="inputs",
                            value=sorted(clean),
                            fix=f"send every field the template reads: {list(self._required)}")
        # Fields the task declares but the template does not read may be absent.
        for name in self._task.fields:
            clean.setdefault(name, "")
        label = None if difficulty is None else str(difficulty)
        return Example(id=_input_id(clean, label), inputs=clean, target="", difficulty=label)

    # ---------------------------------------------------------------- answering

    def answer(self, inputs: Mapping[str, Any], *, difficulty: str | int | None = None) -> Answer:
        """Answer one input (``difficulty`` is its bin label when the policy splits by label)."""
        return self.answer_batch([inputs], difficulties=[difficulty])[0]

    def answer_batch(self, inputs: Sequence[Mapping[str, Any]], *,
                     difficulties: Sequence[str | int | None] | None = None) -> list[Answer]:
        """Answer many inputs with one batched :func:`~jointopt.evaluation.evaluate.drive`."""
        if difficulties is not None and len(difficulties) != len(inputs):
            raise DataError("difficulties must have one label per input",
                            where="difficulties", value=(len(difficulties), len(inputs)),
                            fix="pass a list as long as the inputs, or None")
        labels = list(difficulties) if difficulties is not None else [None] * len(inputs)
        examples = [self.example(x, d) for x, d in zip(inputs, labels)]
        if not examples:
            return []
        bins, runs = [], []
        for example in examples:
            run, bin_name = policy_run(self._policy, self._strategies, self._task, example,
                                       self._seed)
            bins.append(bin_name)
            runs.append(run)
        start = time.perf_counter()
        if self._lock is None:
            driven = drive(self._backend, runs)
        else:
            with self._lock:
                driven = drive(self._backend, runs)
        wall = time.perf_counter() - start
        answers = []
        for bin_name, (outcome, results) in zip(bins, driven):
            bin_name = bin_name or outcome.info["bin"]  # a probing source picks it while running
            answers.append(Answer(
                answer=outcome.answer,
                text=_chosen(outcome),
                usage=Usage.of(results, outcome.info.get("thinking_tokens")),
                bin=bin_name,
                strategy=self._policy.bins[bin_name].strategy,
                calls=tuple(Usage.of([r]) for r in results),
                completions=sum(len(r.completions) for r in results),
                wall_time=wall,
                candidates=tuple(outcome.candidates),
            ))
        log.debug("answered %d inputs in %.2fs", len(answers), wall)
        return answers

    def evaluate(self, task: Task | Sequence[Example], *, seed: int | None = None
                 ) -> EvaluationResult:
        """Re-score the policy on labelled data.

        Args:
            task: a :class:`Task` (its own extraction and matching are used), or examples
                scored with the policy's extraction.
            seed: evaluation seed (default: the runner's seed).
        """
        if not isinstance(task, Task):
            task = self._task.subset(task)
        if self._lock is None:
            return evaluate(self._policy, task, self._backend,
                            seed=self._seed if seed is None else seed)
        with self._lock:
            return evaluate(self._policy, task, self._backend,
                            seed=self._seed if seed is None else seed)

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the backend if this runner created it."""
        if self._owns_backend:
            self._backend.close()

    def __enter__(self) -> "PolicyRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        bins = ", ".join(f"{k}={v.strategy}" for k, v in self._policy.bins.items())
        return (f"PolicyRunner(prompt={self._policy.prompt.id!r}, bins=[{bins}], "
                f"backend={self._backend.name!r})")


def load_policy(
    path: str | Path | Policy,
    backend: Backend | str | Mapping[str, Backend] | None = None,
    task: Task | None = None,
    *,
    seed: int = 0,
    backend_kwargs: Mapping[str, Any] | None = None,
    allow_verifiers: Sequence[str] = (),
) -> PolicyRunner:
    """Load a policy file (validated) and return a runner for it.

    Args:
        path: a policy file written by ``jointopt export`` / :func:`save_policy`, or a
            :class:`Policy` already in memory.
        backend: a :class:`Backend`; or a registry name (``"openai"``, ``"vllm"``, ...)
            created with ``backend_kwargs``; or None for the in-process vLLM engine on the
            policy's model. A backend created here is closed by :meth:`PolicyRunner.close`.
            A policy calling several models (per bin, cascades) takes a mapping model name
            -> Backend (one upstream each), or a name / None (one engine per model, lazily).
        task: reads the answers; default: built from the file's ``metadata.task``.
        seed: base of the per-input request seeds.
        backend_kwargs: constructor arguments when ``backend`` is a name or None.
        allow_verifiers: modules (with their submodules) the file's serve-time verifier
            may be imported from, besides jointopt's own; any other module is refused
            before it is imported.

    Raises:
        ConfigError: the file is invalid, it has no ``metadata.task`` and no task
            was given, or its verifier is outside the allow-list.
    """
    from jointopt.backends import backend_class, make_backend
    from jointopt.core.policy_file import load_policy_file

    policy = path if isinstance(path, Policy) else load_policy_file(path)
    where = "policy" if isinstance(path, Policy) else str(path)
    if task is None:
        spec = policy.metadata.get("task")
        if not spec:
            raise ConfigError(
                "the policy has no answer-extraction section (metadata.task)",
                where=f"{where}: metadata.task",
                fix="re-export it with `jointopt export` (which writes the section), or pass "
                    "task= to load_policy",
            )
        task = task_from_spec(spec, where=f"{where}: metadata.task",
                              allow_verifiers=allow_verifiers)
    owns = not isinstance(backend, (Backend, Mapping))
    models = tuple(dict.fromkeys(policy.models + tuple(
        m for s in check_policy(policy, task).values() for m in s.models())))
    if isinstance(backend, Mapping) or (owns and len(models) > 1):
        from jointopt.serving.model_backends import model_router

        backend = model_router(policy, models, backend, dict(backend_kwargs or {}), where)
    elif not isinstance(backend, Backend):
        kwargs = dict(backend_kwargs or {})
        name = backend or "vllm"
        if backend_class(name).loads_model:
            kwargs.setdefault("model", policy.model)
        if kwargs.get("max_model_len"):  # thinking bins fit the engine's context
            from jointopt.search.thinking_fit import check_policy_fits

            check_policy_fits(policy, task, int(kwargs["max_model_len"]), source=where)
        backend = make_backend(name, **kwargs)
    try:
        return PolicyRunner(policy, backend, task, seed=seed, owns_backend=owns)
    except Exception:
        if owns:
            backend.close()
        raise

