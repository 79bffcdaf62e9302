"""Every built-in difficulty source passes the DifficultySource contract."""

from __future__ import annotations

import pytest

from jointopt._registry import DIFFICULTY_SOURCES
from jointopt.difficulty.label import LabelSource
from jointopt.difficulty.none import NoDifficulty
from jointopt.difficulty.oracle import OracleSettings, OracleSource
from jointopt.difficulty.predictor import PredictorSource
from jointopt.difficulty.probe import ProbeSettings, ProbeSource
from jointopt.testing import DifficultySourceContract

SAMPLED = dict(n_bins=2, probe_temperature=0.7, probe_max_tokens=16, oracle_samples=4)


class TestNoDifficulty(DifficultySourceContract):
    @pytest.fixture
    def source(self):
        return NoDifficulty()


class TestLabelSource(DifficultySourceContract):
    @pytest.fixture
    def source(self):
        return LabelSource()


class TestProbeSource(DifficultySourceContract):
    @pytest.fixture
    def source(self):
        return ProbeSource(ProbeSettings(probe_k=3, **SAMPLED))


class TestPredictorSource(DifficultySourceContract):
    @pytest.fixture
    def source(self):
        return PredictorSource(OracleSettings(**SAMPLED))


class TestOracleSource(DifficultySourceContract):
    @pytest.fixture
    def source(self):
        return OracleSource(OracleSettings(**SAMPLED))


def test_every_registered_source_has_a_contract_test():
    tested = {cls.name for cls in (NoDifficulty, LabelSource, ProbeSource, PredictorSource,
                                   OracleSource)}
    assert set(DIFFICULTY_SOURCES.names()) == tested
    for name in DIFFICULTY_SOURCES.names():
        assert DIFFICULTY_SOURCES.load(name).name == name


def test_a_policy_naming_an_unknown_or_unservable_source_is_refused():
    from jointopt.core.policy import DifficultySpec
    from jointopt.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'probe'") as info:
        DifficultySpec(source="prob")
    assert info.value.where == "difficulty.source"
    with pytest.raises(ConfigError, match="cannot assign bins to new inputs"):
        DifficultySpec(source="oracle", bins=("1", "2"), default_bin="2")
