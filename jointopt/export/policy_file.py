"""The ``policy.yaml`` export target: the versioned policy file that ``jointopt serve`` and
:func:`jointopt.serving.runtime.load_policy` run (:mod:`jointopt.core.policy_file`)."""

from __future__ import annotations

from pathlib import Path

from jointopt.core.policy_file import save_policy
from jointopt.export.base import ExportContext, Exporter

__all__ = ["PolicyFileExporter"]


class PolicyFileExporter(Exporter):
    """Writes ``policy.yaml``."""

    name = "policy"

    def write(self, context: ExportContext) -> dict[str, Path]:
        return {"policy": save_policy(context.policy, context.out_dir / "policy.yaml")}
