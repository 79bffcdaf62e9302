"""The backends of a policy that calls several models: one per model, behind a router."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jointopt.backends.base import Backend
from jointopt.core.policy import Policy
from jointopt.errors import ConfigError

__all__ = ["model_router"]


def model_router(policy: Policy, models: tuple[str, ...],
                 backends: "Mapping[str, Backend] | str | None",
                 kwargs: dict[str, Any], where: str) -> Backend:
    """One backend per model the policy calls: the given ones (every model must have
    one), or backends of the registry name ``backends`` built per model on first use."""
    from jointopt.backends import backend_class, make_backend
    from jointopt.backends.router import ModelRouter

    if isinstance(backends, Mapping):
        missing = [m for m in models if m not in backends]
        if missing:
            raise ConfigError("the policy calls a model that has no backend",
                              where=f"{where}: bins", value=missing,
                              fix=f"pass a backend for each of {list(models)}")
        router = ModelRouter({m: (lambda b=b: b) for m, b in backends.items()},
                             default=policy.model)
        for model in backends:  # already built: the router holds them all from the start
            router.engine(model)
        return router
    name = backends or "vllm"

    def factory(model: str):
        extra = {"model": model} if backend_class(name).loads_model else {}
        return lambda: make_backend(name, **{**kwargs, **extra})

    return ModelRouter({m: factory(m) for m in models}, default=policy.model)
