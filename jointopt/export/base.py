"""The export-target extension point: an :class:`Exporter` writes one part of an export
(the policy file, the vLLM configs, ...) from an :class:`ExportContext`.

Built-in exporters are listed in :data:`jointopt._registry.EXPORTERS`; a new target is one
module with an :class:`Exporter` subclass that passes
:class:`jointopt.testing.ExporterContract`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from jointopt.core.policy import Policy

if TYPE_CHECKING:
    from jointopt.search.plan import StudyPlan
    from jointopt.tasks import Task

__all__ = ["ExportContext", "ExportSkipped", "Exporter"]


@dataclass(frozen=True)
class ExportContext:
    """What every exporter gets: the exported policy and where and how it is served.

    Attributes:
        policy: the exported policy, with its metadata (task, metrics, provenance, serving).
        plan: the study's plan (config, task, names).
        task: the study's task (demos, fields, extraction).
        out_dir: the export folder (exists); exporters write only inside it.
        served_model_name: the model name the vLLM server serves and clients send.
        model_path: the model folder (or the model as written when unresolved).
        on_cpu: whether the vLLM files are for the CPU engine.
    """

    policy: Policy
    plan: "StudyPlan"
    task: "Task"
    out_dir: Path
    served_model_name: str
    model_path: str
    on_cpu: bool


class ExportSkipped(Exception):
    """Raised by :meth:`Exporter.write` when its target cannot be written here (an optional
    dependency is missing, say); the message becomes a warning of the export."""


class Exporter(ABC):
    """Writes one export target into ``context.out_dir``.

    Subclasses set :attr:`name` and implement :meth:`write`, which returns every file it
    wrote (a key naming the file's role -> its path); the same context gives the same
    bytes.
    """

    #: The target's short name (its registry key).
    name: ClassVar[str] = ""

    @abstractmethod
    def write(self, context: ExportContext) -> dict[str, Path]:
        """Write the target's files; raise :class:`ExportSkipped` to skip it with a warning."""
