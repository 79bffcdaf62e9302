"""The DifficultySource extension point: how an input gets its difficulty bin.

A policy with per-difficulty budgets answers each input with the allocation of its bin.
A difficulty source says where the bin comes from. In a study it is built from the
search space's ``difficulty:`` section (its :attr:`~DifficultySource.Settings`), gives
the space its :class:`~jointopt.core.policy.DifficultySpec` (fitted on the dev split
when it needs a fit) and, at serve time, assigns bins to new inputs through the spec,
whose ``source`` names it in :data:`jointopt._registry.DIFFICULTY_SOURCES`.

What a source can do is declared once, on the class (:attr:`~DifficultySource.servable`,
:attr:`~DifficultySource.probes`, ...); the study, evaluation, record/replay and the
runtime read these capabilities and never branch on a source's name. Adding one is a new
module with a subclass plus a test class inheriting
:class:`jointopt.testing.DifficultySourceContract`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from jointopt.core.policy import DifficultySpec
from jointopt.errors import ConfigError

if TYPE_CHECKING:
    from jointopt.backends.base import Backend
    from jointopt.core.policy import Policy
    from jointopt.core.prompts import PromptTemplate
    from jointopt.strategies.base import Run, Strategy, StrategyContext
    from jointopt.tasks import Example, Task

__all__ = ["DifficultySource", "NoSettings", "StudyFit", "bin_label_key", "check_n_bins",
           "check_number", "numbered_bins", "sampling_contexts"]


@dataclass(frozen=True)
class NoSettings:
    """The settings of a source that reads nothing from the ``difficulty:`` section."""


@dataclass(frozen=True)
class StudyFit:
    """What fitting a source on a study's dev split gives.

    Attributes:
        specs: the spec for every prompt id of the space (a source that does not depend
            on the prompt gives every prompt the same spec).
        report: written to ``difficulty_report.json`` (None: no report).
        agreements: metric-name pattern (``{}`` is the measure) -> an
            :class:`~jointopt.difficulty.agreement.Agreement` dict, logged to MLflow.
    """

    specs: Mapping[str, DifficultySpec]
    report: Mapping[str, Any] | None = None
    agreements: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class DifficultySource:
    """Base class of every difficulty source.

    An instance is one source with its settings; the serve-time methods are class
    methods that read a :class:`DifficultySpec` (the part of a policy that is stored).

    Attributes:
        settings: an instance of :attr:`Settings` (default settings when omitted).
        key: how the configuration named the source (a registry name or a
            ``"package.module:Class"`` path); the specs it builds carry it as their
            ``source``. Defaults to :attr:`name`.
    """

    #: The registry name (the ``difficulty.source`` value of the built-in sources).
    name: ClassVar[str] = ""
    #: Frozen dataclass of the ``difficulty:`` keys this source reads (same names).
    Settings: ClassVar[type] = NoSettings
    #: Every input gets the allocation of its own bin (False: one allocation for all).
    splits: ClassVar[bool] = True
    #: Bins can be assigned to new inputs at serve time (False: they need the target,
    #: so a study labels its dev and test examples with :meth:`label_examples` instead).
    servable: ClassVar[bool] = True
    #: The bin is picked from samples of the policy's model drawn at serve time, inside
    #: :meth:`run` (which the evaluation and the runtime then drive).
    probes: ClassVar[bool] = False
    #: Fitting or labelling draws samples at the source's own settings, which a recorded
    #: sample bank does not hold (record/replay refuse it).
    fit_generates: ClassVar[bool] = False
    #: Trials need :meth:`fit_study` first (the space's spec is a placeholder until then).
    needs_fit: ClassVar[bool] = False

    settings: Any = None
    key: str = ""

    def __post_init__(self) -> None:
        if self.settings is None:
            object.__setattr__(self, "settings", self.Settings())
        if not self.key:
            object.__setattr__(self, "key", type(self).name)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], key: str = "") -> "DifficultySource":
        """The source with the keys of its :attr:`Settings` taken from a checked
        ``difficulty:`` mapping (other keys are the other sources' settings)."""
        names = {f.name for f in fields(cls.Settings)}
        return cls(cls.Settings(**{k: v for k, v in config.items() if k in names}), key)

    # ------------------------------------------------------------------ study time

    def space_spec(self, task: "Task | None" = None, where: str = "difficulty"
                   ) -> DifficultySpec:
        """The spec trials use before any fit; with ``task`` (the full data set) it may
        take its bins from the examples. A placeholder when :attr:`needs_fit`."""
        return DifficultySpec()

    def fit(self, task: "Task", backend: "Backend", *, prompt: "PromptTemplate",
            seed: int = 0) -> DifficultySpec:
        """The spec fitted on ``task``'s examples (the dev split) answered with ``prompt``."""
        return self.space_spec(task)

    def fit_study(self, task: "Task", backend: "Backend", *,
                  prompts: Sequence["PromptTemplate"], seed: int = 0,
                  test_task: "Task | None" = None) -> StudyFit:
        """Fit for a study: a spec per prompt, and a report. By default one :meth:`fit`
        with the first prompt, for every prompt, without a report."""
        spec = self.fit(task, backend, prompt=prompts[0], seed=seed)
        return StudyFit(specs={p.id: spec for p in prompts})

    def label_examples(self, task: "Task", backend: "Backend", *,
                       prompt: "PromptTemplate", seed: int = 0) -> dict[str, str]:
        """``{example id: bin}`` for sources that are not :attr:`servable`."""
        raise NotImplementedError(f"{type(self).__name__} assigns bins at serve time")

    # ------------------------------------------------------------------ serve time

    @classmethod
    def check_spec(cls, spec: DifficultySpec) -> None:
        """Refuse a spec this source cannot use (ConfigError naming the field); may
        normalise fields in place (``object.__setattr__``) while the spec is built."""

    @classmethod
    def spec_fields(cls, spec: DifficultySpec) -> dict[str, Any]:
        """The spec's fields this source uses beyond ``source``, ``bins`` and
        ``default_bin``, as written to policy files."""
        return {}

    @classmethod
    def bin_of(cls, spec: DifficultySpec, example: "Example") -> str:
        """The bin of an input known before generating (a :attr:`probes` source gives
        its default bin here and picks the real one in :meth:`run`)."""
        return spec.default_bin

    @classmethod
    def run(cls, policy: "Policy", strategies: Mapping[str, "Strategy"],
            ctx: "StrategyContext") -> "Run":
        """Answer one input, picking its bin while running (:attr:`probes` sources):
        the outcome's ``info["bin"]`` names the bin."""
        raise NotImplementedError(f"{cls.__name__} picks bins before generating")


# --------------------------------------------------------------------------- shared helpers


def sampling_contexts(template: "PromptTemplate", task: "Task", settings: Any,
                      seed: int) -> list["StrategyContext"]:
    """Contexts of every example at a source's own sampling settings
    (``probe_temperature``, ``probe_max_tokens``)."""
    from jointopt.strategies.base import example_context

    return [example_context(template, task, e, temperature=float(settings.probe_temperature),
                            max_tokens=int(settings.probe_max_tokens), seed=seed)
            for e in task.examples]


def numbered_bins(n_bins: Any) -> tuple[str, ...]:
    """The labels ``"1"`` (easiest) ... ``str(n_bins)`` (hardest)."""
    return tuple(str(i) for i in range(1, int(n_bins) + 1))


def check_number(x: Any, where: str, *, allow_neg_inf: bool = False) -> float:
    """``x`` as a finite float (``-inf`` allowed when asked), else a ConfigError."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise ConfigError("must be a number", where=where, value=x, fix="pass a float")
    v = float(x)
    if math.isnan(v) or (math.isinf(v) and not (allow_neg_inf and v < 0)):
        raise ConfigError("must be a finite number", where=where, value=x,
                          fix="drop or recompute the non-finite value")
    return v


def check_n_bins(n_bins: Any) -> int:
    """``n_bins`` as an integer >= 2, else a ConfigError."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ConfigError("`n_bins` must be an integer >= 2", where="n_bins", value=n_bins,
                          fix="use e.g. n_bins=5 (Snell et al.) or 3")
    return int(n_bins)


def bin_label_key(label: str) -> tuple[int, int, str]:
    """Sort key of bin labels: numeric labels by value, then the others."""
    return (0, int(label), label) if label.isascii() and label.isdigit() else (1, 0, label)
