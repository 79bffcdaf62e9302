"""``EXPORT.md``: what each exported file is, how to start the stack, and what does not
carry over to DSPy or plain OpenAI requests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.core.policy import Policy
from jointopt.core.task_spec import template_inputs

if TYPE_CHECKING:
    from jointopt.search.plan import StudyPlan

__all__ = ["readme"]


_DSPY_NOTES = """\
## DSPy (`dspy_program.json`)

Load it with `program = dspy.Predict("{inputs} -> {answer}"); program.load("dspy_program.json")`
and give it an LM that points at the vLLM server
(`dspy.LM("openai/{served}", api_base="http://127.0.0.1:8000/v1", api_key="unused")`;
DSPy drops `api_base` from saved files on purpose).

What maps:
- instructions = the system text + the user template (as text);
- demos = the template's {shots} few-shot demonstrations (inputs and rendered answers);
- LM temperature and max_tokens = the default bin's allocation.

What does not map (the measured accuracy and tokens do not transfer to the DSPy program):
- the chat layout: DSPy's adapter writes its own prompt (field headers, `[[ ## answer ## ]]`
  markers) instead of this template's turns;
- the strategy ({strategy}) and its parameters: `dspy.Predict` makes one call; majority vote,
  best-of-N, revision chains and tree search are not part of the saved state;
- per-difficulty bins: one program holds one allocation (the default bin's);
- answer extraction (extractor, matcher, answer_regex): DSPy parses its own output field.
"""


def readme(policy: Policy, plan: "StudyPlan", result_files: Mapping[str, Path], served: str,
           on_cpu: bool, metrics: Mapping[str, Any], trial_number: int, pick: str,
           prompt_uri: str | None, alias: str | None) -> str:
    """The text of ``EXPORT.md`` for the files written (``result_files``: key -> path)."""

    def fmt(m: Mapping[str, Any] | None) -> str:
        if not m:
            return "n/a"
        if m.get("low") is None:
            return f"{m['estimate']:.4g} (no interval)"
        return f"{m['estimate']:.4g} (95% CI {m['low']:.4g} - {m['high']:.4g})"

    acc, tok = metrics.get("accuracy"), metrics.get("mean_tokens")
    env = "set -a; . ./vllm_serve.env; set +a\n" if on_cpu else ""
    launcher = ("python -m vllm.entrypoints.openai.api_server --config vllm_serve.yaml"
                if on_cpu else "vllm serve --config vllm_serve.yaml")
    lines = [
        f"# Exported policy: study `{plan.study_name}`, trial {trial_number} ({pick})",
        "",
        f"Policy: prompt `{policy.prompt.id}`, {policy.describe()}.",
        f"Accuracy {fmt(acc)}; mean tokens per input {fmt(tok)} over {metrics.get('n_examples', 'n/a')} examples.",
        "",
        "## Serve it",
        "",
        "```bash",
        f"{env}{launcher} &        # the engine (OpenAI API on :8000)",
        "jointopt serve --policy policy.yaml --upstream http://127.0.0.1:8000/v1 --port 8080",
        "```",
        "",
        "Then any OpenAI client can call `http://127.0.0.1:8080/v1/chat/completions`: the reply "
        "is the policy's aggregated answer and `usage` counts every token it spent.",
        "",
        "## Files",
        "",
    ]
    descriptions = {
        "policy": "the versioned policy file (run by `jointopt serve` / `jointopt.serving.runtime`)",
        "vllm_serve": "`vllm serve --config` options (model folder, served name, dtype, "
                      "max-model-len, seed, generation config" + (", CPU flags)" if on_cpu else ")"),
        "vllm_env": "environment variables of the vLLM CPU engine",
        "generation_config": "JSON for `--override-generation-config` (the default bin's "
                             "temperature and top_p; max_new_tokens is the largest bin "
                             "budget because vLLM applies it as a server-wide cap)",
        "openai_presets": "per bin: the OpenAI request parameters and rendered messages",
        "dspy": "a `dspy.Predict` state (see below)",
    }
    for key, path in result_files.items():
        if key in descriptions:
            lines.append(f"- `{path.name}`: {descriptions[key]}")
    if prompt_uri:
        name = prompt_uri.split("/")[1]
        lines += ["", "## MLflow", "",
                  f"Registered as `{prompt_uri}` with alias `{alias}`; load it with "
                  f"`mlflow.genai.load_prompt(\"prompts:/{name}@{alias}\")` (the policy JSON is "
                  "the version tag `jointopt.core.policy`)."]
    lines += ["", _DSPY_NOTES.format(
        inputs=", ".join(template_inputs(policy)) or "question", answer="answer", served=served,
        shots=policy.prompt.shots, strategy=policy.strategy_label)]
    return "\n".join(lines) + "\n"
