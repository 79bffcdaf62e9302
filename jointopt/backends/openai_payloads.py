"""OpenAI chat-completion payloads: the request body sent for a generation request, and
the completions, token counts and logprobs read back from a response (see
:mod:`jointopt.backends.openai` for the token accounting rules)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from jointopt.core.generation import Completion, GenerationRequest
from jointopt.errors import BackendError
from jointopt.backends.openai_http import UpstreamError

log = logging.getLogger("jointopt.backends.openai")


def chat_body(request: GenerationRequest, model: str, *, n: int | None, send_seed: bool,
              token_ids: bool, continuation: str,
              extra_body: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of ``POST /chat/completions`` for ``request`` (``n`` overrides
    ``request.n``)."""
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "n": request.n if n is None else n,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
        "logprobs": bool(request.logprobs),
    }
    if request.logprobs:
        body["top_logprobs"] = 0
    if request.stop:
        body["stop"] = list(request.stop)
    if send_seed and request.seed is not None:
        body["seed"] = int(request.seed)
    if token_ids:
        body["return_token_ids"] = True
    if request.continuation:
        if continuation == "error":
            raise BackendError(
                "this backend is configured to refuse continuation requests",
                where="GenerationRequest.continuation", value=request.continuation[:80],
                fix="use continuation='prefill' with a server that supports "
                    "continue_final_message (vLLM, SGLang)")
        messages.append({"role": "assistant", "content": request.continuation})
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    body.update(extra_body)
    return body



def split_tokens(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder; sums to ``total``)."""
    if not weights:
        return []
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    scale = sum(weights)
    raw = [total * w / scale for w in weights]
    out = [int(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (out[i] - raw[i], i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def parse_chat_completion(request: GenerationRequest, data: Any, url: str,
                          warned: set[str]) -> tuple[list[Completion], int]:
    """The completions and prompt tokens of one chat-completion response to ``request``.

    ``warned`` holds the one-time warnings already logged (updated in place).
    """
    try:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        usage = data.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        if prompt_tokens is None and data.get("prompt_token_ids") is not None:
            prompt_tokens = len(data["prompt_token_ids"])
        if prompt_tokens is None:
            raise UpstreamError(
                "the response has no usage.prompt_tokens, so its cost cannot be counted",
                kind="protocol", url=url,
                fix="use a server that reports usage (vLLM, llama.cpp, OpenAI do)")
        texts, counts, ids, logprobs, finishes = [], [], [], [], []
        for choice in choices:
            message = choice.get("message") or {}
            text = message.get("content") or ""
            texts.append(text)
            finishes.append("length" if choice.get("finish_reason") == "length" else "stop")
            content = (choice.get("logprobs") or {}).get("content")
            token_ids = choice.get("token_ids")
            if token_ids is not None:
                ids.append(tuple(int(t) for t in token_ids))
                counts.append(len(token_ids))
            elif content is not None:
                ids.append(None)
                counts.append(len(content))
            else:
                ids.append(None)
                counts.append(None)
            if request.logprobs and content is not None:
                logprobs.append(tuple(float(e["logprob"]) for e in content))
            else:
                logprobs.append(None)
    except UpstreamError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamError(f"the response is not an OpenAI chat completion ({exc!r})",
                            kind="protocol", url=url,
                            fix="check that the URL points at an OpenAI-compatible API"
                            ) from None
    unknown = [i for i, c in enumerate(counts) if c is None]
    if unknown:
        known = sum(c for c in counts if c is not None)
        total = usage.get("completion_tokens")
        if total is None:
            raise UpstreamError("the response has no usage.completion_tokens",
                                kind="protocol", url=url,
                                fix="use a server that reports usage")
        shares = split_tokens(max(int(total) - known, 0), [len(texts[i]) for i in unknown])
        for i, share in zip(unknown, shares):
            counts[i] = share
        if "split" not in warned:
            warned.add("split")
            log.info("the server returned neither token ids nor logprobs: completion "
                     "tokens are usage.completion_tokens split across the choices")
    if request.logprobs and any(lp is None for lp in logprobs) and "lp" not in warned:
        warned.add("lp")
        log.warning("the server returned no logprobs although they were asked for")
    completions = [
        Completion(
            text=text,
            token_ids=tid if tid is not None else (-1,) * int(count or 0),
            finish_reason=finish,
            logprobs=lp if lp is not None and len(lp) == int(count or 0) else None,
        )
        for text, count, tid, lp, finish in zip(texts, counts, ids, logprobs, finishes)
    ]
    return completions, int(prompt_tokens)
