"""Prompt templates: definition, validation against a task, safe rendering.

Templates are Jinja2 text rendered in a sandbox (no access to Python internals) with
strict undefined variables. Every variable a template uses is checked against the task's
input fields *before* any generation, so a typo fails fast with the field list.
"""

from __future__ import annotations

import contextvars
import difflib
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from jointopt.errors import TemplateError
from jointopt.core.generation import ChatMessage

if TYPE_CHECKING:
    from jointopt.tasks import Example, Task

__all__ = ["PromptTemplate", "UNRECORDED_PROMPT", "check_template_safety", "render_messages",
           "select_demos", "validate_template"]

#: The user text of a prompt known by its id only (a bank imported without prompt texts):
#: a study can be optimised over it, a policy that uses it cannot be served or exported.
UNRECORDED_PROMPT = "(prompt text not recorded in the bank)"


#: Longest string or list a template expression may build with ``*`` (a guard against
#: templates that exhaust memory, e.g. ``{{ 'a' * 10**9 }}``).
MAX_EXPRESSION_SIZE = 100_000


#: Loop iterations (and other scope entries) one render may take (a guard against
#: templates that never finish, e.g. nested loops over ``range(100000)``).
MAX_TEMPLATE_STEPS = 100_000
_STEPS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "jointopt_template_steps", default=None)


class _CountingCodeGenerator(CodeGenerator):
    """Compiles every loop body (and every other scope) to start with a step count."""

    def enter_frame(self, frame: Any) -> None:
        super().enter_frame(frame)
        self.writeline("environment.step()")


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, plus bounded ``*``, ``**`` and loop iterations."""

    intercepted_binops = frozenset(["*", "**"])
    code_generator_class = _CountingCodeGenerator

    @staticmethod
    def step() -> None:
        """Count one step of the current render; refuse once the budget is spent."""
        budget = _STEPS.get()
        if budget is None:
            return
        budget[0] -= 1
        if budget[0] < 0:
            raise SecurityError(f"the template ran more than {MAX_TEMPLATE_STEPS} loop "
                                "iterations")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if not isinstance(right, (int, float)) or abs(right) > 64:
                raise SecurityError(f"exponent {right!r} is too large for a template")
        else:
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) \
                        and len(seq) * times > MAX_EXPRESSION_SIZE:
                    raise SecurityError(
                        f"the expression would build {len(seq) * times} items; templates may "
                        f"build at most {MAX_EXPRESSION_SIZE}")
        return super().call_binop(context, operator, left, right)


def _environment() -> jinja2.Environment:
    return _Sandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )


@dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt with optional few-shot demonstrations.

    Attributes:
        id: short unique name, shown in trial parameters and policy files.
        user: Jinja2 text of the user turn; variables are the task's input fields.
        system: optional Jinja2 text of the system turn.
        shots: number of demonstrations taken, in order, from the task's demo pool; each
            becomes a user turn (``user`` rendered with the demo's inputs) followed by an
            assistant turn (``shot_answer`` rendered with the demo's inputs and ``target``).
        shot_answer: Jinja2 text of a demonstration's answer turn.
        answer_regex: when set, answers are read from the first capture group of this
            pattern before falling back to the task's own extraction (for templates that
            ask for a strict format such as ``Answer: <x>``).
        shot_selection: ``first`` takes the first ``shots`` demos of the pool for every
            input; ``nearest`` takes the demos whose inputs are closest in length to the
            input's (word count), the closest shown last. Small models copy the shape of
            the last demonstration, so similar demonstrations help them; the choice uses
            only the input, so it works the same at serve time.
        description: what the template does, for humans.
    """

    id: str
    user: str
    system: str | None = None
    shots: int = 0
    shot_answer: str = "{{ target }}"
    answer_regex: str | None = None
    shot_selection: Literal["first", "nearest"] = "first"
    description: str = ""
    _env: jinja2.Environment = field(
        default_factory=_environment, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        where = f"prompt {self.id!r}"
        if not self.id or not self.id.replace("_", "").replace("-", "").isalnum():
            raise TemplateError(
                "template id must be a non-empty name of letters, digits, '_' or '-'",
                where="prompts[].id",
                value=self.id,
                fix="use a short name such as 'fewshot_3'",
            )
        if self.shot_selection not in ("first", "nearest"):
            raise TemplateError(
                "unknown shot selection", where=f"{where}.shot_selection",
                value=self.shot_selection, fix="use 'first' or 'nearest'",
            )
        if self.shots < 0:
            raise TemplateError(
                "`shots` must be >= 0", where=f"{where}.shots", value=self.shots,
                fix="use 0 for no demonstrations",
            )
        for part, text in self._texts().items():
            try:
                self._env.parse(text)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(
                    f"template syntax error: {exc.message} (line {exc.lineno})",
                    where=f"{where}.{part}",
                    value=text,
                    fix="fix the Jinja2 syntax; variables are written {{ name }}",
                ) from None

    def _texts(self) -> dict[str, str]:
        texts = {"user": self.user}
        if self.system is not None:
            texts["system"] = self.system
        if self.shots:
            texts["shot_answer"] = self.shot_answer
        return texts

    @cached_property
    def _compiled(self) -> dict[str, jinja2.Template]:
        return {k: self._env.from_string(v) for k, v in self._texts().items()}

    def variables(self) -> dict[str, set[str]]:
        """Variables each part of the template uses."""
        return {
            part: set(meta.find_undeclared_variables(self._env.parse(text)))
            for part, text in self._texts().items()
        }

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "user": self.user}
        if self.system is not None:
            out["system"] = self.system
        if self.shots:
            out["shots"] = self.shots
            out["shot_answer"] = self.shot_answer
            if self.shot_selection != "first":
                out["shot_selection"] = self.shot_selection
        if self.answer_regex:
            out["answer_regex"] = self.answer_regex
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PromptTemplate":
        return cls(**data)

    def _render(self, part: str, variables: dict[str, Any]) -> str:
        token = _STEPS.set([MAX_TEMPLATE_STEPS])
        try:
            return self._compiled[part].render(**variables).strip()
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(
                f"template tried an unsafe operation: {exc}",
                where=f"prompt {self.id!r}.{part}",
                fix="templates may only use the task's fields and simple filters",
            ) from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(
                f"template variable is undefined: {exc.message}",
                where=f"prompt {self.id!r}.{part}",
                fix="use only the task's input fields",
            ) from None
        except (OverflowError, TypeError, ValueError, ArithmeticError) as exc:
            # e.g. the sandbox's "Range too big", or an operation on the wrong type
            raise TemplateError(
                f"template failed to render: {type(exc).__name__}: {exc}",
                where=f"prompt {self.id!r}.{part}",
                fix="templates may only use the task's fields and simple filters",
            ) from None
        finally:
            _STEPS.reset(token)


