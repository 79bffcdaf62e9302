"""Prompt candidates proposed by a language model from the task itself.

:func:`propose_instructions` asks an LM, through a small DSPy signature ("task
description + a few solved examples -> instruction"), for ``k`` instructions, and turns
each into a :class:`~jointopt.core.prompts.PromptTemplate` whose system turn is the
instruction and whose user turn is the task's input (``{{ question }}`` when the task
has that field, otherwise every field). The proposals are cached on disk by a content
hash of everything that determines them, so a rerun with the same inputs makes no
proposal calls.

In a search-space file, an entry of ``prompts:`` may be a proposal source instead of a
template (see :class:`ProposalSource`)::

    prompts:
      - id: instr
        system: Reply only with the final answer.
        user: "{{ question }}"
      - propose: {k: 4, n_examples: 3, seed: 0}

:func:`expand_prompts` turns such a list into templates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jointopt.backends.base import Backend
from jointopt.errors import BackendError, ConfigError, JointoptError, relocate
from jointopt.core.prompts import PromptTemplate
from jointopt.integrations.proposal_cache import _locked, _read_cache, _store
from jointopt.integrations.proposal_spec import ProposalSource, Proposals, ProposeSpec, _config_error
from jointopt.integrations.proposer import (
    PROPOSER_VERSION,
    ProposeInstruction,
    _draw,
    _proposer_prompt,
    _templates,
)
from jointopt.integrations.token_meter import TokenCounts, TokenMeter
from jointopt.tasks import Example, Task

__all__ = [
    "ProposeSpec",
    "ProposalSource",
    "Proposals",
    "ProposeInstruction",
    "propose_instructions",
    "expand_prompts",
    "log_proposals_to_mlflow",
    "PROPOSER_VERSION",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- API


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"`{name}` must be an integer >= {low}", where=name, value=value,
                          fix=f"use an integer >= {low}")
    return value


def propose_instructions(
    task: Task,
    lm_backend: Backend,
    k: int,
    *,
    n_examples: int = 3,
    seed: int = 0,
    cache_path: str | Path,
    meter: TokenMeter | None = None,
    temperature: float = 1.0,
    max_tokens: int = 160,
    id_prefix: str = "proposed",
    max_draws: int | None = None,
) -> Proposals:
    """Ask an LM for ``k`` instructions for ``task`` and turn them into templates.

    The proposer sees ``task.description`` and ``n_examples`` demos drawn (by ``seed``)
    from ``task.demos`` (never the evaluation examples). Each proposal is one DSPy call
    with its own seed and ``rollout_id``; a draw that is empty, a duplicate, too long or
    unusable is rejected and another is drawn, up to ``max_draws`` (default ``3 * k``).
    Replies DSPy cannot parse (small models often drop the field markers) are read as
    plain text.

    Results are cached in the JSON file ``cache_path`` under a content hash of (proposer
    model id, task description and fields, the chosen demos' ids and contents, ``k``,
    ``seed``, the proposer prompt, ``temperature``, ``max_tokens``): the same inputs make
    no proposal calls (``cache_hit=True``, ``meter`` unchanged).

    Args:
        task: the task to write instructions for.
        lm_backend: the backend that proposes.
        k: number of instructions wanted (>= 1).
        n_examples: demos shown to the proposer (<= ``len(task.demos)``).
        seed: seed of the demo choice and of the samples.
        cache_path: the JSON cache file (created when missing).
        meter: token counters the proposal calls are added to (nothing on a cache hit).
        temperature: proposer sampling temperature.
        max_tokens: completion cap per proposal.
        id_prefix: template ids are ``<id_prefix>_<i>``.
        max_draws: most proposal calls (default ``3 * k``).

    Returns:
        :class:`Proposals`; fewer than ``k`` templates (with a warning) when too many
        draws were rejected.

    Raises:
        ConfigError: bad arguments (``n_examples`` larger than the demo pool, ...).
        BackendError: not one usable instruction came back.
    """
    k, n_examples, draws = _check_arguments(task, k, n_examples, seed, max_draws, id_prefix)
    chosen, material, key = _material(task, lm_backend, k, n_examples, seed, temperature,
                                      max_tokens, draws)
    model_id = material["model"]
    path = Path(cache_path)
    with _locked(path):
        record = _read_cache(path).get(key)
    if record is not None:
        return _cached(record, task, id_prefix, model_id, key, k, material)

    local = TokenMeter()
    started = time.perf_counter()
    accepted, rejected = _draw(task, lm_backend, local, chosen, k, seed, temperature,
                               max_tokens, draws)
    usage = local.snapshot()
    if meter is not None:
        meter.add_counts(usage)
    _report(accepted, rejected, k, draws, model_id, usage, started)
    instructions = tuple(accepted)
    templates = _templates(task, instructions, id_prefix, model_id, key)
    _store(path, key, {"instructions": list(instructions), "usage": usage.to_dict(),
                       "rejected": rejected, "model": model_id,
                       "example_ids": material["example_ids"], "k": k, "seed": seed,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return Proposals(templates=templates, proposer_tokens=usage.total_tokens, cache_hit=False,
                     instructions=instructions, usage=usage, model=model_id, key=key,
                     requested=k, rejected=rejected,
                     example_ids=tuple(material["example_ids"]))


def _report(accepted: Sequence[str], rejected: int, k: int, draws: int, model_id: str,
            usage: TokenCounts, started: float) -> None:
    """Fail when no draw was usable; log how many were and what they cost."""
    if not accepted:
        raise BackendError(
            f"the proposer gave no usable instruction in {draws} draws", where="proposals",
            value=model_id, fix="use a stronger proposer model (propose.model), raise "
                                "max_tokens, or write the templates by hand",
        )
    if len(accepted) < k:
        log.warning("proposer gave %d usable instructions of %d asked (%d draws rejected)",
                    len(accepted), k, rejected)
    log.info("proposed %d instructions in %.1fs (%d tokens)", len(accepted),
             time.perf_counter() - started, usage.total_tokens)


def _check_arguments(task: Task, k: Any, n_examples: Any, seed: Any, max_draws: Any,
                     id_prefix: str) -> tuple[int, int, int]:
    """``k``, ``n_examples`` and the most draws, checked."""
    k = _check_int("k", k, 1)
    n_examples = _check_int("n_examples", n_examples, 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("`seed` must be an integer", where="seed", value=seed, fix="use e.g. 0")
    draws = _check_int("max_draws", max_draws if max_draws is not None else 3 * k, k)
    if n_examples > len(task.demos):
        raise ConfigError(
            f"asked for {n_examples} proposer examples but task {task.name!r} has "
            f"{len(task.demos)} demos", where="n_examples", value=n_examples,
            fix="lower n_examples (0 shows the description only) or give the task demos",
        )
    if not re.fullmatch(r"[A-Za-z0-9_-]+", id_prefix or ""):
        raise ConfigError("`id_prefix` must be letters, digits, '_' or '-'", where="id_prefix",
                          value=id_prefix, fix="use e.g. 'proposed'")
    return k, n_examples, draws


def _material(task: Task, lm_backend: Backend, k: int, n_examples: int, seed: int,
              temperature: float, max_tokens: int, draws: int
              ) -> tuple[list[Example], dict[str, Any], str]:
    """The demos shown to the proposer, everything that determines the proposals, and its
    hash (the cache key)."""
    rng = random.Random(f"jointopt/proposals/seed={seed}")
    chosen = rng.sample(list(task.demos), n_examples) if n_examples else []
    model_id = lm_backend.model_id
    material = {
        "model": model_id,
        "description": task.description,
        "fields": list(task.fields),
        "example_ids": [ex.id for ex in chosen],
        "examples": [ex.to_dict() for ex in chosen],
        "k": k,
        "seed": seed,
        "prompt": _proposer_prompt(),
        "temperature": float(temperature),
        "max_tokens": int(max_tokens),
        "max_draws": draws,
    }
    key = hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return chosen, material, key


def _cached(record: Mapping[str, Any], task: Task, id_prefix: str, model_id: str, key: str,
            k: int, material: Mapping[str, Any]) -> Proposals:
    """Proposals from a cache entry (no proposal calls)."""
    usage = TokenCounts(**{f: int(record["usage"][f])
                           for f in ("calls", "prompt_tokens", "completion_tokens")})
    instructions = tuple(record["instructions"])
    log.info("proposals %s: cache hit (%d instructions)", key[:12], len(instructions))
    return Proposals(
        templates=_templates(task, instructions, id_prefix, model_id, key),
        proposer_tokens=usage.total_tokens, cache_hit=True, instructions=instructions,
        usage=usage, model=model_id, key=key, requested=k,
        rejected=int(record.get("rejected", 0)), example_ids=tuple(material["example_ids"]),
    )


def expand_prompts(
    space_prompts: Sequence[Mapping[str, Any] | Any],
    task: Task,
    backend: Backend,
    cache_path: str | Path,
    *,
    backend_for: Callable[[str], Backend] | None = None,
    meter: TokenMeter | None = None,
    source: str = "search space",
    collected: list[Proposals] | None = None,
) -> list[PromptTemplate]:
    """Turn a search space's ``prompts:`` list into templates, expanding proposal entries.

    A plain entry is a template (``{id, user, system?, shots?, ...}``); an entry
    ``{propose: {...}}`` (:class:`ProposalSource`) becomes the proposed templates, in
    place. Template ids must be unique across the list.

    Args:
        space_prompts: the list (dicts, or pydantic models with ``model_dump``).
        task: the study's task (proposals are grounded in it; templates are validated
            against it).
        backend: the study's backend; it proposes unless an entry names ``model``.
        cache_path: proposal cache file (JSON).
        backend_for: ``model -> Backend`` for entries that name another proposer model.
        meter: token counters that proposal calls are added to.
        source: the file or section named in error messages.
        collected: when given, every :class:`Proposals` made is appended to it (to log
            them and report the proposer's tokens).

    Raises:
        ConfigError: an invalid entry, a duplicate id, or a proposer model without
            ``backend_for``.
    """
    out: list[PromptTemplate] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(space_prompts):
        where = f"{source}: prompts[{i}]"
        data = entry.model_dump(exclude_unset=True) if hasattr(entry, "model_dump") else entry
        if not isinstance(data, Mapping):
            raise ConfigError("a prompt entry must be a mapping", where=where,
                              value=data, fix="write {id: ..., user: ...} or {propose: {...}}")
        if "propose" in data:
            templates: Sequence[PromptTemplate] = _proposed(
                data, where, task, backend, cache_path, backend_for, meter, collected)
        else:
            templates = [_template_of(data, where)]
        for template in templates:
            if template.id in seen:
                raise ConfigError(
                    f"duplicate prompt id (also at {seen[template.id]})", where=where,
                    value=template.id,
                    fix="give every prompt a unique id (for two proposal entries set "
                        "propose.id_prefix)",
                )
            seen[template.id] = where
            out.append(template)
    return out


def _proposed(data: Mapping[str, Any], where: str, task: Task, backend: Backend,
              cache_path: str | Path, backend_for: Callable[[str], Backend] | None,
              meter: TokenMeter | None, collected: list[Proposals] | None
              ) -> Sequence[PromptTemplate]:
    """The templates of a ``{propose: {...}}`` entry."""
    try:
        spec = ProposalSource.model_validate(dict(data)).propose
    except ValidationError as exc:
        raise _config_error(exc, where) from None
    proposer = backend
    if spec.model is not None:
        if backend_for is None:
            raise ConfigError(
                "this proposal entry names its own model, but no way to build a "
                "backend for it was given", where=f"{where}.propose.model",
                value=spec.model,
                fix="drop `model` to propose with the study's model, or pass backend_for",
            )
        proposer = backend_for(spec.model)
    try:
        proposals = propose_instructions(
            task, proposer, spec.k, n_examples=spec.n_examples, seed=spec.seed,
            cache_path=cache_path, meter=meter, temperature=spec.temperature,
            max_tokens=spec.max_tokens, id_prefix=spec.id_prefix,
        )
    except JointoptError as exc:
        raise relocate(exc, f"{where}.propose.") from None
    if collected is not None:
        collected.append(proposals)
    return proposals.templates


def _template_of(data: Mapping[str, Any], where: str) -> PromptTemplate:
    """The template of a plain entry."""
    try:
        return PromptTemplate(**dict(data))
    except TypeError as exc:
        raise ConfigError(f"invalid prompt template: {exc}", where=where,
                          value=dict(data),
                          fix="a template has id, user, and optionally system, shots, "
                              "shot_answer, answer_regex, description") from None
    except JointoptError as exc:
        raise relocate(exc, f"{where}: ") from None


def log_proposals_to_mlflow(client: Any, run_id: str, proposals: Proposals, *,
                            artifact_file: str = "proposals/proposals.json") -> None:
    """Log proposals to an MLflow run: the templates as a text artifact, the proposer's
    model, count and cache hit as params, and its tokens as params and metrics
    (``proposer_tokens``, ``proposer_prompt_tokens``, ``proposer_completion_tokens``,
    ``proposer_calls``).

    Args:
        client: an ``mlflow.tracking.MlflowClient``.
        run_id: the run to log to.
        proposals: what :func:`propose_instructions` returned.
        artifact_file: artifact path of the JSON text.
    """
    from mlflow.entities import Metric, Param

    client.log_text(run_id, json.dumps(proposals.to_dict(), indent=2, ensure_ascii=False),
                    artifact_file)
    now = int(time.time() * 1000)
    usage = proposals.usage
    metrics = [
        Metric("proposer_tokens", float(proposals.proposer_tokens), now, 0),
        Metric("proposer_prompt_tokens", float(usage.prompt_tokens), now, 0),
        Metric("proposer_completion_tokens", float(usage.completion_tokens), now, 0),
        Metric("proposer_calls", float(usage.calls), now, 0),
    ]
    params = [
        Param("proposer_model", str(proposals.model)[:500]),
        Param("proposer_tokens", str(proposals.proposer_tokens)),
        Param("proposals_requested", str(proposals.requested)),
        Param("proposals_count", str(len(proposals.templates))),
        Param("proposals_cache_hit", str(proposals.cache_hit)),
        Param("proposals_key", proposals.key[:16]),
    ]
    client.log_batch(run_id, metrics=metrics, params=params)
