"""Pre-flight: every thinking budget a study or a policy can choose fits the model's context.

A thinking request fills the prompt, the thought (up to the budget), the markers and the
answer cue, continue cues when ``min`` > 0, and the answer
(:meth:`~jointopt.core.thinking.ThinkingSpec.context_tokens`). That sum, for the largest
budget and ``max_tokens`` a bin can choose and the longest prompt, must fit the model's
``max_model_len``; otherwise the engine refuses (or cuts) requests mid-study. Checked
before any compute, by ``plan_study`` (so ``jointopt validate``, ``run``, ``export``), and
for a policy file by ``jointopt.serving.runtime.load_policy`` when it starts an engine with
a given ``max_model_len``.

The context is ``model.max_model_len`` (the length the vLLM engine is started with),
lowered to the model's own ``max_position_embeddings`` when its ``config.json`` is at
hand. A backend that loads no model (a server) is checked only when the config sets
``model.max_model_len`` (the server's context is otherwise unknown); a replay bank is
never checked (it generates nothing).

Prompt length: the longest rendered prompt (system, demonstrations, question) among the
:data:`LONGEST_EXAMPLES` examples with the longest inputs, per template, counted with the
model's ``tokenizer.json`` when it is there (the ``tokenizers`` package), otherwise
estimated as characters / :data:`CHARS_PER_TOKEN`, rounded up; both plus
:data:`TEMPLATE_TOKENS` per message for the chat template. The estimate is rough (digits
and rare words take more tokens): leave room.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from jointopt.backends.vllm_outputs import THINKING_OVERSHOOT
from jointopt.core.thinking import ThinkingSpec
from jointopt.core.thinking_forcing import MAX_EXTENSIONS
from jointopt.errors import ConfigError

if TYPE_CHECKING:
    from jointopt.core.policy import Policy
    from jointopt.core.prompts import PromptTemplate
    from jointopt.search.config import StudyConfig
    from jointopt.search.space import SearchSpace
    from jointopt.tasks import Task

__all__ = ["CHARS_PER_TOKEN", "LONGEST_EXAMPLES", "TEMPLATE_TOKENS", "check_policy_fits",
           "check_space_fits", "context_limit", "token_counter"]

log = logging.getLogger(__name__)

#: Characters per token of the estimate used without a tokenizer.
CHARS_PER_TOKEN = 4
#: Tokens a chat template adds per message (role markers, separators), on top of its text.
TEMPLATE_TOKENS = 8
#: Examples with the longest inputs rendered per template to find the longest prompt.
LONGEST_EXAMPLES = 16

Count = Callable[[str], int]


def _estimate(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def token_counter(model_dir: str | Path | None) -> tuple[Count, str]:
    """A token counter for texts and how it counts: the model's ``tokenizer.json`` when the
    folder has one, else the characters / :data:`CHARS_PER_TOKEN` estimate."""
    path = Path(model_dir) / "tokenizer.json" if model_dir else None
    if path is not None and path.is_file():
        try:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - an unreadable tokenizer: estimate instead
            log.debug("cannot read %s (%s); estimating tokens from characters", path, exc)
        else:
            return (lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
                    if text else 0), f"counted with {path.name}"
    return _estimate, f"estimated as characters/{CHARS_PER_TOKEN}"


def context_limit(max_model_len: int, model_dir: str | Path | None) -> tuple[int, str]:
    """The context a request may fill and the sentence that says where it comes from."""
    config = Path(model_dir) / "config.json" if model_dir else None
    if config is not None and config.is_file():
        try:
            own = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
        except (OSError, ValueError, AttributeError):
            own = None
        if isinstance(own, int) and 0 < own < max_model_len:
            return own, (f"model.max_model_len = {max_model_len}, lowered to the model's "
                         f"max_position_embeddings = {own}")
    return max_model_len, f"model.max_model_len = {max_model_len}"


def longest_prompt(templates: Iterable["PromptTemplate"], task: "Task",
                   count: Count) -> tuple[int, str]:
    """Tokens of the longest rendered prompt and the id of its template."""
    from jointopt.core.prompts import render_messages

    examples = sorted(task.examples, key=lambda ex: -sum(len(str(v))
                                                          for v in ex.inputs.values()))
    best, where = 0, ""
    for template in templates:
        for example in examples[:LONGEST_EXAMPLES]:
            messages = render_messages(template, task, example)
            tokens = sum(count(m.content) + TEMPLATE_TOKENS for m in messages)
            if tokens > best:
                best, where = tokens, template.id
    return best, where


def _check(spec: ThinkingSpec, max_tokens: int, prompt: int, count: Count, limit: int,
           limit_text: str, where: str, what: str) -> None:
    need = spec.context_tokens(prompt, max_tokens, count, extensions=MAX_EXTENSIONS,
                               overshoot=THINKING_OVERSHOOT)
    if need <= limit:
        return
    room = limit - (need - spec.budget)
    fix = (f"lower the thinking budget to at most {room}" if room > 0 else
           "shorten the prompt or lower the answer cap") + \
        f", or raise model.max_model_len to at least {need}"
    raise ConfigError(
        f"thinking budget {spec.budget} does not fit the model's context in {what}: "
        f"{f'prompt ~{prompt}' if prompt else 'prompt (not known here)'} + thought "
        f"{spec.budget} + markers and cues + answer cap "
        f"{spec.answer_cap(max_tokens)} = {need} tokens, above {limit_text}",
        where=where, value=spec.budget, fix=fix)


def check_space_fits(config: "StudyConfig", space: "SearchSpace", task: "Task",
                     model_dir: str | Path | None) -> None:
    """Every thinking budget of ``space`` fits the context of ``config``'s model.

    Raises:
        ConfigError: naming the bin, the budget, the context and the fix.
    """
    if space.thinking is None or not _checked(config):
        return
    count, how = token_counter(model_dir)
    limit, limit_text = context_limit(config.model.max_model_len, model_dir)
    prompt, template = longest_prompt(space.prompts, task, count)
    bins = space.difficulty.bins or (space.difficulty.default_bin,)
    budgets = sorted({int(v) for v in space.thinking.budget.extremes()}, reverse=True)
    max_tokens = max(int(v) for v in space.max_tokens.extremes())
    log.debug("longest prompt: %d tokens (template %r, %s)", prompt, template, how)
    for budget in budgets:
        spec = ThinkingSpec(budget=budget, **dict(space.thinking.settings))
        _check(spec, max_tokens, prompt, count, limit, limit_text,
               f"{space.source}: thinking_budget",
               f"bin {bins[0]!r}{' (and every other bin)' if len(bins) > 1 else ''}, "
               f"with max_tokens {max_tokens} and prompt {template!r} ({how})")


def check_policy_fits(policy: "Policy", task: "Task", max_model_len: int,
                      model_dir: str | Path | None = None, source: str = "policy") -> None:
    """Every thinking bin of ``policy`` fits ``max_model_len`` (see the module docstring).
    A task without examples (a served policy: the inputs come later) counts the prompt as
    0 tokens, so only the thought, the cues and the answer cap are checked.

    Raises:
        ConfigError: naming the bin, the budget, the context and the fix.
    """
    thinking = {name: a for name, a in policy.bins.items() if a.thinks}
    if not thinking:
        return
    count, how = token_counter(model_dir)
    limit, limit_text = context_limit(max_model_len, model_dir)
    prompt, _ = longest_prompt([policy.prompt], task, count)
    for name, allocation in thinking.items():
        _check(allocation.thinking, allocation.max_tokens, prompt, count, limit, limit_text,
               f"{source}: bins.{name}.thinking.budget",
               f"bin {name!r} ({how})")


def _checked(config: "StudyConfig") -> bool:
    """Whether the context of ``config``'s model is known (module docstring)."""
    from jointopt.backends import backend_class

    cls = backend_class(config.model.backend)
    if "bank" in cls.settings_keys:
        return False
    return cls.loads_model or "max_model_len" in config.model.model_fields_set

