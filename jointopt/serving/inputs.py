"""Request bodies of the policy proxy (chat and text completions) and how the policy's
input is read from them: the ``inputs`` field, or the last user message / the prompt."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from jointopt.serving.errors import HTTPError

if TYPE_CHECKING:
    from jointopt.serving.runtime import PolicyRunner

__all__ = ["ChatRequest", "CompletionRequest", "check_size", "ignored_fields",
           "include_usage", "inputs_from_text", "text_of"]

#: Request fields a policy proxy reads; every other sampling field is ignored.
_READ_FIELDS = frozenset({"model", "messages", "prompt", "inputs", "difficulty", "stream",
                          "n", "user", "stream_options"})


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """A ``POST /v1/chat/completions`` body."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    n: int | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    difficulty: str | int | None = None


class CompletionRequest(BaseModel):
    """A ``POST /v1/completions`` body."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | list[str]
    n: int | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    difficulty: str | int | None = None


def text_of(content: str | list[dict[str, Any]] | None) -> str | None:
    """The text of a message's content (its text parts joined), or None."""
    if content is None or isinstance(content, str):
        return content
    parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return "\n".join(parts) if parts else None


def inputs_from_text(runner: "PolicyRunner", text: str) -> dict[str, Any]:
    """The policy's input fields from a text: the one field, or a JSON object of them."""
    fields = runner.input_fields
    if len(fields) == 1:
        return {fields[0]: text}
    if not fields:
        return {}
    example = json.dumps({f: "..." for f in fields})
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise HTTPError(
            400,
            f"the policy's template reads the fields {', '.join(fields)}: send the user message as "
            f"a JSON object such as {example}, or pass the fields as `inputs` "
            f"(openai client: extra_body={{'inputs': {{...}}}})",
            "invalid_request_error",
        )
    return data


def check_size(inputs: Mapping[str, Any], limit: int) -> None:
    """Refuse (413) an input above ``limit`` characters over all its fields."""
    if not isinstance(inputs, Mapping):
        return  # the runner refuses it with a 400
    size = sum(len(v) if isinstance(v, str) else len(str(v)) for v in inputs.values())
    if size > limit:
        raise HTTPError(413, f"the input has {size} characters, above this proxy's limit of "
                             f"{limit} (max_input_chars); send a shorter input",
                        "invalid_request_error")


def ignored_fields(body: BaseModel) -> list[str]:
    """The request fields the proxy ignores (the policy decides sampling)."""
    extra = set((body.model_extra or {}).keys())
    return sorted(k for k in extra if k not in _READ_FIELDS)


def include_usage(body: ChatRequest | CompletionRequest) -> bool:
    """Check ``n`` and ``stream_options``; True when the stream should end with usage."""
    if body.n not in (None, 1):
        raise HTTPError(400, f"n={body.n}: the policy decides how many samples to draw and "
                             "returns one aggregated answer; send n=1 or leave it out",
                        "invalid_request_error")
    options = body.stream_options or {}
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        raise HTTPError(400, f"stream_options.include_usage must be true or false, got "
                             f"{usage!r}", "invalid_request_error")
    return usage