def validate_template(template: PromptTemplate, task: "Task") -> None:
    """Check a template against a task before any compute.

    Raises :class:`TemplateError` naming the template, the unknown variable, the fields
    that exist, and the closest match.
    """
    _check_no_loading(template)
    fields = set(task.fields)
    for part, used in template.variables().items():
        allowed = fields | ({"target"} if part == "shot_answer" else set())
        for name in sorted(used - allowed):
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            hint = f"did you mean {{{{ {close[0]} }}}}? " if close else ""
            raise TemplateError(
                f"template variable {name!r} is not a field of task {task.name!r}",
                where=f"prompt {template.id!r}.{part}",
                value=name,
                fix=f"{hint}available fields: {', '.join(sorted(allowed))}",
            )
    if template.shots > len(task.demos):
        raise TemplateError(
            f"template asks for {template.shots} demonstrations but task {task.name!r} "
            f"has {len(task.demos)}",
            where=f"prompt {template.id!r}.shots",
            value=template.shots,
            fix="lower `shots`, or give the dataset a demos file (task.dataset.demos)",
        )
    # Render once on a real example so filters and syntax fail here, not mid-study.
    if task.examples:
        render_messages(template, task, task.examples[0])


def _check_no_loading(template: PromptTemplate) -> None:
    """Templates have no loader: ``include``/``import``/``extends`` (file reads) would only
    fail when rendered, with a TypeError; refuse them by name instead."""
    for part, text in template._texts().items():
        tree = template._env.parse(text)
        for node in tree.find_all((nodes.Include, nodes.Import, nodes.FromImport,
                                   nodes.Extends)):
            tag = {"Include": "include", "Import": "import", "FromImport": "from ... import",
                   "Extends": "extends"}[type(node).__name__]
            raise TemplateError(
                f"templates may not load other templates or files ({{% {tag} %}}, "
                f"line {node.lineno})",
                where=f"prompt {template.id!r}.{part}",
                value=text,
                fix="write the text into the template itself; its variables are the task's "
                    "fields",
            )


