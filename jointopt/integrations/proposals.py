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

import contextlib
import difflib
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jointopt.backends.base import Backend
from jointopt.integrations.dspy_lm import TokenCounts, TokenMeter, make_dspy_lm
from jointopt.errors import BackendError, ConfigError, JointoptError, relocate
from jointopt.core.prompts import PromptTemplate, validate_template
from jointopt.tasks import Example, Task

import dspy  # noqa: E402,I001  (dspy_lm sets DSPY_CACHEDIR before the first import)
from dspy.utils.exceptions import AdapterParseError  # noqa: E402

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

#: Bumped whenever the proposer's prompt or cleaning rules change (part of cache keys).
PROPOSER_VERSION = 1
#: Shortest and longest instruction accepted (characters).
MIN_CHARS, MAX_CHARS = 12, 1200


# --------------------------------------------------------------------------- config


class ProposeSpec(BaseModel):
    """What to propose: ``{propose: {k, n_examples, seed, model, ...}}`` in ``prompts:``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    k: int = Field(ge=1, le=64)
    """Number of instructions to propose; each becomes one candidate template."""
    n_examples: int = Field(3, ge=0)
    """Solved examples from the task's demo pool shown to the proposer (0: description only)."""
    seed: int = 0
    """Seed of the example choice and of the proposal samples (part of the cache key)."""
    model: str | None = None
    """Model that proposes (an alias, folder or hub id); default: the study's model."""
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    """Sampling temperature of the proposer (diverse proposals need > 0)."""
    max_tokens: int = Field(160, ge=8)
    """Completion-token cap of one proposal."""
    id_prefix: str = Field("proposed", pattern=r"^[A-Za-z0-9_-]+$")
    """Template ids are ``<id_prefix>_0 .. <id_prefix>_<k-1>``; change it when a space has
    two proposal entries."""


