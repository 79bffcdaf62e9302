"""The columnar (version 2) bank: written by `record`, read back, replayed from arrays."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from jointopt.backends import ScriptedBackend
from jointopt.backends.bank_columns import ColumnBank
from jointopt.backends.bank_loader import load_bank
from jointopt.backends.replay import ReplayBackend
from jointopt.banks.convert import convert
from jointopt.banks.importer import ImportOptions
from jointopt.errors import BackendError, DataError
from jointopt.search.plan import plan_study
from jointopt.search.record import record_bank
from jointopt.search.replay_check import check_replayable
from jointopt.search.study import run_study

from test_record_replay import _config, _request_for_v1, _trial_rows, reverse_responder


@pytest.fixture
def recorded(tmp_path):
    plan = plan_study(_config(tmp_path, "plan"))
    v2 = tmp_path / "bank.npz"
    v1 = tmp_path / "bank.jsonl"
    record_bank(plan, ScriptedBackend(reverse_responder), samples=8, out=v2)
    record_bank(plan, ScriptedBackend(reverse_responder), samples=8, out=v1)
    return plan, v1, v2


def test_record_writes_v2_with_the_same_pools_as_v1(recorded):
    plan, v1, v2 = recorded
    old, new = load_bank(v1), load_bank(v2)
    assert isinstance(new, ColumnBank) and new.header["version"] == 2
    assert set(old.pools) == set(new.pools)
    assert v2.stat().st_size < v1.stat().st_size / 3
    for key, pool in old.pools.items():
        assert new.pools[key].samples == pool.samples
        with v1.open("rb") as fh:
            assert new.read(None, new.pools[key], 0, pool.samples) == old.read(
                fh, pool, 0, pool.samples)


def test_v2_replay_serves_the_recorded_completions(recorded):
    plan, v1, v2 = recorded
    old, new = ReplayBackend(v1), ReplayBackend(v2)
    pool = next(p for p in old.bank.pools.values() if p.temperature > 0)
    request = _request_for_v1(old.bank, pool.key, n=5, offset=2)
    assert new.generate([request])[0].completions == old.generate([request])[0].completions
    assert new.generate([request])[0].prompt_tokens == pool.prompt_tokens


def test_v2_replay_reproduces_the_live_study(tmp_path):
    live_config = _config(tmp_path, "live")
    live = run_study(live_config, backend=ScriptedBackend(reverse_responder))
    plan = plan_study(live_config)
    bank_path = tmp_path / "bank.npz"
    record_bank(plan, ScriptedBackend(reverse_responder), samples=8, out=bank_path)
    replay = ReplayBackend(bank_path)
    check_replayable(plan.space, replay.bank, task=plan.task, pool_size=8)
    replayed = run_study(_config(tmp_path, "replayed"), backend=replay)
    assert replay.requests_seen > 0 and replay.calls > 0
    assert [(n, p) for n, p, *_ in _trial_rows(replayed)] == [
        (n, p) for n, p, *_ in _trial_rows(live)]
    for (_, _, acc, tok), (_, _, acc2, tok2) in zip(_trial_rows(replayed), _trial_rows(live)):
        assert acc == pytest.approx(acc2, abs=1e-12) and tok == pytest.approx(tok2, abs=1e-9)


def test_the_documented_reader_reads_a_bank(recorded):
    """docs/bank_format.md's plain-Python reader agrees with the loader."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs/bank_format.md").read_text()
    code = text.split("```python\n")[1].split("```")[0]
    assert len(code.strip().splitlines()) <= 22
    space: dict = {}
    exec(compile(code, "bank_format.md", "exec"), space)
    _, _, v2 = recorded
    bank = load_bank(v2)
    pools = list(space["read_bank"](v2))
    assert len(pools) == len(bank.arrays["pool_prompt"])
    for pool in pools[:20]:
        data = bank.pool_data(bank.find(pool["prompt"], pool["example"], pool["temperature"],
                                        pool["max_tokens"]), pool["samples"])
        assert pool["counts"] == {a: (int(n), bool(ok)) for a, n, ok in zip(
            data.answers, data.counts.tolist(), data.correct.tolist())}


def test_damaged_or_oversized_v2_banks_are_refused(recorded, tmp_path, monkeypatch):
    _, _, v2 = recorded
    arrays = dict(np.load(v2))
    arrays["hist_count"] = arrays["hist_count"].copy()
    arrays["hist_count"][0] += 1
    bad = tmp_path / "bad.npz"
    with bad.open("wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(DataError, match="histogram counts sum to"):
        load_bank(bad)
    del arrays["sample_answer"]
    with bad.open("wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(DataError, match="lacks arrays"):
        load_bank(bad)
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(v2.read_bytes()[:200])
    with pytest.raises(DataError, match="not a readable .npz bank"):
        load_bank(truncated)
    monkeypatch.setenv("JOINTOPT_MAX_BANK_MB", "0.001")
    with pytest.raises(DataError, match="JOINTOPT_MAX_BANK_MB"):
        load_bank(v2)


def test_v2_pool_requests_are_checked(recorded):
    plan, _, v2 = recorded
    backend = ReplayBackend(v2)
    ctx_request = _request_for_v1(load_bank(recorded[1]), next(
        k for k, p in load_bank(recorded[1]).pools.items() if p.temperature > 0), n=4)
    prompt_id = backend.bank.pools[ctx_request.sampling_key()].prompt_id
    example_id = backend.bank.pools[ctx_request.sampling_key()].example_id
    [data] = backend.pool_data([ctx_request], [(prompt_id, example_id)])
    assert data.samples == 4 and data.sample_group is not None
    with pytest.raises(BackendError, match="holds 8 samples"):
        backend.pool_data([replace(ctx_request, n=9)], [(prompt_id, example_id)])
    with pytest.raises(BackendError, match="request not in the recorded bank"):
        backend.pool_data([ctx_request], [("nope", example_id)])
    import os

    os.utime(v2, ns=(1, 1))
    with pytest.raises(BackendError, match="changed after it was loaded"):
        backend.pool_data([ctx_request], [(prompt_id, example_id)])


def test_v1_bank_converts_sample_for_sample_and_replays_the_same(tmp_path):
    config = _config(tmp_path, "live", optimizer={"n_trials": 8})
    v1 = tmp_path / "old.jsonl"
    record_bank(plan_study(config), ScriptedBackend(reverse_responder), samples=8, out=v1)
    converted = convert("v1", v1, tmp_path / "new.bank.npz", ImportOptions())
    old, new = load_bank(v1), load_bank(converted.bank)
    assert isinstance(new, ColumnBank) and set(old.pools) == set(new.pools)
    key = next(k for k, p in old.pools.items() if p.samples == 8)
    with v1.open("rb") as fh:
        assert new.read(None, new.pools[key], 0, 8) == old.read(fh, old.pools[key], 0, 8)
    first = run_study(_config(tmp_path, "a", optimizer={"n_trials": 8}),
                      backend=ReplayBackend(v1))
    second = run_study(_config(tmp_path, "b", optimizer={"n_trials": 8}),
                       backend=ReplayBackend(converted.bank))
    for one, two in zip(_trial_rows(first), _trial_rows(second)):
        assert one[:2] == two[:2] and one[2] == pytest.approx(two[2], abs=1e-12)
