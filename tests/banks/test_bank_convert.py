"""Converters: each real-format fixture (written by hand from the tool's documented format)
round-trips into a bank and a study that runs offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from jointopt.backends.bank_loader import load_bank
from jointopt.backends.replay import ReplayBackend
from jointopt.banks.convert import convert, lm_eval_rows, openai_batch_rows
from jointopt.banks.importer import ImportOptions
from jointopt.errors import ConfigError, DataError
from jointopt.search.config import load_config
from jointopt.search.study import run_study

FIXTURES = Path(__file__).parent / "fixtures"
LM_EVAL = FIXTURES / "samples_gsm8k_2025-03-04T10-20-30.123456.jsonl"


def _run(result, tmp_path, trials=4):
    config = load_config(result.study, {"output_dir": str(tmp_path / "run"),
                                        "optimizer": {"n_trials": trials}})
    return run_study(config)


def test_lm_eval_log_samples(tmp_path):
    rows = lm_eval_rows(LM_EVAL)
    assert len(rows) == 12 and {r["prompt_id"] for r in rows} == {"gsm8k"}
    assert rows[0]["temperature"] == 0.7 and rows[0]["max_tokens"] == 256
    result = convert("lm-eval", LM_EVAL, tmp_path / "lm.bank.npz",
                     ImportOptions(extractor="last_number", matcher="numeric",
                                   test_fraction=0.0))
    bank = load_bank(result.bank)
    assert result.samples == 12 and result.examples == 3 and bank.samples == 4
    pool = bank.pool_data(bank.find("gsm8k", "1", 0.7, 256), 4)
    # texts "... 30", "... 11", "... 30", "I am not sure." against target 30
    assert dict(zip(pool.answers, pool.counts.tolist())) == {"30": 2, "11": 1, None: 1}
    assert pool.correct[list(pool.answers).index("30")]
    assert ReplayBackend(result.bank).bank.read(None, bank.pools[next(iter(bank.pools))],
                                                0, 1)[0].text.startswith("He has")
    study = _run(result, tmp_path)
    assert len(study.proposed) == 4


def test_openai_batch_output_with_n_choices_and_usage(tmp_path):
    rows = openai_batch_rows(FIXTURES / "openai_batch_output.jsonl",
                             FIXTURES / "openai_batch_input.jsonl")
    chatty = [r for r in rows if r["prompt_id"] == "chatty" and r["example_id"] == "q1"]
    assert [r["completion_tokens"] for r in chatty] == [11, 11, 10]  # 32 over 3, exact mean
    terse = [r for r in rows if r["prompt_id"] == "terse" and r["example_id"] == "q2"]
    assert [r["completion_tokens"] for r in terse] == [1, 2, 2]  # counted from logprobs
    assert terse[1]["sum_logprob"] == pytest.approx(-0.75)
    assert terse[0]["model"] == "gpt-4o-mini-2024-07-18" and terse[0]["max_tokens"] == 16
    with pytest.raises(ConfigError, match="--input"):
        convert("openai-batch", FIXTURES / "openai_batch_output.jsonl", tmp_path / "x.npz",
                ImportOptions())
    result = convert("openai-batch", FIXTURES / "openai_batch_output.jsonl",
                     tmp_path / "oa.bank.npz",
                     ImportOptions(dataset=FIXTURES / "capitals.jsonl", test_fraction=0.0),
                     batch_input=FIXTURES / "openai_batch_input.jsonl")
    bank = load_bank(result.bank)
    assert bank.model == "gpt-4o-mini-2024-07-18" and sorted(bank.prompt_ids) == [
        "chatty", "terse"]
    pool = bank.pool_data(bank.find("chatty", "q1", 0.8, 16), 3)
    assert pool.mean_completion_tokens == pytest.approx(32 / 3) and pool.prompt_tokens == 24
    assert dict(zip(pool.answers, pool.correct.tolist())) == {"paris": True,
                                                               "marseille": False}
    study = _run(result, tmp_path)
    assert len(study.proposed) == 4


def test_failed_batch_request_is_named(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "b", "custom_id": "terse/q1", "response": null, '
                   '"error": {"code": "rate_limit", "message": "slow down"}}\n')
    with pytest.raises(DataError, match="row 1, column 'response'"):
        openai_batch_rows(out, FIXTURES / "openai_batch_input.jsonl")


def test_convert_command(tmp_path, capsys):
    from jointopt.cli.app import main

    out = tmp_path / "lm.bank.npz"
    assert main(["bank", "convert", "lm-eval", str(LM_EVAL), "--out", str(out),
                 "--extractor", "last_number", "--matcher", "numeric"]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "12 samples" in text and "no completion_tokens" in text
    assert main(["validate", str(tmp_path / "lm.study.yaml")]) == 0
