"""The contract suite every export target (:class:`~jointopt.export.base.Exporter`) passes.

Subclass :class:`ExporterContract` and supply an ``exporter`` fixture and a ``context``
fixture (an :class:`~jointopt.export.base.ExportContext` whose ``out_dir`` is an empty
folder inside pytest's ``tmp_path``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jointopt.export.base import ExportContext, Exporter, ExportSkipped

__all__ = ["ExporterContract"]


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class ExporterContract:
    """Tests every :class:`Exporter` must pass. Provide ``exporter`` and ``context``."""

    @pytest.fixture
    def exporter(self) -> Exporter:  # pragma: no cover - supplied by subclasses
        raise NotImplementedError("define an `exporter` fixture")

    @pytest.fixture
    def context(self) -> ExportContext:  # pragma: no cover - supplied by subclasses
        raise NotImplementedError("define a `context` fixture")

    @staticmethod
    def _write(exporter: Exporter, context: ExportContext) -> dict[str, Path]:
        context.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            return exporter.write(context)
        except ExportSkipped as skipped:
            pytest.skip(f"{exporter.name} skipped: {skipped}")

    def test_is_a_named_exporter(self, exporter: Exporter) -> None:
        assert isinstance(exporter, Exporter)
        assert isinstance(exporter.name, str) and exporter.name

    def test_writes_only_the_files_it_returns_inside_the_folder(
            self, exporter: Exporter, context: ExportContext, tmp_path: Path) -> None:
        before = _snapshot(tmp_path)
        files = self._write(exporter, context)
        assert files and all(isinstance(k, str) and isinstance(p, Path) for k, p in files.items())
        changed = {p for p, data in _snapshot(tmp_path).items() if before.get(p) != data}
        out = context.out_dir.resolve()
        assert {p.resolve() for p in changed} == {p.resolve() for p in files.values()}
        for path in files.values():
            assert path.resolve().is_relative_to(out), f"{path} is outside {out}"
            assert path.is_file() and path.stat().st_size > 0, f"{path} is missing or empty"

    def test_deterministic_for_the_same_input(self, exporter: Exporter,
                                              context: ExportContext) -> None:
        first = self._write(exporter, context)
        other = dataclasses.replace(context, out_dir=context.out_dir.with_name(
            context.out_dir.name + "-again"))
        second = self._write(exporter, other)
        assert list(first) == list(second)
        for key in first:
            assert first[key].name == second[key].name
            assert first[key].read_bytes() == second[key].read_bytes(), key
