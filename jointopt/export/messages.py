"""The policy's prompt as static exports show it: ``{{field}}`` placeholders for the input,
the demonstrations rendered, and the served model's name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.core.policy import Policy

if TYPE_CHECKING:
    from jointopt.tasks import Task

__all__ = ["base_allocation", "blank_example", "per_input_demos", "placeholder_messages",
           "served_name", "shown_demos", "to_mlflow_template"]


def served_name(model: str) -> str:
    """The model name clients send: a folder's base name, unsafe characters replaced."""
    path = Path(model)
    name = path.name if (model.startswith(("/", ".", "~")) or path.is_dir()) else model
    return re.sub(r"[^A-Za-z0-9_.:/-]", "-", name) or "model"


def base_allocation(policy: Policy) -> Any:
    """The allocation of the policy's default bin."""
    return policy.bins[policy.difficulty.default_bin]


_SIMPLE_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def to_mlflow_template(text: str) -> tuple[str, bool]:
    """Convert a Jinja2 template to MLflow's prompt format.

    ``{{ name }}`` becomes ``{{name}}``. A template with ``{% ... %}`` blocks is kept as
    it is (MLflow renders such templates with Jinja2 itself). Returns the text and
    whether the conversion is exact (False when an expression such as
    ``{{ x | upper }}`` remains, which MLflow's plain format cannot evaluate).
    """
    if "{%" in text:
        return text, True
    converted = _SIMPLE_VAR.sub(lambda m: "{{" + m.group(1) + "}}", text)
    leftover = re.sub(r"\{\{[A-Za-z_][A-Za-z0-9_]*\}\}", "", converted)
    return converted, "{{" not in leftover


def placeholder_messages(policy: Policy, task: "Task") -> tuple[list[dict[str, str]], bool]:
    """System, demo and user turns with ``{{var}}`` placeholders in the input turn."""
    from jointopt.core.prompts import render_messages

    prompt = policy.prompt
    messages: list[dict[str, str]] = []
    exact = True
    if prompt.system is not None:
        if prompt.variables().get("system"):
            text, ok = to_mlflow_template(prompt.system)
            exact &= ok
            messages.append({"role": "system", "content": text})
        else:
            messages.append({"role": "system",
                             "content": render_messages(prompt, task, blank_example(task))[0].content})
    rendered = render_messages(prompt, task, blank_example(task))
    start = 1 if prompt.system is not None else 0
    for m in rendered[start:-1]:
        messages.append({"role": m.role, "content": m.content})
    user, ok = to_mlflow_template(prompt.user)
    messages.append({"role": "user", "content": user})
    return messages, exact and ok


def shown_demos(policy: Policy, task: "Task") -> list[Any]:
    """The demos rendered for the placeholder input (what static exports show)."""
    try:
        from jointopt.core.prompts import select_demos
    except ImportError:  # older prompts module: always the first ``shots``
        return list(task.demos[: policy.prompt.shots])
    return select_demos(policy.prompt, task, blank_example(task))


def per_input_demos(policy: Policy) -> bool:
    """Whether the template selects its demonstrations per input."""
    return policy.prompt.shots > 0 and getattr(policy.prompt, "shot_selection", "first") != "first"


def blank_example(task: "Task") -> Any:
    """An example whose every field is its own ``{{field}}`` placeholder."""
    from jointopt.tasks import Example

    return Example(id="__export__", inputs={f: f"{{{{{f}}}}}" for f in task.fields}, target="")
