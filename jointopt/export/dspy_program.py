"""The DSPy export target: ``dspy_program.json``, a ``dspy.Predict`` state (instructions,
demos, LM settings). Skipped with a warning when DSPy is not installed or fails."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.core.policy import Policy
from jointopt.core.task_spec import template_inputs
from jointopt.export.base import ExportContext, Exporter, ExportSkipped
from jointopt.export.messages import base_allocation, blank_example, shown_demos

if TYPE_CHECKING:
    from jointopt.tasks import Task

__all__ = ["DSPyExporter", "write_dspy"]


class DSPyExporter(Exporter):
    """Writes ``dspy_program.json``."""

    name = "dspy"

    def write(self, context: ExportContext) -> dict[str, Path]:
        path = context.out_dir / "dspy_program.json"
        problem = write_dspy(context.policy, context.task, context.served_model_name, path)
        if problem:
            raise ExportSkipped(problem)
        return {"dspy": path}


def write_dspy(policy: Policy, task: "Task", served: str, path: Path) -> str | None:
    """Write a dspy.Predict state; returns a warning when DSPy is missing or fails."""
    from jointopt.backends.models import cache_dir

    os.environ.setdefault("DSPY_CACHEDIR", str(cache_dir() / "dspy"))
    try:
        import dspy
    except ImportError:
        return "DSPy is not installed: dspy_program.json was not written (pip install dspy)"
    from jointopt.core.prompts import render_messages

    inputs = list(template_inputs(policy))
    prompt = policy.prompt
    instructions = "\n\n".join(x for x in (
        (prompt.system or "").strip(),
        "User message template (Jinja2; the input fields fill it):\n" + prompt.user.strip(),
    ) if x)
    fields: dict[str, Any] = {name: (str, dspy.InputField()) for name in inputs}
    answer_name = "answer" if "answer" not in fields else "policy_answer"
    fields[answer_name] = (str, dspy.OutputField(desc=task.description or "the answer"))
    try:
        signature = dspy.Signature(fields, instructions)
        program = dspy.Predict(signature)
        rendered = render_messages(prompt, task, blank_example(task))
        answers = [m.content for m in rendered if m.role == "assistant"]
        program.demos = [
            dspy.Example(**{k: d.inputs[k] for k in inputs if k in d.inputs},
                         **{answer_name: a}).with_inputs(*inputs)
            for d, a in zip(shown_demos(policy, task), answers)
        ]
        base = base_allocation(policy)
        program.lm = dspy.LM(f"openai/{served}", temperature=base.temperature,
                             max_tokens=base.max_tokens)
        program.save(str(path))
    except Exception as exc:  # noqa: BLE001 - DSPy's own errors vary by version
        return f"DSPy export failed ({type(exc).__name__}: {exc}); dspy_program.json not written"
    return None
