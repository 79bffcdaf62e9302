"""The Backend extension point: the only thing that produces generations."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from typing import TYPE_CHECKING

from jointopt.core.generation import GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from jointopt.core.pool_data import PoolData

__all__ = ["Backend"]


class Backend(ABC):
    """Turns batches of :class:`GenerationRequest` into :class:`GenerationResult`.

    Implementations must:

    * return exactly one result per request, in order, each with ``request.n`` completions;
    * count ``prompt_tokens`` and completion ``token_ids`` with the model's own tokenizer;
    * send a whole batch to the engine at once when the engine can batch;
    * fill ``Completion.logprobs`` when ``request.logprobs`` is true.

    ``jointopt.testing.BackendContract`` is the test suite every backend passes.
    """

    #: Registry name, e.g. ``"vllm"``.
    name: str = "backend"

    @property
    @abstractmethod
    def model_id(self) -> str:
        """A stable identifier of the model (part of every cache key)."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate completions for a batch of requests."""

    def pool_data(self, requests: Sequence[GenerationRequest],
                  ids: Sequence[tuple[str, str]]) -> "list[PoolData] | None":
        """The pools of ``requests`` as arrays, when the backend holds recorded pools (a
        sample bank): samples ``[offset, offset + n)`` of each, with their answers and
        correctness as recorded. ``ids[i]`` is (prompt id, example id) of ``requests[i]``.
        None (the default) means the backend generates: the caller scores completions.
        """
        return None

    def engine_record(self) -> dict[str, str | int | float]:
        """How the engine runs (device, dtype, threads ...), as flat values the study
        records in Optuna and MLflow, since they change results slightly. Empty by default."""
        return {}

    def close(self) -> None:
        """Release the engine (no-op by default)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
