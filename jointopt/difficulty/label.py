"""The ``label`` difficulty source: the input carries its bin (the data's difficulty field,
or ``difficulty`` in a serving request)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from jointopt.core.policy import DEFAULT_BIN, DifficultySpec
from jointopt.difficulty.base import DifficultySource
from jointopt.errors import ConfigError

if TYPE_CHECKING:
    from jointopt.tasks import Example, Task

__all__ = ["LabelSettings", "LabelSource"]


@dataclass(frozen=True)
class LabelSettings:
    """The ``difficulty:`` keys of label bins."""

    bins: tuple[str, ...] | None = None
    """Bin labels; default: the difficulty labels found in the task's examples, sorted."""
    default_bin: str | None = None
    """Bin for inputs without a known label; default: the last bin (the most compute)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "bins", tuple(str(b) for b in (self.bins or ())))


class LabelSource(DifficultySource):
    """The input's difficulty label is its bin; inputs without one (or with a label that
    has no allocation) get the default bin."""

    name: ClassVar[str] = "label"
    Settings: ClassVar[type] = LabelSettings

    def space_spec(self, task: "Task | None" = None, where: str = "difficulty"
                   ) -> DifficultySpec:
        bins, default_bin = self.settings.bins, self.settings.default_bin
        if task is None:
            return DifficultySpec(source=self.key, bins=bins,
                                  default_bin=default_bin or (bins[-1] if bins else DEFAULT_BIN))
        labels = sorted({e.difficulty for e in task.examples if e.difficulty is not None})
        bins = bins or tuple(labels)
        if not bins:
            raise ConfigError(
                "difficulty source 'label' but the task's examples carry no difficulty labels",
                where=f"{where}.source", value=self.key,
                fix="add a difficulty column to the data, or use source: none",
            )
        unknown = sorted(set(labels) - set(bins))
        if unknown:
            raise ConfigError(
                "the data has difficulty labels that are not bins of the space",
                where=f"{where}.bins", value=unknown,
                fix=f"list every label in difficulty.bins (found: {', '.join(labels)})",
            )
        default = default_bin if default_bin in bins else bins[-1]
        return DifficultySpec(source=self.key, bins=tuple(bins), default_bin=default)

    @classmethod
    def bin_of(cls, spec: DifficultySpec, example: "Example") -> str:
        if example.difficulty is not None:
            return str(example.difficulty)
        return spec.default_bin
