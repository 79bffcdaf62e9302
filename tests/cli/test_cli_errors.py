"""Bad input gets one clear message (field or line, value, fix), exit code 2, no
traceback, and no engine start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jointopt.cli.app import main

ROOT = Path(__file__).resolve().parents[2]


def _space(**changes):
    space = yaml.safe_load((ROOT / "search_spaces/quickstart.yaml").read_text())
    space.update(changes)
    return space


def _write(tmp_path: Path, config: dict, space: dict | None = None) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space or _space()))
    base = {
        "name": "t", "output_dir": str(tmp_path / "out"),
        "task": {"builtin": {"family": "reverse_words", "n_per_level": 2}},
        "search_space": "space.yaml",
    }
    for key, value in config.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def _dataset(tmp_path: Path, text: str) -> dict:
    (tmp_path / "data.jsonl").write_text(text)
    return {"dataset": {"path": "data.jsonl", "target_field": "answer"}}


CASES = {
    "unknown key": (lambda p: _write(p, {"optimizer": {"n_trails": 5}}),
                    ["n_trails", "did you mean 'n_trials'"]),
    "wrong type": (lambda p: _write(p, {"optimizer": {"n_trials": "many"}}),
                   ["optimizer.n_trials", "'many'"]),
    "missing dataset file": (lambda p: _write(p, {"task": {"dataset": {"path": "nope.jsonl"}}}),
                             ["nope.jsonl"]),
    "malformed jsonl line": (
        lambda p: _write(p, {"task": _dataset(p, '{"question": "a", "answer": "1"}\n'
                                                 '{"question": "b", "answer": \n')}),
        ["data.jsonl:2"]),
    "template variable absent": (
        lambda p: _write(p, {}, _space(prompts=[{"id": "x", "user": "{{ questoin }}"}])),
        ["questoin", "question"]),
    "n below 1": (
        lambda p: _write(p, {}, _space(strategies={"majority": {"n": {"low": 0, "high": 3}}})),
        ["majority.n", "(got 0)", "between 1 and"]),
    "unknown strategy": (
        lambda p: _write(p, {}, _space(strategies={"majorty": {}})),
        ["majorty", "did you mean 'majority'"]),
    "unknown model": (lambda p: _write(p, {"model": {"model": "smollm3"}}),
                      ["smollm3"]),
    "unknown family": (lambda p: _write(p, {"task": {"builtin": {"family": "reverse_word"}}}),
                       ["reverse_word", "reverse_words"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_input_is_one_clear_message(case, command, tmp_path, capsys):
    make, needles = CASES[case]
    path = make(tmp_path)
    code = main([command, str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("error: ")
    assert "fix:" in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (tmp_path / "out" / "samples.sqlite").exists()


def test_run_with_bad_input_exits_before_any_engine_starts(tmp_path):
    path = _write(tmp_path, {"optimizer": {"n_trails": 5}})
    code = ("import sys, jointopt.cli.app as c; rc = c.main(['run', sys.argv[1]]); "
            "print('vllm' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout.strip() == "False"
    assert "n_trails" in proc.stderr and "Traceback" not in proc.stderr


def test_validate_accepts_the_quickstart(capsys):
    assert main(["validate", str(ROOT / "experiments/quickstart.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


BAD_STRATEGY_PARAMS = {
    "negative rounds": ({"revision": {"rounds": {"low": -1, "high": 3}}}, "revision.rounds", "-1"),
    "branching 0": ({"mcts": {"branching": 0}}, "mcts.branching", "0"),
    "exploration below 0": ({"mcts": {"c": {"low": -0.5, "high": 1.0}}}, "mcts.c", "-0.5"),
    "unknown aggregation": ({"revision": {"aggregate": {"choices": ["last", "mean"]}}},
                            "revision.aggregate", "'mean'"),
    "unknown weight": ({"weighted_vote": {"weight": "logprobs"}}, "weighted_vote.weight",
                       "'logprobs'"),
}


@pytest.mark.parametrize("case", sorted(BAD_STRATEGY_PARAMS))
def test_bad_strategy_parameters_fail_validation(case, tmp_path, capsys):
    strategies, where, value = BAD_STRATEGY_PARAMS[case]
    path = _write(tmp_path, {}, _space(strategies=strategies))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert where in err and f"(got {value})" in err and "fix:" in err, err
