"""The OpenAI presets export target: ``openai_presets.json`` holds, per difficulty bin, the
OpenAI request (model, messages with the system turn and few-shot turns rendered,
temperature, max_tokens, n, logprobs) and how its choices are aggregated; for a bin that
thinks, the request under vLLM's ``thinking_token_budget`` and the two requests of budget
forcing (for servers without it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.core.policy import Policy
from jointopt.core.task_spec import template_inputs
from jointopt.export.base import ExportContext, Exporter
from jointopt.export.messages import per_input_demos, placeholder_messages

if TYPE_CHECKING:
    from jointopt.tasks import Task

__all__ = ["OpenAIPresetsExporter", "presets", "thinking_requests"]


class OpenAIPresetsExporter(Exporter):
    """Writes ``openai_presets.json``."""

    name = "openai_presets"

    def write(self, context: ExportContext) -> dict[str, Path]:
        path = context.out_dir / "openai_presets.json"
        path.write_text(json.dumps(presets(context.policy, context.task,
                                           context.served_model_name),
                                   indent=2, ensure_ascii=False) + "\n", "utf-8")
        return {"openai_presets": path}


def presets(policy: Policy, task: "Task", served: str) -> dict[str, Any]:
    """The content of ``openai_presets.json``."""
    from jointopt.strategies import make_strategy

    messages, exact = placeholder_messages(policy, task)
    bins: dict[str, Any] = {}
    for name, alloc in policy.bins.items():
        strategy = make_strategy(alloc.strategy, dict(alloc.params))
        k = strategy.pool_k()
        doc = (type(strategy).__doc__ or "").strip().splitlines()
        entry: dict[str, Any] = {
            "strategy": alloc.strategy,
            "params": dict(alloc.params),
            "aggregation": doc[0] if doc else alloc.strategy,
            "one_request": k is not None,
            "request": {
                "model": served,
                "messages": messages,
                "temperature": alloc.temperature,
                "top_p": 1.0,
                "max_tokens": alloc.max_tokens,
                "n": k if k is not None else 1,
                "logprobs": True,
                "top_logprobs": 0,
            },
        }
        if alloc.thinks:
            entry["thinking"] = thinking_requests(alloc, entry["request"])
        if k is None:
            entry["note"] = ("this strategy makes several dependent requests (revisions, "
                             "tree search); the request shown is its first one. Run it with "
                             "`jointopt serve`.")
        if per_input_demos(policy):
            entry["demos_note"] = (
                f"the template selects its demonstrations per input "
                f"(shot_selection={policy.prompt.shot_selection!r}); the messages show the "
                "selection for an input of the placeholders' length. `jointopt serve` selects "
                "them per input from the demo pool in policy.yaml.")
        bins[name] = entry
    return {
        "model": served,
        "base_url": "http://127.0.0.1:8000/v1",
        "policy": policy.prompt.id,
        "input_fields": list(template_inputs(policy)),
        "user_template": policy.prompt.user,
        "placeholders_exact": exact,
        "demos_depend_on_input": per_input_demos(policy),
        "difficulty": policy.difficulty.to_dict(),
        "answer_extraction": {
            "answer_regex": policy.prompt.answer_regex,
            "extractor": policy.metadata.get("task", {}).get("extractor"),
            "matcher": policy.metadata.get("task", {}).get("matcher"),
        },
        "bins": bins,
        "how_to_use": (
            "Replace each {{field}} in the last message with the input's text and send the "
            "request of the input's bin to POST {base_url}/chat/completions; extract an answer "
            "from every choice (answer_regex, then the extractor) and aggregate the choices "
            "as the strategy says. `jointopt serve` does all of this for you."),
    }


def thinking_requests(alloc: Any, request: dict[str, Any]) -> dict[str, Any]:
    """A thinking bin's requests: ``engine`` sends vLLM's ``thinking_token_budget`` (its
    server needs the reasoning config of ``vllm_serve.yaml``); ``forcing`` is the thought
    request and then the answer request, for any server that continues an assistant turn.
    ``extra_body`` holds what the official ``openai`` client sends as extra fields."""
    spec = alloc.thinking
    answer_cap = spec.answer_cap(alloc.max_tokens)
    prefill = {"continue_final_message": True, "add_generation_prompt": False}

    def started(text: str) -> list[dict[str, str]]:
        return [*request["messages"], {"role": "assistant", "content": text}]

    return {
        "budget": spec.budget,
        "spec": spec.to_dict(),
        "engine": {**request, "messages": started(spec.start.strip()),
                   "max_tokens": spec.budget + answer_cap + 16,
                   "extra_body": {"thinking_token_budget": spec.budget, **prefill}},
        "forcing": {
            "thought": {**request, "messages": started(spec.start), "max_tokens": spec.budget,
                        "stop": [spec.stop], "extra_body": prefill},
            "answer": {**request, "n": 1, "max_tokens": answer_cap, "extra_body": prefill,
                       "messages": started(spec.start + "{{thought}}" + spec.end
                                           + spec.answer_cue)},
            "note": ("send the thought request, then one answer request per thought with "
                     "{{thought}} replaced by it; the answer is read from the answer only. "
                     "`jointopt serve` does this for you."),
        },
    }