class ProposalSource(BaseModel):
    """An entry of a search space's ``prompts:`` list that asks for proposed templates."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    propose: ProposeSpec
    """The proposal request: ``{k: int >= 1, n_examples: int >= 0, seed: int, model: alias?}``."""


def _config_error(exc: ValidationError, where: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            known = list(ProposeSpec.model_fields) if len(err["loc"]) > 1 else ["propose"]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(f"{loc}: unknown key {key!r} ({hint}known keys: {', '.join(known)})")
        elif err["type"] == "missing":
            lines.append(f"{loc}: required key is missing")
        else:
            lines.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return ConfigError("invalid proposal source: " + "; ".join(lines), where=where,
                       fix="write e.g. {propose: {k: 4, n_examples: 3, seed: 0}}")


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Proposals:
    """Proposed prompt candidates and what proposing them cost.

    Attributes:
        templates: one template per accepted instruction, ids ``<prefix>_0..``.
        proposer_tokens: total tokens (prompt + completion) the proposer spent producing
            these proposals; on a cache hit, what the original proposal run spent.
        cache_hit: True when the proposals came from the cache (no proposal calls now).
        instructions: the raw instruction texts, in template order.
        usage: calls / prompt / completion tokens of the proposal run.
        model: model id of the proposer.
        key: the cache key (content hash of the proposal inputs).
        requested: ``k``; fewer templates than this means draws were rejected.
        rejected: draws rejected (empty, duplicate, too long, unparsable ...).
        example_ids: ids of the demos shown to the proposer.
    """

    templates: tuple[PromptTemplate, ...]
    proposer_tokens: int
    cache_hit: bool
    instructions: tuple[str, ...] = ()
    usage: TokenCounts = TokenCounts()
    model: str = ""
    key: str = ""
    requested: int = 0
    rejected: int = 0
    example_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "model": self.model,
            "cache_hit": self.cache_hit,
            "requested": self.requested,
            "rejected": self.rejected,
            "example_ids": list(self.example_ids),
            "usage": self.usage.to_dict(),
            "proposer_tokens": self.proposer_tokens,
            "templates": [t.to_dict() for t in self.templates],
        }


# --------------------------------------------------------------------------- proposer


class ProposeInstruction(dspy.Signature):
    """You write instructions for an AI assistant. Read the task description and the
    solved examples, then write one clear instruction (a system prompt of one to three
    sentences) that tells the assistant how to solve any input of this task and to reply
    with the final answer only, in the same format as the examples."""

    task_description: str = dspy.InputField(desc="what the task is")
    examples: str = dspy.InputField(desc="solved examples of the task")
    instruction: str = dspy.OutputField(desc="the instruction for the assistant")


def _proposer_prompt() -> str:
    """Identity of the proposer prompt (part of the cache key)."""
    sig = ProposeInstruction
    fields = [(name, f.json_schema_extra.get("desc")) for name, f in sig.fields.items()]
    return json.dumps({"v": PROPOSER_VERSION, "instructions": sig.instructions,
                       "fields": fields, "adapter": "ChatAdapter"}, sort_keys=True)


def _user_template(task: Task) -> str:
    if "question" in task.fields:
        return "{{ question }}"
    if len(task.fields) == 1:
        return "{{ %s }}" % task.fields[0]
    return "\n".join(f"{name}: {{{{ {name} }}}}" for name in task.fields)


def _examples_text(task: Task, examples: Sequence[Example]) -> str:
    if not examples:
        return "(no examples)"
    blocks = []
    fields = ["question"] if "question" in task.fields else list(task.fields)
    for i, ex in enumerate(examples, 1):
        lines = [f"Example {i}"]
        lines += [f"{name}: {ex.inputs[name]}" for name in fields]
        lines.append(f"Answer: {ex.target}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


_MARKER = re.compile(r"\[\[\s*##\s*(\w+)\s*##\s*\]\]")
_PREFIX = re.compile(r"^\s*(instruction|system prompt)\s*:\s*", re.IGNORECASE)


def _salvage(raw: str) -> str:
    """The instruction inside a reply DSPy could not parse (small models drop markers)."""
    text = raw or ""
    found = list(_MARKER.finditer(text))
    for i, mark in enumerate(found):
        if mark.group(1) == "instruction":
            end = found[i + 1].start() if i + 1 < len(found) else len(text)
            return text[mark.end():end]
    return _MARKER.sub("", text)


def _clean(text: Any) -> tuple[str | None, str]:
    """(instruction, "") when acceptable, else (None, reason)."""
    if not isinstance(text, str):
        return None, "not text"
    out = _PREFIX.sub("", text.strip())
    out = out.strip().strip("`").strip()
    if len(out) >= 2 and out[0] == out[-1] and out[0] in "\"'":
        out = out[1:-1].strip()
    out = re.sub(r"\n\s*\n+", "\n\n", out)
    if "[[ ##" in out or _MARKER.search(out):
        return None, "contains DSPy field markers"
    if len(out) < MIN_CHARS:
        return None, "too short"
    if len(out) > MAX_CHARS:
        return None, "too long"
    if "endraw" in out:
        return None, "contains a Jinja raw-block terminator"
    return out, ""


def _as_jinja_text(instruction: str) -> str:
    """Template text that renders to exactly ``instruction`` (Jinja delimiters kept literal)."""
    if any(tok in instruction for tok in ("{{", "{%", "{#", "}}", "%}", "#}")):
        return "{% raw %}" + instruction + "{% endraw %}"
    return instruction


def _seed(*parts: Any) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31)


def _templates(task: Task, instructions: Sequence[str], prefix: str, model: str,
               key: str) -> tuple[PromptTemplate, ...]:
    user = _user_template(task)
    out = []
    for i, text in enumerate(instructions):
        template = PromptTemplate(
            id=f"{prefix}_{i}", system=_as_jinja_text(text), user=user,
            description=f"instruction proposed by {model} (proposal {key[:12]}, #{i})",
        )
        validate_template(template, task)
        out.append(template)
    return tuple(out)


# --------------------------------------------------------------------------- cache


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock next to ``path`` (no-op without fcntl)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(f"{path}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    from jointopt.safety.safe_load import data_limits, parse_json, read_text

    try:
        data = parse_json(read_text(path, "proposal cache", limits=data_limits()), str(path),
                          limits=data_limits())
    except ConfigError as exc:
        raise ConfigError(f"the proposal cache is unreadable: {exc.message}",
                          where=exc.where or str(path),
                          fix="delete the file (proposals are made again) or point "
                              "cache_path elsewhere") from None
    entries = data.get("entries") if isinstance(data, dict) else None
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"version": PROPOSER_VERSION, "entries": dict(entries)}, fh, indent=1,
                      sort_keys=True, ensure_ascii=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    path = Path(cache_path)
    with _locked(path):
        record = _read_cache(path).get(key)
    if record is not None:
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

    local = TokenMeter()
    lm = make_dspy_lm(lm_backend, local, temperature=float(temperature), max_tokens=int(max_tokens))
    predictor = dspy.Predict(ProposeInstruction)
    adapter = dspy.ChatAdapter(use_json_adapter_fallback=False)
    description = task.description.strip() or f"The task {task.name!r}."
    examples_text = _examples_text(task, chosen)
    accepted: list[str] = []
    seen: set[str] = set()
    rejected = 0
    started = time.perf_counter()
    with dspy.context(lm=lm, adapter=adapter):
        for draw in range(draws):
            if len(accepted) >= k:
                break
            config = {"seed": _seed("jointopt/propose", seed, draw)}
            if temperature > 0:
                config["rollout_id"] = draw
            try:
                text = predictor(task_description=description, examples=examples_text,
                                 config=config).instruction
            except AdapterParseError as exc:
                text = _salvage(exc.lm_response)
            cleaned, reason = _clean(text)
            if cleaned is not None and cleaned.casefold() in seen:
                cleaned, reason = None, "duplicate"
            if cleaned is None:
                rejected += 1
                log.debug("proposal draw %d rejected: %s", draw, reason)
                continue
            seen.add(cleaned.casefold())
            accepted.append(cleaned)
    usage = local.snapshot()
    if meter is not None:
        meter.add_counts(usage)
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
    instructions = tuple(accepted)
    templates = _templates(task, instructions, id_prefix, model_id, key)
    with _locked(path):
        entries = _read_cache(path)
        entries[key] = {"instructions": list(instructions), "usage": usage.to_dict(),
                        "rejected": rejected, "model": model_id,
                        "example_ids": material["example_ids"], "k": k, "seed": seed,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_cache(path, entries)
    return Proposals(templates=templates, proposer_tokens=usage.total_tokens, cache_hit=False,
                     instructions=instructions, usage=usage, model=model_id, key=key,
                     requested=k, rejected=rejected,
                     example_ids=tuple(material["example_ids"]))


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
            templates: Sequence[PromptTemplate] = proposals.templates
        else:
            try:
                templates = [PromptTemplate(**dict(data))]
            except TypeError as exc:
                raise ConfigError(f"invalid prompt template: {exc}", where=where,
                                  value=dict(data),
                                  fix="a template has id, user, and optionally system, shots, "
                                      "shot_answer, answer_regex, description") from None
            except JointoptError as exc:
                raise relocate(exc, f"{where}: ") from None
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
