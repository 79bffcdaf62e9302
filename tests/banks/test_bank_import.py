"""`jointopt bank import`: tables of samples or histograms -> a bank and a runnable study;
every malformed table gets one message naming file, row, column, value and fix, and
nothing is written."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from jointopt.backends.bank_loader import load_bank
from jointopt.banks.importer import ImportOptions, import_bank
from jointopt.errors import ConfigError, DataError
from jointopt.search.config import load_config
from jointopt.search.plan import bank_pool_size, plan_study
from jointopt.search.study import run_study


def _samples(n_examples=6, n=6, seed=0, prompts=("a", "b")):
    """Per-sample rows: prompt 'b' is right more often; tokens and logprobs vary."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in prompts:
        for e in range(n_examples):
            for i in range(n):
                right = rng.random() < (0.8 if p == "b" else 0.4)
                rows.append({"example_id": f"x{e}", "prompt_id": p, "sample_index": i,
                             "answer": "yes" if right else rng.choice(["no", "maybe"]),
                             "correct": bool(right), "completion_tokens": int(rng.integers(3, 9)),
                             "prompt_tokens": 12, "logprob": float(-rng.random()),
                             "temperature": 0.7, "max_tokens": 32, "model": "m1"})
    return rows


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_per_sample_table_imports_and_runs(tmp_path):
    table = _write_jsonl(tmp_path / "s.jsonl", _samples())
    result = import_bank(table, tmp_path / "out" / "s.bank.npz", ImportOptions(n_trials=8))
    assert result.pools == 12 and result.samples == 72 and not result.histogram
    bank = load_bank(result.bank)
    assert bank.header["version"] == 2 and bank.header["model"] == "m1"
    assert sorted(bank.prompt_ids) == ["a", "b"] and bank.samples == 6
    space = yaml.safe_load(result.space.read_text())
    assert "weighted_vote" in space["strategies"]  # logprobs were given
    config = load_config(result.study, {"output_dir": str(tmp_path / "run")})
    plan = plan_study(config)
    assert bank_pool_size(plan) == 6  # every recorded sample, not the live default of 8
    study = run_study(config)
    assert len(study.proposed) == 8 and all(0 <= t.accuracy <= 1 for t in study.trials)


def test_csv_histograms_with_a_dataset_and_computed_correctness(tmp_path):
    dataset = tmp_path / "data.jsonl"
    _write_jsonl(dataset, [{"id": f"q{i}", "question": f"2+{i}?", "answer": str(2 + i)}
                           for i in range(4)])
    table = tmp_path / "h.csv"
    with table.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["qid", "prompt", "hist", "n", "tokens"])
        w.writeheader()
        for i in range(4):
            w.writerow({"qid": f"q{i}", "prompt": "p", "n": 5, "tokens": 7.5,
                        "hist": json.dumps({str(2 + i): 3, "9": 1, "": 1})})
    result = import_bank(table, tmp_path / "h.bank.npz", ImportOptions(
        columns={"example_id": "qid", "prompt_id": "prompt", "counts": "hist", "total": "n",
                 "completion_tokens": "tokens"}, dataset=dataset, n_trials=4,
        test_fraction=0.0))
    bank = load_bank(result.bank)
    data = bank.pool_data(bank.find("p", "q1", 1.0, 8), 5)
    assert data.answers == ("3", "9", None) and data.correct.tolist() == [True, False, False]
    assert data.mean_completion_tokens == 7.5 and data.sample_group is None
    assert len(run_study(load_config(result.study, {
        "output_dir": str(tmp_path / "run")})).proposed) == 4


def _bad(tmp_path, rows, options=None, name="t.jsonl"):
    table = _write_jsonl(tmp_path / name, rows)
    out = tmp_path / "out" / "x.bank.npz"
    with pytest.raises((DataError, ConfigError)) as info:
        import_bank(table, out, options or ImportOptions())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), \
        "nothing is written"
    text = str(info.value)
    assert str(table) in text and "fix:" in text
    return text


def test_missing_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "example_id"} for r in _samples()]
    text = _bad(tmp_path, rows)
    assert "'example_id' not found" in text and "--column example_id=NAME" in text


def test_unknown_prompt_in_rows(tmp_path):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(yaml.safe_dump([{"id": "a", "user": "{{ input }}"}]))
    text = _bad(tmp_path, _samples(), ImportOptions(prompts=prompts))
    assert "row 37, column 'prompt_id'" in text and "'b'" in text


def test_duplicate_sample_index(tmp_path):
    rows = _samples()
    rows[3]["sample_index"] = 1
    text = _bad(tmp_path, rows)
    assert "row 4, column 'sample_index'" in text and "duplicate sample index" in text


def test_negative_tokens(tmp_path):
    rows = _samples()
    rows[5]["completion_tokens"] = -4
    text = _bad(tmp_path, rows)
    assert "row 6, column 'completion_tokens'" in text and "-4" in text


def test_example_absent_from_the_dataset(tmp_path):
    dataset = _write_jsonl(tmp_path / "d.jsonl", [{"id": f"x{i}", "q": "?", "answer": "yes"}
                                                  for i in range(5)])
    text = _bad(tmp_path, _samples(), ImportOptions(dataset=dataset))
    assert "row 31, column 'example_id'" in text and "'x5'" in text and str(dataset) in text


def test_mixed_settings_in_one_pool(tmp_path):
    rows = _samples()
    rows[2]["model"] = "m2"
    text = _bad(tmp_path, rows)
    assert "row 3, column 'model'" in text and "mixed settings in one pool" in text
    rows = _samples()
    rows[8]["temperature"] = None
    assert "row 9, column 'temperature'" in _bad(tmp_path, rows)


