"""Generation backends and their lazy registry (``"module:Class"``, imported on first use)."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from ..errors import BackendError
from .base import Backend
from .cached import CachedBackend, SampleStore
from .scripted import ScriptedBackend

__all__ = ["Backend", "CachedBackend", "SampleStore", "ScriptedBackend", "BACKENDS", "make_backend"]

BACKENDS: dict[str, str] = {
    "vllm": "jointopt.backends.vllm:VLLMBackend",
    "scripted": "jointopt.backends.scripted:ScriptedBackend",
    "openai": "jointopt.backends.openai:OpenAIBackend",
    "replay": "jointopt.backends.replay:ReplayBackend",
}


def make_backend(name: str, **kwargs: Any) -> Backend:
    """Create a backend by registry name or ``"module:Class"`` path."""
    target = BACKENDS.get(name, name if ":" in name else None)
    if target is None:
        close = difflib.get_close_matches(name, list(BACKENDS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise BackendError("unknown backend", where="model.backend", value=name,
                           fix=f"{hint}choose one of: {', '.join(BACKENDS)}")
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(**kwargs)
