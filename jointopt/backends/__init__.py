"""Generation backends and their lazy registry (``"module:Class"``, imported on first use)."""

from __future__ import annotations

from typing import Any

from jointopt import _registry
from jointopt.backends.base import OPTIONAL_SETTINGS, Backend, BackendSettings
from jointopt.backends.cached import CachedBackend, SampleStore
from jointopt.backends.scripted import ScriptedBackend

__all__ = ["Backend", "BackendSettings", "CachedBackend", "OPTIONAL_SETTINGS", "SampleStore",
           "ScriptedBackend", "BACKENDS", "backend_class", "backend_from_settings",
           "make_backend", "settings_takers"]

#: Built-in backend names -> ``"module:Class"`` (the table of :data:`jointopt._registry.BACKENDS`).
BACKENDS = _registry.BACKENDS.entries


def make_backend(name: str, **kwargs: Any) -> Backend:
    """Create a backend by registry name or ``"module:Class"`` path."""
    return _registry.BACKENDS.create(name, where="model.backend", **kwargs)


def backend_class(name: str) -> type[Backend]:
    """The class ``name`` registers, whose class attributes declare its capabilities
    (:class:`Backend` itself for a ``module:factory`` function)."""
    obj = _registry.BACKENDS.load(name, where="model.backend")
    return obj if isinstance(obj, type) else Backend


def backend_from_settings(name: str, settings: BackendSettings) -> Backend:
    """The backend ``name`` built from a study config's settings: the class's
    :meth:`Backend.from_settings`, or a factory called with ``model``, ``seed``,
    ``max_model_len`` and ``engine_kwargs`` (its result checked by the registry)."""
    obj = _registry.BACKENDS.load(name, where="model.backend")
    if isinstance(obj, type):
        return obj.from_settings(settings)
    return _registry.BACKENDS.create(name, model=settings.model, seed=settings.seed,
                                     max_model_len=settings.max_model_len,
                                     engine_kwargs=dict(settings.engine), where="model.backend")


def settings_takers(key: str) -> list[str]:
    """The built-in backends that read the ``model.<key>`` setting."""
    return [n for n in BACKENDS if key in backend_class(n).settings_keys]