def test_histogram_counts_disagree_with_total(tmp_path):
    rows = [{"example_id": "e", "prompt_id": "p", "counts": {"A": 3, "B": 2}, "total": 6,
             "correct": ["A"]}]
    text = _bad(tmp_path, rows)
    assert "row 1, column 'total'" in text and "sum to 5" in text and "(got 6)" in text


def test_same_answer_with_two_correctness_values(tmp_path):
    rows = _samples()
    rows[1].update(answer=rows[0]["answer"], correct=not rows[0]["correct"])
    assert "disagree on correctness" in _bad(tmp_path, rows)


def test_prompt_without_rows_for_some_examples(tmp_path):
    rows = [r for r in _samples() if not (r["prompt_id"] == "a" and r["example_id"] == "x2")]
    text = _bad(tmp_path, rows)
    assert "prompt 'a'" in text and "'x2'" in text


def test_a_smaller_pool_size_is_announced_and_refused_for_histograms(tmp_path, caplog):
    table = _write_jsonl(tmp_path / "s.jsonl", _samples())
    result = import_bank(table, tmp_path / "s.bank.npz", ImportOptions(n_trials=2, max_n=4))
    with caplog.at_level(logging.WARNING):
        plan = plan_study(load_config(result.study, {"bank": {"pool_size": 4}}))
    assert bank_pool_size(plan) == 4
    assert "first 4 of the 6 recorded samples" in caplog.text
    hist = _write_jsonl(tmp_path / "h.jsonl", [
        {"example_id": f"e{i}", "counts": {"A": 5, "B": 3}, "correct": ["A"]} for i in range(3)])
    result = import_bank(hist, tmp_path / "h.bank.npz", ImportOptions(n_trials=2, max_n=4))
    with pytest.raises(ConfigError, match="histograms of 8 samples"):
        plan_study(load_config(result.study, {"bank": {"pool_size": 4}}))


def test_cli_import_validate_run_says_replayed(tmp_path, capsys, monkeypatch):
    from jointopt.cli.app import main

    monkeypatch.chdir(tmp_path)
    _write_jsonl(tmp_path / "s.jsonl", _samples())
    assert main(["bank", "import", "s.jsonl", "--out", "b/s.bank.npz", "--n-trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "wrote b/s.bank.npz" in out and "jointopt run b/s.study.yaml" in out
    assert main(["validate", "b/s.study.yaml"]) == 0
    assert main(["run", "b/s.study.yaml"]) == 0
    out = capsys.readouterr().out
    assert "3 trials replayed from the bank" in out and "generated (" not in out
    assert main(["bank", "info", "b/s.bank.npz"]) == 0
    bad = tmp_path / "bad.jsonl"
    _write_jsonl(bad, [{"example_id": "e", "counts": {"A": 1}, "total": 2, "correct": []}])
    assert main(["bank", "import", "bad.jsonl", "--out", "c/x.bank.npz"]) == 2
    assert "row 1, column 'total'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_export_asks_for_the_prompt_text_of_an_imported_bank(tmp_path):
    from jointopt.export.policy import export_policy

    table = _write_jsonl(tmp_path / "s.jsonl", _samples())
    result = import_bank(table, tmp_path / "s.bank.npz", ImportOptions(n_trials=4))
    config = load_config(result.study, {"output_dir": str(tmp_path / "run")})
    study = run_study(config)
    with pytest.raises(ConfigError) as info:
        export_policy(config, out_dir=tmp_path / "export", pick="max_accuracy")
    text = str(info.value)
    assert "has no text" in text and "s.space.yaml: prompts." in text and "fix:" in text
    space = yaml.safe_load(result.space.read_text())
    for prompt in space["prompts"]:
        prompt["user"] = "Answer yes, no or maybe: {{ input }}"
    result.space.write_text(yaml.safe_dump(space))
    exported = export_policy(load_config(result.study, {"output_dir": str(tmp_path / "run")}),
                             out_dir=tmp_path / "export", pick="max_accuracy")
    assert exported.policy.prompt.user.startswith("Answer yes") and study.trials


def test_a_histogram_pool_cannot_be_cut(tmp_path):
    from jointopt.errors import BackendError

    hist = _write_jsonl(tmp_path / "h.jsonl", [
        {"example_id": "e", "counts": {"A": 5, "B": 3}, "correct": ["A"]}])
    bank = load_bank(import_bank(hist, tmp_path / "h.bank.npz", ImportOptions()).bank)
    row = bank.find("prompt", "e", 1.0, 1)
    assert bank.pool_data(row, 8).samples == 8
    with pytest.raises(BackendError, match="scored from all its 8 samples"):
        bank.pool_data(row, 4)


def test_parquet_table(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = _samples()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s.parquet")
    from_parquet = import_bank(tmp_path / "s.parquet", tmp_path / "p.bank.npz", ImportOptions())
    from_jsonl = import_bank(_write_jsonl(tmp_path / "s.jsonl", rows), tmp_path / "j.bank.npz",
                             ImportOptions())
    a, b = load_bank(from_parquet.bank), load_bank(from_jsonl.bank)
    for name in ("sample_answer", "sample_correct", "sample_completion_tokens",
                 "hist_count", "pool_samples"):
        assert a.arrays[name].tolist() == b.arrays[name].tolist()


def test_an_imported_bank_replays_with_a_calibration_split(tmp_path):
    table = _write_jsonl(tmp_path / "s.jsonl", _samples(n_examples=12))
    result = import_bank(table, tmp_path / "s.bank.npz", ImportOptions(n_trials=3))
    config = load_config(result.study, {"output_dir": str(tmp_path / "run"),
                                        "validation": {"calibration_fraction": 0.25}})
    plan = plan_study(config)
    assert plan.calibration_task is not None and plan.calibration_task.examples
    assert len(run_study(config).proposed) == 3
