"""Every built-in export target passes the Exporter contract (offline: a planned study, no run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jointopt._registry import EXPORTERS
from jointopt.testing import ExporterContract

ROOT = Path(__file__).resolve().parents[2]


class TestBuiltinExporters(ExporterContract):
    @pytest.fixture(params=EXPORTERS.names())
    def exporter(self, request):
        return EXPORTERS.create(request.param)


def test_registry_names_every_built_in_target():
    assert EXPORTERS.names() == ["policy", "vllm", "openai_presets", "dspy"]
    for name in EXPORTERS.names():
        assert EXPORTERS.load(name).name == name
