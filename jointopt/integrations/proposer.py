"""The proposer: its prompt (a DSPy signature: task description + solved examples ->
instruction), its draws, the cleaning of its replies, and the templates made from them."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from jointopt.core.seeds import stable_seed
from jointopt.backends.base import Backend
from jointopt.core.prompts import PromptTemplate, validate_template
from jointopt.integrations.dspy_lm import make_dspy_lm
from jointopt.integrations.token_meter import TokenMeter
from jointopt.tasks import Example, Task

import dspy  # noqa: E402,I001  (dspy_lm sets DSPY_CACHEDIR before the first import)
from dspy.utils.exceptions import AdapterParseError  # noqa: E402

log = logging.getLogger(__name__)

#: Bumped whenever the proposer's prompt or cleaning rules change (part of cache keys).
PROPOSER_VERSION = 1
#: Shortest and longest instruction accepted (characters).
MIN_CHARS, MAX_CHARS = 12, 1200


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


def _draw(task: Task, lm_backend: Backend, local: TokenMeter, chosen: Sequence[Example], k: int,
          seed: int, temperature: float, max_tokens: int, draws: int) -> tuple[list[str], int]:
    """Draw proposals until ``k`` are accepted or ``draws`` are spent; (accepted, rejected)."""
    lm = make_dspy_lm(lm_backend, local, temperature=float(temperature), max_tokens=int(max_tokens))
    predictor = dspy.Predict(ProposeInstruction)
    adapter = dspy.ChatAdapter(use_json_adapter_fallback=False)
    description = task.description.strip() or f"The task {task.name!r}."
    examples_text = _examples_text(task, chosen)
    accepted: list[str] = []
    seen: set[str] = set()
    rejected = 0
    with dspy.context(lm=lm, adapter=adapter):
        for draw in range(draws):
            if len(accepted) >= k:
                break
            config = {"seed": stable_seed("jointopt/propose", seed, draw)}
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
    return accepted, rejected
