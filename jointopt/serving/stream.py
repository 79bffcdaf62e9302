"""Server-sent events in OpenAI's streaming format, for the policy proxy.

A policy's answer exists only once its last generation is aggregated, so the proxy
decides the answer first and then streams it: a first chunk with the role, one chunk
with the content, a final chunk with ``finish_reason``, and, when the request asked for
``stream_options: {include_usage: true}``, a last chunk with empty ``choices`` and the
policy's whole ``usage`` (every token of every upstream call), then ``data: [DONE]``.
An error before the answer is decided is an ordinary JSON error with its status code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from fastapi.responses import StreamingResponse

__all__ = ["chat_chunks", "completion_chunks", "event_stream"]


def _event(data: Mapping[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode("utf-8")


def chat_chunks(*, id: str, created: int, model: str, content: str,
                usage: Mapping[str, int], include_usage: bool,
                extension: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of one answer (``jointopt`` extension on the
    chunk with ``finish_reason``)."""
    base = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model}
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                     "finish_reason": finish}], **extra}

    chunks = [chunk({"role": "assistant", "content": ""}, None)]
    if content:
        chunks.append(chunk({"content": content}, None))
    chunks.append(chunk({}, "stop", jointopt=dict(extension)))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": dict(usage)})
    return chunks


def completion_chunks(*, id: str, created: int, model: str, content: str,
                      usage: Mapping[str, int], include_usage: bool,
                      extension: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The streamed ``text_completion`` objects of one answer."""
    base = {"id": id, "object": "text_completion", "created": created, "model": model}
    if include_usage:
        base["usage"] = None

    def chunk(text: str, finish: str | None, **extra: Any) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "text": text, "logprobs": None,
                                     "finish_reason": finish}], **extra}

    chunks = [chunk(content, None)] if content else []
    chunks.append(chunk("", "stop", jointopt=dict(extension)))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": dict(usage)})
    return chunks


def event_stream(chunks: list[dict[str, Any]], headers: Mapping[str, str] | None = None
                 ) -> StreamingResponse:
    """A ``text/event-stream`` response sending ``chunks`` then ``data: [DONE]``."""

    def events() -> Iterator[bytes]:
        for chunk in chunks:
            yield _event(chunk)
        yield _event("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", **dict(headers or {})})
