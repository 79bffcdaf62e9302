"""A trivial difficulty source: long inputs are the hard bin."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from jointopt.core.policy import DifficultySpec
from jointopt.difficulty.base import DifficultySource

if TYPE_CHECKING:
    from jointopt.tasks import Example, Task


class LengthSource(DifficultySource):
    """``"1"`` for inputs up to 20 characters, ``"2"`` for longer ones."""

    name: ClassVar[str] = "length"

    def space_spec(self, task: "Task | None" = None, where: str = "difficulty"
                   ) -> DifficultySpec:
        return DifficultySpec(source=self.key, bins=("1", "2"), default_bin="2")

    @classmethod
    def bin_of(cls, spec: DifficultySpec, example: "Example") -> str:
        return "1" if sum(len(v) for v in example.inputs.values()) <= 20 else "2"
