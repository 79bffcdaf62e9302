"""The Backend extension point: the only thing that produces generations."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from jointopt.core.generation import Completion, GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from jointopt.core.pool_data import PoolData

__all__ = ["Backend", "BackendSettings", "OPTIONAL_SETTINGS"]

#: ``model.*`` keys of a study config that only some backends read (each declares its own
#: in :attr:`Backend.settings_keys`); setting one for another backend is an error.
OPTIONAL_SETTINGS: tuple[str, ...] = ("base_urls", "api_key_env", "api_key_file", "bank")


@dataclass(frozen=True)
class BackendSettings:
    """A study config's ``model:`` section as a backend is built from it (paths resolved
    against the config's folder). Credentials are named (``api_key_env``, ``api_key_file``),
    never held."""

    model: str
    seed: int = 0
    max_model_len: int | None = None
    engine: Mapping[str, Any] = field(default_factory=dict)
    """Extra engine options (``model.engine``), passed on as ``engine_kwargs``."""
    cpu: Mapping[str, Any] = field(default_factory=dict)
    """CPU engine choices (``model.cpu``, unset ones left out)."""
    base_urls: tuple[str, ...] = ()
    api_key_env: str | None = None
    api_key_file: Path | None = None
    bank: Path | None = None


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
    #: The ``OPTIONAL_SETTINGS`` keys this backend reads from a study config.
    settings_keys: ClassVar[frozenset[str]] = frozenset()
    #: Whether the backend loads model files in this process (the study resolves and checks
    #: the model before any compute), rather than naming a model a server or bank knows.
    loads_model: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: BackendSettings) -> "Backend":
        """The backend a study config describes. By default the class is called with
        ``model``, ``seed``, ``max_model_len`` and ``engine_kwargs``."""
        return cls(model=settings.model, seed=settings.seed,
                   max_model_len=settings.max_model_len, engine_kwargs=dict(settings.engine))

    @classmethod
    def servers(cls, settings: BackendSettings) -> tuple[list[str], str]:
        """The servers the backend will connect to, and the config field naming them
        (checked for reachability before any compute). None by default."""
        return [], ""

    @classmethod
    def check_settings(cls, settings: BackendSettings) -> None:
        """Checks of the settings that need no engine (run by ``plan_study`` before any
        compute; raise a :class:`~jointopt.errors.JointoptError` naming the field). None by
        default."""

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

    def cut(self, completion: Completion, max_tokens: int) -> Completion | None:
        """``completion`` cut after its first ``max_tokens`` tokens, as a generation with
        that cap would have ended (finish reason ``length`` when tokens were dropped), or
        None when this backend cannot cut exactly (it needs each token's text). The first
        ``k`` tokens of a sample drawn with a larger cap are distributed exactly as a
        sample drawn with ``max_tokens=k``, so a sample store can serve every smaller cap
        from one pool (see :class:`~jointopt.backends.CachedBackend`). None by default."""
        return None

    def engine_record(self) -> dict[str, str | int | float]:
        """How the engine runs (device, dtype, threads ...), as flat values the study
        records in Optuna and MLflow, since they change results slightly. Empty by default."""
        return {}

    def close(self) -> None:
        """Release the engine (no-op by default)."""

    def thinking_markers(self) -> tuple[str, str] | None:
        """The reasoning start and end strings of the engine's own thinking budget
        (``GenerationRequest.thinking_budget``), or None when the backend has none and a
        thinking phase is enforced by two-phase forcing. None by default."""
        return None

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
