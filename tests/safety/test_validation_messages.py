"""One reading of pydantic errors for every YAML/JSON boundary (jointopt.safety.validation)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from jointopt.safety.validation import problems


class _Alloc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: str
    max_tokens: int = 8


class _Literal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str


class _Proposed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    propose: int


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bins: dict[str, _Alloc]
    prompts: list[_Literal | _Proposed] = []


def _problems(data):
    with pytest.raises(ValidationError) as info:
        _File.model_validate(data)
    return problems(info.value, _File)


def test_unknown_key_in_a_dict_value_knows_the_value_model_keys():
    (p,) = _problems({"bins": {"easy": {"strategy": "single", "max_tokenz": 3}}})
    assert p.kind == "unknown" and p.path == ("bins", "easy", "max_tokenz")
    assert p.known == ("strategy", "max_tokens")
    assert p.hint == "did you mean 'max_tokens'? "


def test_misspelled_key_comes_before_the_missing_one_it_causes():
    found = _problems({"bins": {"all": {"strategi": "single"}}})
    assert [p.kind for p in found] == ["unknown", "missing"]
    assert found[1].field == "bins.all.strategy"


def test_union_member_names_are_not_part_of_the_path():
    found = _problems({"bins": {}, "prompts": [{"user": 3}]})
    assert {p.field for p in found} <= {"prompts.0.user", "prompts.0.propose", "prompts.0"}
    invalid = [p for p in found if p.kind == "invalid"]
    assert invalid and invalid[0].value == 3 and invalid[0].key == "user"