def _unsafe_name(node: nodes.Node) -> str | None:
    """The ``_private`` attribute a node reads (``x.__class__``, ``x['__class__']``,
    ``x | attr('__class__')``), else None."""
    if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
            and isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
        return node.arg.value
    if isinstance(node, nodes.Filter) and node.name == "attr":
        for arg in node.args:
            if isinstance(arg, nodes.Const) and isinstance(arg.value, str) \
                    and arg.value.startswith("_"):
                return arg.value
    return None


def check_template_safety(template: PromptTemplate,
                          samples: "list[dict[str, Any]] | None" = None) -> None:
    """Refuse a template that reaches for Python internals or files, before it serves.

    Three checks, in the sandbox: no ``include``/``import``/``extends``; no ``_private``
    attribute (``{{ ''.__class__ }}``, ``x['__globals__']``, ``attr('_x')``); and a render
    of every part with each of ``samples`` (variables, e.g. the policy's demonstrations;
    ``shot_answer`` also gets ``target``). When no samples are given every variable is
    the placeholder ``"x"``, and only an unsafe operation fails (a placeholder may not
    suit a template written for real inputs).

    Raises:
        TemplateError: naming the part, the rule and the fix.
    """
    _check_no_loading(template)
    for part, text in template._texts().items():
        for node in template._env.parse(text).find_all((nodes.Getattr, nodes.Getitem,
                                                        nodes.Filter)):
            name = _unsafe_name(node)
            if name is not None:
                raise TemplateError(
                    f"templates may not read private attributes ({name!r}, line "
                    f"{node.lineno}): the sandbox refuses them on every request",
                    where=f"prompt {template.id!r}.{part}", value=text,
                    fix="use only the task's fields and simple filters, e.g. "
                        "{{ question | trim }}")
    real = bool(samples)
    variables = template.variables()
    for sample in samples or [{}]:
        for part in variables:
            values = {name: "x" for name in variables[part]} if not real else dict(sample)
            values.setdefault("target", "x")
            try:
                template._compiled[part].render(**values)
            except SecurityError as exc:
                raise TemplateError(
                    f"template tried an unsafe operation: {exc}",
                    where=f"prompt {template.id!r}.{part}", value=template._texts()[part],
                    fix="templates may only use the task's fields and simple filters",
                ) from None
            except Exception as exc:  # noqa: BLE001 - any render failure on real inputs
                if real:
                    raise TemplateError(
                        f"template failed to render a demonstration: "
                        f"{type(exc).__name__}: {exc}",
                        where=f"prompt {template.id!r}.{part}",
                        value=template._texts()[part],
                        fix="templates may only use the task's fields and simple filters",
                    ) from None


def _size(example: "Example", fields: set[str]) -> int:
    return sum(len(example.inputs[f].split()) for f in sorted(fields) if f in example.inputs)


def select_demos(template: PromptTemplate, task: "Task", example: "Example") -> list["Example"]:
    """The demonstrations shown before ``example``, in the order they are shown."""
    if template.shots == 0:
        return []
    if template.shot_selection == "first":
        return list(task.demos[: template.shots])
    # Only the fields the template shows count, so serving needs no other input.
    fields = template.variables()["user"]
    size = _size(example, fields)
    ranked = sorted(range(len(task.demos)),
                    key=lambda i: (abs(_size(task.demos[i], fields) - size), i))[: template.shots]
    return [task.demos[i] for i in reversed(ranked)]


def render_messages(
    template: PromptTemplate, task: "Task", example: "Example"
) -> tuple[ChatMessage, ...]:
    """Render the chat prompt of one example."""
    messages: list[ChatMessage] = []
    if template.system is not None:
        messages.append(ChatMessage("system", template._render("system", dict(example.inputs))))
    for demo in select_demos(template, task, example):
        demo_vars = dict(demo.inputs)
        messages.append(ChatMessage("user", template._render("user", demo_vars)))
        demo_vars["target"] = demo.target
        messages.append(ChatMessage("assistant", template._render("shot_answer", demo_vars)))
    messages.append(ChatMessage("user", template._render("user", dict(example.inputs))))
    return tuple(messages)
