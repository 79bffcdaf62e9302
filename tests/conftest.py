"""Shared pytest fixtures.

``engine``: ONE real :class:`jointopt.backends.vllm.VLLMBackend` on the embedded model
(SmolLM2-135M-Instruct) for the whole session (loading takes ~30 s on CPU). Tests that
use it carry ``@pytest.mark.engine``. Without vLLM or without the prepared model they are
skipped with the reason, except under CI (``$CI`` set), where setup has run and a
missing engine is a failure.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest


def _engine_unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the engine tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine() -> Iterator[object]:
    """The real vLLM backend on the embedded model, shared by the whole session."""
    if importlib.util.find_spec("vllm") is None:
        _engine_unavailable("vllm is not installed (run: bash scripts/setup.sh)")
    from jointopt.backends.vllm import VLLMBackend
    from jointopt.errors import BackendError
    from jointopt.models import DEFAULT_ALIAS, is_prepared

    if not is_prepared(DEFAULT_ALIAS):
        _engine_unavailable(
            "the embedded model is not prepared "
            "(run: .venv/bin/python -m jointopt.models prepare)"
        )
    try:
        backend = VLLMBackend(DEFAULT_ALIAS, seed=0, max_model_len=1024)
    except BackendError as exc:
        if isinstance(exc.__cause__, ImportError):
            _engine_unavailable(f"vllm cannot be imported: {exc.__cause__}")
        raise
    try:
        yield backend
    finally:
        backend.close()
