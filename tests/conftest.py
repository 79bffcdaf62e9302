"""Shared pytest fixtures.

``engine``: ONE real :class:`jointopt.backends.vllm.VLLMBackend` on the embedded model
(SmolLM2-135M-Instruct) for the whole session (loading takes ~30 s on CPU). Tests that
use it carry ``@pytest.mark.engine``. Without vLLM or without the prepared model they are
skipped with the reason, except under CI (``$CI`` set), where setup has run and a
missing engine is a failure.

Never two engines at once: tests marked ``engine_process`` start their own engine in a
subprocess (a vLLM server, ``jointopt run``). They run last, and the shared in-process
engine is closed before the first of them starts.
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


_SHARED_ENGINE = pytest.StashKey[object]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that start an engine of their own run after every other test."""
    items.sort(key=lambda item: item.get_closest_marker("engine_process") is not None)


@pytest.fixture(autouse=True)
def _one_engine_at_a_time(request: pytest.FixtureRequest) -> None:
    """Close the shared engine before a test that starts an engine of its own."""
    if request.node.get_closest_marker("engine_process") is None:
        return
    backend = request.config.stash.get(_SHARED_ENGINE, None)
    if backend is not None:
        backend.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> Iterator[object]:
    """The real vLLM backend on the embedded model, shared by the whole session."""
    if importlib.util.find_spec("vllm") is None:
        _engine_unavailable("vllm is not installed (run: bash scripts/setup.sh)")
    from jointopt.backends.vllm import VLLMBackend
    from jointopt.errors import BackendError
    from jointopt.backends.models import DEFAULT_ALIAS, is_prepared

    if not is_prepared(DEFAULT_ALIAS):
        _engine_unavailable(
            "the embedded model is not prepared "
            "(run: .venv/bin/python -m jointopt.backends.models prepare)"
        )
    try:
        backend = VLLMBackend(DEFAULT_ALIAS, seed=0, max_model_len=1024)
    except BackendError as exc:
        if isinstance(exc.__cause__, ImportError):
            _engine_unavailable(f"vllm cannot be imported: {exc.__cause__}")
        raise
    request.config.stash[_SHARED_ENGINE] = backend
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def log_redaction() -> Iterator[None]:
    """Log redaction as the CLI installs it (records, warnings, tracebacks), removed after."""
    import logging
    import sys

    from jointopt.safety import secrets

    factory, hook = logging.getLogRecordFactory(), sys.excepthook
    secrets._installed = False
    secrets.install_log_redaction()
    yield
    logging.setLogRecordFactory(factory)
    sys.excepthook = hook
    logging.captureWarnings(False)
    secrets._installed = False
