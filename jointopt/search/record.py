"""Record a sample bank: every pool a study's parallel strategies can ask for, to a file.

:func:`record_bank` draws ``N`` samples per prompt x example for every temperature and
max_tokens value of a search space, through any backend, and writes them as a bank
(``docs/bank_format.md``: columns in ``.npz``, or version-1 JSONL for ``.jsonl``) together with each sample's extracted answer and correctness.
:class:`jointopt.backends.replay.ReplayBackend` serves such a file as if it were the
engine, so a study recorded on a GPU cluster can be optimised on a laptop, with the same
code path and the same trial values.

Requests are exactly those the evaluator sends for pools (same messages, sampling
parameters and per-example seeds), so with a :class:`~jointopt.backends.CachedBackend`
over a study's sample store, recording reuses every sample the live study generated and
the bank equals the live pools.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jointopt.backends.base import Backend
from jointopt.backends.bank_file import (BANK_FORMAT, BANK_VERSION, sampling_fields,
                                         write_jsonl_bank)
from jointopt.search.replay_check import (
    check_difficulty_replayable,
    examples_hash,
    largest_pool_k,
    sampling_values,
)
from jointopt.errors import BackendError, ConfigError
from jointopt.evaluation.evaluate import example_context
from jointopt.core.generation import GenerationRequest, GenerationResult
from jointopt.core.prompts import PromptTemplate
from jointopt.strategies import StrategyContext
from jointopt.search.plan import StudyPlan, task_hash
from jointopt.tasks import Example

__all__ = ["RecordSummary", "ProgressCallback", "record_bank", "check_recording",
           "samples_needed"]

log = logging.getLogger(__name__)

#: ``progress(pools_done, pools_total)``, called after every engine batch.
ProgressCallback = Callable[[int, int], None]

#: Default number of samples one ``generate`` call asks for (whole settings are
#: grouped until they reach it; a setting is never split).
DEFAULT_BATCH_SAMPLES = 4096


@dataclass(frozen=True)
class RecordSummary:
    """What :func:`record_bank` wrote.

    Attributes:
        path: the bank file.
        model: the backend's model id (the header's ``model``).
        task: task name.
        dataset_hash: sha256 of the searched (dev) examples (:func:`jointopt.search.plan.task_hash`).
        examples: examples recorded (the searched ones and the held-out test split).
        settings: (prompt, temperature, max_tokens) combinations recorded.
        pools: pool lines written (settings x examples, dev and test).
        samples: sample lines written.
        generated: completions the engine produced (the rest came from a sample store).
        cached: completions served from a sample store.
        engine_calls: ``generate`` calls made.
        prompt_tokens: prompt tokens over all pools (each pool's prompt counted once).
        completion_tokens: completion tokens over all samples.
        samples_per_pool: samples recorded per sampled pool (``--samples``; greedy pools
            at temperature 0 hold one).
        samples_needed: samples per sampled pool a study on this space draws at most
            (``max(bank.pool_size, largest n)``, 1 when every temperature is 0); a bank
            with fewer cannot replay every trial.
        wall_time: seconds spent.
    """

    path: Path
    model: str
    task: str
    dataset_hash: str
    examples: int
    settings: int
    pools: int
    samples: int
    generated: int
    cached: int
    engine_calls: int
    prompt_tokens: int
    completion_tokens: int
    samples_per_pool: int
    samples_needed: int
    wall_time: float

    @property
    def enough_samples(self) -> bool:
        """Whether every sampled pool holds what a study on the space draws at most."""
        return self.samples_per_pool >= self.samples_needed


@dataclass(frozen=True)
class _Setting:
    prompt: PromptTemplate
    temperature: float
    max_tokens: int

    @property
    def label(self) -> str:
        return f"{self.prompt.id} T={self.temperature:g} max_tokens={self.max_tokens}"


def samples_needed(plan: StudyPlan) -> int:
    """Samples per sampled pool the plan's study draws at most: ``max(pool_size, n)``.

    ``pool_size`` is the config's ``bank.pool_size`` when the sample bank is on; ``n`` is
    the largest ``pool_k()`` any parallel strategy of the space can take.
    """
    from jointopt.search.config import DEFAULT_POOL_SIZE

    bank = plan.config.bank
    configured = bank.pool_size if bank.pool_size is not None else DEFAULT_POOL_SIZE
    pool_size = configured if bank.enabled and plan.config.cache else 0
    return max(pool_size, largest_pool_k(plan.space))


def check_recording(plan: StudyPlan, samples: int,
                    batch_samples: int = DEFAULT_BATCH_SAMPLES) -> list[tuple[str, float, int]]:
    """Validate a recording before any engine loads.

    Returns:
        The settings that will be recorded: (prompt id, temperature, max_tokens).

    Raises:
        ConfigError: ``samples`` or ``batch_samples`` < 1, or a temperature / max_tokens
            the space draws from a continuous range.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError("`samples` must be an integer >= 1", where="--samples",
                          value=samples, fix="e.g. --samples 16")
    if isinstance(batch_samples, bool) or not isinstance(batch_samples, int) or batch_samples < 1:
        raise ConfigError("`batch_samples` must be an integer >= 1", where="--batch-samples",
                          value=batch_samples, fix="e.g. 4096")
    unexpanded = getattr(plan.space, "proposals", ())
    if unexpanded:
        raise ConfigError(
            "the search space has {propose: ...} prompt entries; recording proposed prompts "
            "is not supported (their texts are only known once an engine proposes them)",
            where=f"{plan.space.source}: prompts", value=[dict(e) for e in unexpanded],
            fix="write the proposed templates into the search space as ordinary prompts "
                "(ids and text), then record")
    check_difficulty_replayable(plan.space)
    return [(s.prompt.id, s.temperature, s.max_tokens) for s in _settings(plan)]


def _settings(plan: StudyPlan) -> list[_Setting]:
    source = plan.space.source
    temperatures = sampling_values(plan.space.temperature, "temperature", source)
    budgets = sampling_values(plan.space.max_tokens, "max_tokens", source)
    return [_Setting(p, t, m) for p in plan.space.prompts for t in temperatures for m in budgets]


def _batches(settings: Sequence[_Setting], per_setting: Callable[[_Setting], int],
             limit: int) -> Iterator[list[_Setting]]:
    batch: list[_Setting] = []
    size = 0
    for setting in settings:
        cost = per_setting(setting)
        if batch and size + cost > limit:
            yield batch
            batch, size = [], 0
        batch.append(setting)
        size += cost
    if batch:
        yield batch


def _number(value: float | None) -> float | None:
    return None if value is None else float(value)


def record_bank(plan: StudyPlan, backend: Backend, *, samples: int, out: str | Path,
                progress: ProgressCallback | None = None,
                batch_samples: int = DEFAULT_BATCH_SAMPLES) -> RecordSummary:
    """Record ``samples`` samples per prompt x example x temperature x max_tokens.

    Every prompt of ``plan.space``, every temperature and max_tokens value it can produce
    (``Choice``: all values; ``Fixed``: the value; an integer range: every integer) and
    every example of ``plan.task``, of the held-out ``plan.test_task`` (the Pareto
    front is re-scored on it) and of ``plan.calibration_task`` gets one pool: ``samples`` samples (one at
    temperature 0, where decoding is greedy). Requests are the evaluator's pool requests
    (same messages, sampling parameters and per-example seeds), grouped into ``generate``
    calls of whole settings (all examples of a setting in one call) of up to
    ``batch_samples`` samples. The file is written streaming to a temporary file next to
    ``out`` and renamed over ``out`` when complete.

    Args:
        plan: a validated study (:func:`jointopt.search.plan.plan_study`).
        backend: where samples come from; a :class:`~jointopt.backends.CachedBackend`
            over the study's sample store reuses what the study generated.
        samples: samples per sampled pool (>= 1); to replay every trial it must be at
            least :func:`samples_needed`.
        out: the bank file to write (JSONL).
        progress: called with (pools done, pools total) after every batch.
        batch_samples: samples one ``generate`` call asks for, at most (but always at
            least one whole setting).

    Raises:
        ConfigError: ``samples`` < 1, or a continuous temperature range (a bank holds a
            finite set of settings; use ``choices``).
        BackendError: the backend returned a wrong number of results or completions.
    """
    check_recording(plan, samples, batch_samples)
    settings = _settings(plan)
    start = time.perf_counter()
    out = Path(out)
    task = plan.task
    # The held-out split is scored on the Pareto front at the end of a study, the
    # calibration split by `jointopt certify`: record them too.
    examples = list(task.examples) + [e for t in (plan.test_task, plan.calibration_task)
                                      if t is not None for e in t.examples]
    needed = samples_needed(plan)
    if samples < needed:
        log.warning("recording %d samples per pool; the study draws up to %d, so trials "
                    "needing more cannot be replayed (use --samples %d)", samples, needed,
                    needed)

    def pool_n(setting: _Setting) -> int:
        return 1 if setting.temperature == 0 else samples

    header = _header(plan, backend, settings, examples, samples)
    counts = {"pools": 0, "samples": 0, "generated": 0, "cached": 0, "calls": 0,
              "prompt_tokens": 0, "completion_tokens": 0}
    _write_bank(out, header, plan, backend, settings, examples, pool_n, counts, progress,
                batch_samples)
    summary = RecordSummary(
        path=out, model=backend.model_id, task=task.name, dataset_hash=header["dataset_hash"],
        examples=len(examples), settings=len(settings), pools=counts["pools"],
        samples=counts["samples"],
        generated=counts["generated"], cached=counts["cached"], engine_calls=counts["calls"],
        prompt_tokens=counts["prompt_tokens"], completion_tokens=counts["completion_tokens"],
        samples_per_pool=samples,
        samples_needed=needed if any(s.temperature != 0 for s in settings) else 1,
        wall_time=time.perf_counter() - start,
    )
    log.info("recorded %d pools, %d samples (%d generated, %d from the store) in %.1fs",
             summary.pools, summary.samples, summary.generated, summary.cached,
             summary.wall_time)
    return summary


def _header(plan: StudyPlan, backend: Backend, settings: Sequence[_Setting],
            examples: Sequence[Example], samples: int) -> dict[str, Any]:
    """The bank's header line: model, task and dataset hashes, settings, provenance."""
    from jointopt._version import __version__

    task = plan.task
    return {
        "type": "header",
        "format": BANK_FORMAT,
        "version": BANK_VERSION,
        "model": backend.model_id,
        "model_name": plan.model,
        "task": task.name,
        "dataset_hash": task_hash(task),
        "test_dataset_hash": task_hash(plan.test_task) if plan.test_task else None,
        "examples": len(examples),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "jointopt_version": __version__,
        "samples": samples,
        "seed": plan.config.seed,
        "prompts": [p.id for p in plan.space.prompts],
        "temperatures": sorted({s.temperature for s in settings}),
        "max_tokens": sorted({s.max_tokens for s in settings}),
    }


def _write_bank(out: Path, header: dict[str, Any], plan: StudyPlan, backend: Backend,
                settings: Sequence[_Setting], examples: Sequence[Example],
                pool_n: Callable[[_Setting], int], counts: dict[str, int],
                progress: ProgressCallback | None, batch_samples: int) -> None:
    """Write the bank: version 2 (columns, ``.npz``) unless ``out`` ends in ``.jsonl``
    (version 1). Either is written to a temporary file next to ``out`` and renamed over
    it once complete (removed on any error); ``counts`` is updated as pools are written."""
    total_pools = len(settings) * len(examples)
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("recording %d settings x %d examples (%d samples per sampled pool) to %s",
             len(settings), len(examples), header["samples"], out)

    def record_all(sink: Callable[[dict, list[dict]], None]) -> None:
        for batch in _batches(settings, lambda s: pool_n(s) * len(examples), batch_samples):
            _record_batch(sink, plan, backend, batch, examples, pool_n, counts)
            if progress is not None:
                progress(counts["pools"], total_pools)

    if out.suffix != ".jsonl":
        from jointopt.backends.bank_write import BankWriter

        writer = BankWriter()
        record_all(writer.add_record)
        writer.write(out, {**header, "examples_hash": examples_hash(examples)})
        return
    write_jsonl_bank(out, header, record_all, counts)


def _record_batch(sink: Callable[[dict, list[dict]], None], plan: StudyPlan,
                  backend: Backend, batch: Sequence[_Setting],
                  examples: Sequence[Example], pool_n: Callable[[_Setting], int],
                  counts: dict[str, int]) -> None:
    # Demonstrations and task behaviour are the same for dev and test (one task subset).
    task = plan.task
    contexts: list[tuple[_Setting, StrategyContext]] = []
    for setting in batch:
        for example in examples:
            contexts.append((setting, example_context(
                setting.prompt, task, example, temperature=setting.temperature,
                max_tokens=setting.max_tokens, seed=plan.config.seed)))
    requests = [ctx.request(n=pool_n(setting)) for setting, ctx in contexts]
    results = backend.generate(requests)
    counts["calls"] += 1
    if len(results) != len(requests):
        raise BackendError("backend returned a wrong number of results",
                           where=f"{type(backend).__name__}.generate",
                           value=(len(results), len(requests)),
                           fix="a backend returns one result per request, in order")
    for (setting, ctx), request, result in zip(contexts, requests, results):
        _write_pool(sink, setting, ctx, request, result, counts)


def _write_pool(sink: Callable[[dict, list[dict]], None], setting: _Setting,
                ctx: StrategyContext,
                request: GenerationRequest, result: GenerationResult,
                counts: dict[str, int]) -> None:
    if len(result.completions) != request.n:
        raise BackendError("backend returned a wrong number of completions",
                           where=f"{setting.label} example {ctx.example.id}",
                           value=(len(result.completions), request.n),
                           fix="a backend returns request.n completions per request")
    key = request.sampling_key()
    prompt_tokens = int(result.prompt_tokens)
    pool = {
        "type": "pool",
        "prompt_id": setting.prompt.id,
        "example_id": ctx.example.id,
        "key": key,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "sampling": sampling_fields(request),
        "prompt_tokens": prompt_tokens,
        "samples": request.n,
        "seed": request.seed,
    }
    samples = []
    for index, c in enumerate(result.completions):
        answer = ctx.extract(c.text)
        samples.append({
            "type": "sample",
            "key": key,
            "prompt_id": setting.prompt.id,
            "example_id": ctx.example.id,
            "temperature": setting.temperature,
            "max_tokens": setting.max_tokens,
            "index": index,
            "text": c.text,
            "token_ids": list(c.token_ids),
            "finish_reason": c.finish_reason,
            "logprobs": None if c.logprobs is None else [float(x) for x in c.logprobs],
            "sum_logprob": _number(c.sum_logprob),
            "mean_logprob": _number(c.mean_logprob),
            "answer": answer,
            "correct": bool(ctx.task.is_correct(ctx.example, answer)),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": c.num_tokens,
        })
        counts["completion_tokens"] += c.num_tokens
    sink(pool, samples)
    counts["pools"] += 1
    counts["samples"] += request.n
    counts["prompt_tokens"] += prompt_tokens
    counts["cached"] += min(int(result.cached), request.n)
    counts["generated"] += request.n - min(int(result.cached), request.n)

