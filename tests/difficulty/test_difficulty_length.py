"""The length source passes the contract and a search space can name it by path."""

import pytest

from jointopt.difficulty.length import LengthSource
from jointopt.testing import DifficultySourceContract

PATH = "jointopt.difficulty.length:LengthSource"


class TestLengthSource(DifficultySourceContract):
    @pytest.fixture
    def source(self):
        return LengthSource(key=PATH)


def test_a_search_space_names_it_by_path():
    import optuna
    from pathlib import Path

    from jointopt.search.space_build import space_from_dict
    from jointopt.search.space_config import load_space_file

    data = load_space_file(Path(__file__).parents[2] / "search_spaces/quickstart.yaml").model_dump()
    data["difficulty"] = {"source": PATH}
    space = space_from_dict(data, "space")
    policy = space.build_policy(optuna.trial.FixedTrial({
        "prompt": space.prompts[0].id, "1.strategy": "single", "2.strategy": "single",
        "1.temperature": 0.0, "2.temperature": 0.8, "1.max_tokens": 12,
        "2.max_tokens": 32}), "m")
    assert policy.difficulty.source == PATH and set(policy.bins) == {"1", "2"}
