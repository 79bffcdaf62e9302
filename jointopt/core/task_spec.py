"""The task section of a policy file: what the runtime needs to read answers.

A policy file carries, under ``metadata.task``, the input fields, extractor, matcher,
few-shot demos and (as ``"module:function"``) the serve-time verifier of the task it was
tuned on. :func:`task_spec` writes that section; :func:`task_from_spec` builds a
:class:`~jointopt.tasks.Task` from it (verifiers only from an allow-list).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from jointopt.core.policy import Policy
from jointopt.errors import ConfigError
from jointopt.tasks import AnswerExtractor, AnswerMatcher, Example, Task

__all__ = ["task_from_spec", "task_spec", "template_inputs"]

log = logging.getLogger(__name__)


def template_inputs(policy: Policy) -> tuple[str, ...]:
    """The input fields the policy's template reads (what every input must provide)."""
    used: set[str] = set()
    for part, names in policy.prompt.variables().items():
        used |= names - ({"target"} if part == "shot_answer" else set())
    return tuple(sorted(used))


def _callable_path(fn: Any) -> str | None:
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not name or "<" in name or module == "__main__":
        return None
    try:
        target: Any = importlib.import_module(module)
        for part in name.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{name}" if target is fn else None


def task_spec(task: Task, prompt: Any) -> dict[str, Any]:
    """The ``metadata.task`` section of a policy file for ``task``.

    Args:
        task: the task the policy was tuned on.
        prompt: the policy's :class:`PromptTemplate` (or its number of shots). A template
            that always shows the first ``shots`` demonstrations keeps only those; one that
            selects demonstrations per input (``shot_selection`` other than ``first``)
            keeps the whole pool.

    The verifier is recorded as ``"module:function"`` when it can be imported back.
    """
    if isinstance(prompt, int):
        keep: int | None = prompt
    else:
        selection = getattr(prompt, "shot_selection", "first")
        keep = prompt.shots if selection == "first" else None
    extractor: dict[str, Any] = {"kind": task.extractor.kind}
    if task.extractor.pattern is not None:
        extractor["pattern"] = task.extractor.pattern
        extractor["group"] = task.extractor.group
    verifier = _callable_path(task.verifier) if task.verifier is not None else None
    if task.verifier is not None and verifier is None:
        log.warning("the verifier of task %r is not an importable module-level function; the "
                    "policy file will not carry it", task.name)
    return {
        "name": task.name,
        "description": task.description,
        "fields": list(task.fields),
        "extractor": extractor,
        "matcher": {"kind": task.matcher.kind, "tolerance": task.matcher.tolerance},
        "verifier": verifier,
        "demos": [d.to_dict() for d in (task.demos if keep is None else task.demos[:keep])],
    }


def task_from_spec(spec: Mapping[str, Any], where: str = "metadata.task", *,
                   allow_verifiers: Sequence[str] = ()) -> Task:
    """Build the :class:`Task` a runner reads answers with, from a ``metadata.task`` section.

    The task has no evaluation examples; its fields, demos, extractor, matcher and
    (importable) verifier are the ones the policy was tuned with. The verifier is imported
    only from jointopt's own modules or the modules in ``allow_verifiers`` (see
    :func:`jointopt.tasks.verifiers.resolve_verifier`).

    Raises:
        ConfigError: a missing key, or a verifier outside the allow-list.
    """
    from jointopt.tasks.verifiers import resolve_verifier
    try:
        ext = dict(spec["extractor"])
        match = dict(spec["matcher"])
        demos = tuple(
            Example(id=d["id"], inputs=d["inputs"], target=d["target"],
                    difficulty=d.get("difficulty"))
            for d in spec.get("demos", ())
        )
        verifier = (resolve_verifier(spec["verifier"], allow_verifiers,
                                     where=f"{where}.verifier")
                    if spec.get("verifier") else None)
        return Task(
            name=spec.get("name", "policy"),
            description=spec.get("description", ""),
            fields=tuple(spec["fields"]),
            examples=(),
            demos=demos,
            extractor=AnswerExtractor(kind=ext["kind"], pattern=ext.get("pattern"),
                                      group=ext.get("group", 1)),
            matcher=AnswerMatcher(kind=match["kind"], tolerance=match.get("tolerance", 1e-6)),
            verifier=verifier,
        )
    except KeyError as exc:
        raise ConfigError(f"the task section lacks {exc.args[0]!r}", where=where,
                          fix="re-export the policy with `jointopt export`") from None
