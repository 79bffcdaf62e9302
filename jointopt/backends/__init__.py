"""Generation backends and their lazy registry (``"module:Class"``, imported on first use)."""

from __future__ import annotations

from typing import Any

from jointopt import _registry
from jointopt.backends.base import Backend
from jointopt.backends.cached import CachedBackend, SampleStore
from jointopt.backends.scripted import ScriptedBackend

__all__ = ["Backend", "CachedBackend", "SampleStore", "ScriptedBackend", "BACKENDS", "make_backend"]

#: Built-in backend names -> ``"module:Class"`` (the table of :data:`jointopt._registry.BACKENDS`).
BACKENDS = _registry.BACKENDS.entries


def make_backend(name: str, **kwargs: Any) -> Backend:
    """Create a backend by registry name or ``"module:Class"`` path."""
    return _registry.BACKENDS.create(name, where="model.backend", **kwargs)
