"""Record a sample bank, replay it: file format, exact reproduction of a live study, errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from jointopt.backends import CachedBackend, SampleStore, ScriptedBackend, make_backend
from jointopt.backends.bank_file import BANK_FORMAT, BANK_VERSION, SAMPLING_FIELDS, Bank
from jointopt.backends.bank_loader import load_bank
from jointopt.backends.replay import ReplayBackend
from jointopt.search.replay_check import check_replayable
from jointopt.search.config import load_config
from jointopt.errors import BackendError, ConfigError, DataError
from jointopt.strategies.base import example_seed as _seed
from jointopt.core.generation import ChatMessage, GenerationRequest
from jointopt.core.prompts import render_messages
from jointopt.search.record import record_bank, samples_needed
from jointopt.search.space import FloatRange, IntRange
from jointopt.strategies import StrategyContext
from jointopt.search.plan import plan_study, task_hash
from jointopt.search.study import run_study


def reverse_responder(request, index, rng):
    """Reverses the word list right more often with demonstrations in the prompt
    (as in test_study), sometimes in the "Answer: ..." format step_by_step asks for."""
    words = request.messages[-1].content.split(":")[-1].strip().split(", ")
    if "Answer:" in request.messages[-1].content:
        words = request.messages[-1].content.split("\n")[0].split(":")[-1].strip().split(", ")
    p_right = 0.8 if len(request.messages) > 3 else 0.35
    text = (", ".join(reversed(words)) if rng.random() < p_right
            else ", ".join(rng.sample(words, len(words))))
    if rng.random() < 0.3:
        text = f"Let me think. Answer: {text}"
    return text

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ("direct", "step_by_step", "fewshot")
N_TRIALS = 20


def _space(**changes) -> dict:
    quick = yaml.safe_load((ROOT / "search_spaces/quickstart.yaml").read_text())
    space = {
        "prompts": [p for p in quick["prompts"] if p["id"] in PROMPTS],
        "strategies": {
            "single": {},
            "majority": {"n": {"low": 2, "high": 6}},
            "best_of_n": {"n": {"low": 2, "high": 6},
                          "scorer": {"choices": ["logprob", "verifier"]}},
            "weighted_vote": {"n": {"low": 2, "high": 6}},
        },
        "temperature": {"choices": [0.0, 0.8]},
        "max_tokens": {"choices": [12, 32]},
    }
    space.update(changes)
    return space


def _config(tmp_path: Path, sub: str, space: dict | None = None, **overrides):
    space_path = tmp_path / f"space_{sub}.yaml"
    space_path.write_text(yaml.safe_dump(space or _space()))
    data = {
        "output_dir": str(tmp_path / sub),
        "search_space": str(space_path),
        "task": {"builtin": {"family": "reverse_words", "levels": [1, 2, 3],
                             "n_per_level": 3, "seed": 0}},
        "optimizer": {"n_trials": N_TRIALS},
        "tracking": {"enabled": False},
    }
    data.update(overrides)
    # Live and replayed studies draw the same pools: no free-variant expansion (its larger
    # pools are not in a bank recorded at bank.pool_size).
    data["optimizer"] = {"expand_variants": False, **data["optimizer"]}
    return load_config(ROOT / "experiments/quickstart.yaml", data)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


@pytest.fixture
def plan(tmp_path):
    return plan_study(_config(tmp_path, "plan"))


@pytest.fixture
def bank_path(plan, tmp_path):
    path = tmp_path / "bank.jsonl"
    record_bank(plan, ScriptedBackend(reverse_responder), samples=8, out=path)
    return path


# --------------------------------------------------------------------------- recording


def test_bank_file_format(plan, tmp_path):
    backend = ScriptedBackend(reverse_responder)
    out = tmp_path / "banks" / "bank.jsonl"
    seen = []
    summary = record_bank(plan, backend, samples=8, out=out,
                          progress=lambda done, total: seen.append((done, total)))
    lines = _lines(out)
    examples = plan.task.examples
    settings = len(PROMPTS) * 2 * 2
    assert summary.settings == settings and summary.pools == settings * len(examples)
    # half of the settings are greedy (temperature 0): one sample per pool
    assert summary.samples == len(examples) * len(PROMPTS) * 2 * (8 + 1)
    assert summary.generated == summary.samples and summary.cached == 0
    assert summary.samples_needed == 8 == samples_needed(plan) and summary.enough_samples
    assert seen[-1] == (summary.pools, summary.pools)
    assert not list(out.parent.glob(".*tmp")), "the temporary file is renamed away"

    header = lines[0]
    assert header["type"] == "header" and header["format"] == BANK_FORMAT
    assert header["version"] == BANK_VERSION
    assert header["model"] == "scripted" and header["model_name"] == plan.model
    assert header["task"] == plan.task.name == "reverse_words"
    assert header["dataset_hash"] == task_hash(plan.task)
    assert header["created"] and header["jointopt_version"]
    assert header["prompts"] == list(PROMPTS) and header["samples"] == 8
    assert header["temperatures"] == [0.0, 0.8] and header["max_tokens"] == [12, 32]
    assert lines[-1] == {"type": "end", "pools": summary.pools, "samples": summary.samples}

    pools = [x for x in lines if x["type"] == "pool"]
    samples = [x for x in lines if x["type"] == "sample"]
    assert len(pools) == summary.pools and len(samples) == summary.samples
    by_example = {e.id: e for e in examples}
    prompts = {p.id: p for p in plan.space.prompts}
    i = 1
    while lines[i]["type"] == "pool":
        pool = lines[i]
        members = lines[i + 1: i + 1 + pool["samples"]]
        i += 1 + pool["samples"]
        assert set(pool["sampling"]) == set(SAMPLING_FIELDS)
        example = by_example[pool["example_id"]]
        template = prompts[pool["prompt_id"]]
        messages = render_messages(template, plan.task, example)
        assert pool["messages"] == [{"role": m.role, "content": m.content} for m in messages]
        s = pool["sampling"]
        request = GenerationRequest(messages=messages, temperature=s["temperature"],
                                    max_tokens=s["max_tokens"], top_p=s["top_p"],
                                    logprobs=s["logprobs"], stop=tuple(s["stop"]),
                                    continuation=s["continuation"])
        assert pool["key"] == request.sampling_key()
        assert pool["samples"] == (1 if s["temperature"] == 0 else 8)
        ctx = StrategyContext(example=example, task=plan.task, messages=messages,
                              temperature=s["temperature"], max_tokens=s["max_tokens"],
                              answer_regex=template.answer_regex)
        assert pool["prompt_tokens"] == backend.prompt_tokens(request) > 0
        assert [m["index"] for m in members] == list(range(pool["samples"]))
        for m in members:
            assert m["type"] == "sample" and m["key"] == pool["key"]
            assert (m["prompt_id"], m["example_id"]) == (pool["prompt_id"], pool["example_id"])
            assert (m["temperature"], m["max_tokens"]) == (s["temperature"], s["max_tokens"])
            assert m["completion_tokens"] == len(m["token_ids"]) <= s["max_tokens"]
            assert m["prompt_tokens"] == pool["prompt_tokens"]
            assert m["finish_reason"] in ("stop", "length")
            assert len(m["logprobs"]) == len(m["token_ids"])
            assert m["sum_logprob"] == pytest.approx(sum(m["logprobs"]))
            assert m["mean_logprob"] == pytest.approx(sum(m["logprobs"]) / len(m["logprobs"]))
            assert m["answer"] == ctx.extract(m["text"])
            assert m["correct"] == plan.task.is_correct(example, m["answer"])
    assert lines[i]["type"] == "end"
    assert any(m["correct"] for m in samples) and not all(m["correct"] for m in samples)


def test_recording_batches_whole_settings(plan, tmp_path):
    examples = len(plan.task.examples)
    one_call = ScriptedBackend(reverse_responder)
    record_bank(plan, one_call, samples=8, out=tmp_path / "a.jsonl")
    assert one_call.calls == 1 and one_call.requests_seen == 12 * examples
    per_setting = ScriptedBackend(reverse_responder)
    summary = record_bank(plan, per_setting, samples=8, out=tmp_path / "b.jsonl",
                          batch_samples=1)
    assert per_setting.calls == summary.engine_calls == 12  # one call per setting, never less
    assert (tmp_path / "a.jsonl").read_text().split("\n", 1)[1] == (
        tmp_path / "b.jsonl").read_text().split("\n", 1)[1], "batching changes nothing"


def test_recording_uses_the_evaluators_requests(plan, tmp_path):
    """Same messages, sampling and per-example seeds as the evaluator's pool requests."""
    from jointopt.testing import RecordingBackend

    backend = RecordingBackend(ScriptedBackend(reverse_responder))
    record_bank(plan, backend, samples=4, out=tmp_path / "bank.jsonl")
    requests = [r.request for batch in backend.batches for r in batch]
    for request in requests:
        assert request.logprobs and request.offset == 0 and request.continuation == ""
    by_id = {e.id: e for e in plan.task.examples}
    first = requests[: len(by_id)]
    assert [r.seed for r in first] == [_seed(plan.config.seed, e) for e in by_id]


def test_continuous_ranges_cannot_be_recorded(tmp_path):
    plan = plan_study(_config(tmp_path, "c", _space(temperature={"low": 0.0, "high": 1.0})))
    with pytest.raises(ConfigError) as info:
        record_bank(plan, ScriptedBackend(), samples=2, out=tmp_path / "x.jsonl")
    assert "temperature" in str(info.value) and "choices" in str(info.value)
    assert not (tmp_path / "x.jsonl").exists()
    # an integer max_tokens range is a finite set: every integer is recorded
    plan = plan_study(_config(tmp_path, "d", _space(max_tokens={"low": 8, "high": 10},
                                                    temperature=0.0)))
    summary = record_bank(plan, ScriptedBackend(), samples=2, out=tmp_path / "y.jsonl")
    assert summary.settings == len(PROMPTS) * 3
    assert load_bank(tmp_path / "y.jsonl").max_tokens == {8, 9, 10}


def test_bad_sample_counts_are_rejected(plan, tmp_path):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError) as info:
            record_bank(plan, ScriptedBackend(), samples=bad, out=tmp_path / "x.jsonl")
        assert "samples" in str(info.value)


def test_a_failed_recording_leaves_no_file(plan, tmp_path):
    class Broken(ScriptedBackend):
        def generate(self, requests):
            return super().generate(requests)[:-1]

    out = tmp_path / "bank.jsonl"
    with pytest.raises(BackendError, match="wrong number of results"):
        record_bank(plan, Broken(reverse_responder), samples=2, out=out)
    assert not out.exists()
    assert not list(tmp_path.glob(".bank.jsonl*")), "the temporary file is removed"


# --------------------------------------------------------------------------- live == replay


def _trial_rows(result):
    return [(t.number, t.params, t.accuracy, t.mean_tokens) for t in result.trials]


def test_replay_reproduces_the_live_study(tmp_path):
    live_config = _config(tmp_path, "live")
    live = run_study(live_config, backend=ScriptedBackend(reverse_responder))
    assert len(live.proposed) == N_TRIALS
    used = {(t.params["prompt"], t.params["temperature"], t.params["max_tokens"])
            for t in live.trials}
    assert len(used) == 12, f"the live study should touch every setting, touched {used}"

    # Record from the live study's sample store: nothing is generated again.
    plan = plan_study(live_config)
    inner = ScriptedBackend(reverse_responder)
    store = SampleStore(plan.out_dir / "samples.sqlite")
    bank_path = tmp_path / "bank.jsonl"
    try:
        summary = record_bank(plan, CachedBackend(inner, store),
                              samples=8, out=bank_path)  # the live pool size
    finally:
        store.close()
    assert inner.requests_seen == 0 and inner.calls == 0
    assert summary.generated == 0 and summary.cached == summary.samples

    # Replay from a fresh output dir with the same optimizer seed.
    replay_config = _config(tmp_path, "replayed")
    replay = ReplayBackend(bank_path)
    check_replayable(plan_study(replay_config).space, replay,
                     task=plan_study(replay_config).task, pool_size=8)
    replayed = run_study(replay_config, backend=replay)
    assert replay.requests_seen > 0
    assert _trial_rows(replayed) == _trial_rows(live)
    assert [t.policy.describe() for t in replayed.pareto] == [
        t.policy.describe() for t in live.pareto]


def test_replay_reproduces_the_held_out_scores(tmp_path):
    """With a test split, the Pareto front is re-scored on held-out examples: recorded too."""
    split = {"test_fraction": 0.34, "seed": 1, "resamples": 200}
    live_config = _config(tmp_path, "live", validation=split,
                          optimizer={"n_trials": 12})
    live = run_study(live_config, backend=ScriptedBackend(reverse_responder))
    assert all(t.test is not None for t in live.pareto)

    plan = plan_study(live_config)
    assert plan.test_task is not None and plan.test_task.examples
    bank_path = tmp_path / "bank.jsonl"
    summary = record_bank(plan, ScriptedBackend(reverse_responder), samples=8, out=bank_path)
    examples = len(plan.task.examples) + len(plan.test_task.examples)
    assert summary.pools == 12 * examples
    bank = load_bank(bank_path)
    assert bank.header["dataset_hash"] == task_hash(plan.task)
    assert bank.header["test_dataset_hash"] == task_hash(plan.test_task)
    check_replayable(plan.space, bank, task=plan.task, test_task=plan.test_task, pool_size=8)

    replay_config = _config(tmp_path, "replayed", validation=split,
                            optimizer={"n_trials": 12})
    replayed = run_study(replay_config, backend=ReplayBackend(bank))
    assert _trial_rows(replayed) == _trial_rows(live)
    assert [(t.number, t.test) for t in replayed.pareto] == [
        (t.number, t.test) for t in live.pareto]

    # a bank without the held-out examples cannot serve this study
    no_split = plan_study(_config(tmp_path, "nosplit"))
    path = tmp_path / "nosplit.jsonl"
    record_bank(no_split, ScriptedBackend(reverse_responder), samples=8, out=path)
    with pytest.raises(ConfigError) as info:
        check_replayable(plan.space, load_bank(path), task=plan.task,
                         test_task=plan.test_task)
    assert "dataset_hash" in str(info.value) and task_hash(plan.task) in str(info.value)


def test_replay_through_the_registry_and_a_sample_store(bank_path, tmp_path):
    bank = load_bank(bank_path)
    for backend in (make_backend("replay", bank=bank_path),
                    make_backend("replay", model="whatever", seed=3, max_model_len=512,
                                 engine_kwargs={"bank": str(bank_path)})):
        assert isinstance(backend, ReplayBackend) and backend.model_id == "scripted"
    pool = next(p for p in bank.pools.values() if p.temperature > 0)
    request = _request_for(bank, pool.key, n=8)
    cached = CachedBackend(ReplayBackend(bank), SampleStore(tmp_path / "s.sqlite"))
    first = cached.generate([replace(request, n=3)])[0]
    grown = cached.generate([request])[0]
    assert grown.completions[:3] == first.completions and grown.cached == 3
    assert grown.completions == ScriptedBackend(reverse_responder).generate(
        [request])[0].completions
    with pytest.raises(BackendError, match="needs a bank"):
        make_backend("replay")
    with pytest.raises(BackendError, match="unknown engine options"):
        make_backend("replay", engine_kwargs={"bank": str(bank_path), "gpu": 1})


# --------------------------------------------------------------------------- contract


def _request_for_v1(bank: Bank, key: str, n: int = 1, offset: int = 0) -> GenerationRequest:
    """The request of a recorded pool of a version-1 bank."""
    return _request_for(bank, key, n, offset)


def _request_for(bank: Bank, key: str, n: int = 1, offset: int = 0) -> GenerationRequest:
    with bank.path.open(encoding="utf-8") as fh:
        line = next(json.loads(x) for x in fh if f'"key":"{key}"' in x)
    s = line["sampling"]
    return GenerationRequest(
        messages=tuple(ChatMessage(m["role"], m["content"]) for m in line["messages"]),
        n=n, offset=offset, temperature=s["temperature"], max_tokens=s["max_tokens"],
        top_p=s["top_p"], logprobs=s["logprobs"], stop=tuple(s["stop"]),
        continuation=s["continuation"], seed=line["seed"])


class TestReplayBackendContract:
    """What ``BackendContract`` checks, on recorded requests (arbitrary prompts are not)."""

    @pytest.fixture
    def backend(self, bank_path):
        return ReplayBackend(bank_path)

    @pytest.fixture
    def sampled(self, backend):
        pools = [p for p in backend.bank.pools.values() if p.temperature > 0]
        return [_request_for(backend.bank, p.key) for p in pools[:5]]

    def test_one_result_per_request_in_order(self, backend, sampled):
        requests = [replace(r, n=1 + i % 3) for i, r in enumerate(sampled)]
        results = backend.generate(requests)
        assert len(results) == len(requests) and backend.calls == 1
        for request, result in zip(requests, results):
            assert result.request == request
            assert len(result.completions) == request.n
            assert result.prompt_tokens > 0 and result.cached == request.n

    def test_same_samples_as_the_recording_engine(self, backend, sampled):
        live = ScriptedBackend(reverse_responder)
        requests = [replace(r, n=8) for r in sampled]
        for mine, theirs in zip(backend.generate(requests), live.generate(requests)):
            assert mine.completions == theirs.completions
            assert mine.prompt_tokens == theirs.prompt_tokens

    def test_offsets_select_later_samples(self, backend, sampled):
        whole = backend.generate([replace(sampled[0], n=8)])[0].completions
        parts = backend.generate([replace(sampled[0], n=3), replace(sampled[0], n=5, offset=3)])
        assert parts[0].completions + parts[1].completions == whole

    def test_token_ids_and_finish_reasons(self, backend, sampled):
        for result in backend.generate([replace(r, n=8) for r in sampled]):
            for c in result.completions:
                assert 1 <= c.num_tokens <= result.request.max_tokens
                assert c.finish_reason in ("stop", "length")

    def test_logprobs_when_asked(self, backend, sampled):
        on, off = backend.generate([sampled[0], replace(sampled[0], logprobs=False)])
        for c in on.completions:
            assert c.logprobs is not None and len(c.logprobs) == c.num_tokens
            assert all(lp <= 0.0 for lp in c.logprobs)
        assert [c.logprobs for c in off.completions] == [None]
        assert off.completions[0].text == on.completions[0].text

    def test_greedy_requests_get_one_sample_and_copies(self, backend):
        pool = next(p for p in backend.bank.pools.values() if p.temperature == 0)
        assert pool.samples == 1
        one, four, later = backend.generate([
            _request_for(backend.bank, pool.key),
            _request_for(backend.bank, pool.key, n=4),
            _request_for(backend.bank, pool.key, n=2, offset=3)])
        assert four.completions == one.completions * 4 and four.copies == 3
        assert four.completion_tokens == one.completion_tokens
        assert later.completions == one.completions * 2

    def test_model_id_is_stable(self, backend):
        assert backend.model_id == backend.model_id == backend.bank.header["model"]


# --------------------------------------------------------------------------- errors


def test_unknown_request_names_prompt_settings_and_fix(bank_path):
    backend = ReplayBackend(bank_path)
    pool = next(p for p in backend.bank.pools.values() if p.temperature > 0)
    known = _request_for(backend.bank, pool.key)
    with pytest.raises(BackendError) as info:
        backend.generate([replace(known, temperature=0.5)])
    text = str(info.value)
    assert "request not in the recorded bank" in text
    assert pool.preview[:40] in text and "'temperature': 0.5" in text
    assert "recorded only with (temperature, max_tokens)" in text
    assert "single, majority, best_of_n, weighted_vote" in text and "record" in text
    with pytest.raises(BackendError) as info:
        backend.generate([GenerationRequest(messages=(ChatMessage("user", "x" * 200),))])
    assert "no pool of the bank has this prompt" in str(info.value)
    assert "x" * 77 + "..." in str(info.value) and "x" * 81 not in str(info.value)
    with pytest.raises(BackendError) as info:
        backend.generate([replace(known, continuation="Partial answer")])
    assert "sequential or tree strategy" in str(info.value)


def test_too_few_samples_names_counts_and_fix(bank_path):
    backend = ReplayBackend(bank_path)
    pool = next(p for p in backend.bank.pools.values() if p.temperature > 0)
    with pytest.raises(BackendError) as info:
        backend.generate([_request_for(backend.bank, pool.key, n=6, offset=4)])
    text = str(info.value)
    assert "holds 8 samples" in text and "needs 10" in text
    assert "'recorded': 8" in text and "'needed': 10" in text
    assert "--samples >= 10" in text and f"{bank_path}:{pool.line}" in text


def test_check_replayable_accepts_the_recorded_space(plan, bank_path):
    check_replayable(plan.space, load_bank(bank_path), task=plan.task, pool_size=8)
    check_replayable(plan.space, ReplayBackend(bank_path))


@pytest.mark.parametrize("strategy,params", [
    ("revision", {}), ("adaptive_majority", {}), ("mcts", {}),
])
def test_check_replayable_rejects_non_parallel_strategies(tmp_path, bank_path, strategy,
                                                          params):
    space = _space()
    space["strategies"][strategy] = params
    plan = plan_study(_config(tmp_path, "np", space))
    with pytest.raises(ConfigError) as info:
        check_replayable(plan.space, load_bank(bank_path), task=plan.task)
    text = str(info.value)
    assert repr(strategy) in text and f"strategies.{strategy}" in text
    assert "not scored from sample pools" in text and "weighted_vote" in text


def test_check_replayable_rejects_settings_missing_from_the_bank(tmp_path, bank_path):
    bank = load_bank(bank_path)
    cases = [
        (_space(temperature={"choices": [0.0, 0.5]}), "temperature values [0.5]"),
        (_space(max_tokens=64), "max_tokens values [64]"),
        (_space(temperature={"low": 0.0, "high": 0.8}), "continuous range"),
    ]
    quick = yaml.safe_load((ROOT / "search_spaces/quickstart.yaml").read_text())
    strict = next(p for p in quick["prompts"] if p["id"] == "strict")
    cases.append((_space(prompts=_space()["prompts"] + [strict]), "['strict'] are not in"))
    edited = _space()
    edited["prompts"][0] = {**edited["prompts"][0], "user": "Please: {{ question }}"}
    cases.append((edited, "renders differently"))
    for i, (space, expected) in enumerate(cases):
        plan = plan_study(_config(tmp_path, f"m{i}", space))
        with pytest.raises(ConfigError) as info:
            check_replayable(plan.space, bank, task=plan.task, pool_size=8)
        assert expected in str(info.value), str(info.value)


def test_check_replayable_needs_enough_samples(tmp_path, plan):
    path = tmp_path / "small.jsonl"
    record_bank(plan, ScriptedBackend(reverse_responder), samples=4, out=path)
    bank = load_bank(path)
    with pytest.raises(ConfigError) as info:
        check_replayable(plan.space, bank, task=plan.task, pool_size=8)
    text = str(info.value)
    assert "holds 4 samples" in text and "needs 8" in text and "--samples >= 8" in text
    with pytest.raises(ConfigError, match="needs 6"):  # strategies go up to n=6
        check_replayable(plan.space, bank, task=plan.task, pool_size=None)
    small = replace(plan.space, strategies={"majority": {"n": IntRange(2, 4)}})
    check_replayable(small, bank, task=plan.task, pool_size=None)
    with pytest.raises(ConfigError, match="continuous range"):
        check_replayable(replace(small, temperature=FloatRange(0.0, 0.8)), bank)


def test_check_replayable_rejects_another_dataset(tmp_path, bank_path):
    other = _config(tmp_path, "other", task={"builtin": {"family": "reverse_words",
                                                        "n_per_level": 3, "seed": 1}})
    plan = plan_study(other)
    bank = load_bank(bank_path)
    with pytest.raises(ConfigError) as info:
        check_replayable(plan.space, bank, task=plan.task)
    text = str(info.value)
    assert bank.dataset_hash in text and task_hash(plan.task) in text
    assert "dataset_hash" in text


def _rewrite(path: Path, tmp_path: Path, edit) -> Path:
    lines = path.read_text("utf-8").splitlines(keepends=True)
    out = tmp_path / "edited.jsonl"
    out.write_text("".join(edit(lines)), "utf-8")
    return out


def _header_with(**changes):
    def edit(lines):
        header = {**json.loads(lines[0]), **changes}
        return [json.dumps(header) + "\n"] + lines[1:]
    return edit


@pytest.mark.parametrize("edit,message,line", [
    (_header_with(format="something-else"), "not a jointopt bank", 1),
    (_header_with(version=99), "unknown bank format version", 1),
    (_header_with(dataset_hash="abc"), "bad value of 'dataset_hash'", 1),
    (lambda lines: lines[:2] + ['{"type": "sample", "key": \n'] + lines[3:],
     "malformed line: not valid JSON", 3),
    (lambda lines: lines[:2] + ["[1, 2]\n"] + lines[3:], "every line is a JSON object", 3),
    (lambda lines: lines[:2] + ["\n"] + lines[3:], "empty line", 3),
    (lambda lines: lines[:-1], "truncated bank: no end line", None),
    (lambda lines: lines[:3], "truncated bank", None),
    (lambda lines: lines[:1] + lines[2:], "sample line outside a pool", 2),
    (lambda lines: lines[:1] + [lines[1].replace('"prompt_tokens"', '"prompt_tok"')]
     + lines[2:], "missing field 'prompt_tokens'", 2),
    (lambda lines: lines[:1] + [lines[1].replace("Reverse", "Invert")] + lines[2:],
     "pool key does not match", 2),
    (lambda lines: lines + ['{"type": "pool"}\n'], "line after the end line", None),
    (lambda lines: lines[:1] + ['{"type": "comment"}\n'] + lines[1:], "unknown line type", 2),
])
def test_bad_bank_files_name_file_and_line(bank_path, tmp_path, edit, message, line):
    bad = _rewrite(bank_path, tmp_path, edit)
    with pytest.raises(DataError) as info:
        load_bank(bad)
    assert message in str(info.value)
    if line is not None:
        assert f"{bad}:{line}:" in str(info.value)


def test_missing_bank_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="bank file not found") as info:
        load_bank(tmp_path / "nope.jsonl")
    assert "jointopt record" in str(info.value)


def test_a_changed_bank_file_is_detected(bank_path):
    backend = ReplayBackend(bank_path)
    pool = next(iter(backend.bank.pools.values()))
    with bank_path.open("a") as fh:
        fh.write("\n")
    with pytest.raises(BackendError, match="changed after it was loaded"):
        backend.generate([_request_for(backend.bank, pool.key)])


# --------------------------------------------------------------------------- CLI


def test_record_command(tmp_path, capsys, monkeypatch):
    import argparse

    from jointopt.cli import record as cli_record

    config_path = tmp_path / "study.yaml"
    cfg = yaml.safe_load((ROOT / "experiments/quickstart.yaml").read_text())
    cfg.update(search_space=str(tmp_path / "space.yaml"), output_dir=str(tmp_path / "run"),
               task={"builtin": {"family": "reverse_words", "levels": [1],
                                 "n_per_level": 2}})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(_space()))
    config_path.write_text(yaml.safe_dump(cfg))
    built = []

    def fake_backend(config):
        built.append(config.model.backend)
        return ScriptedBackend(reverse_responder)

    monkeypatch.setattr(cli_record, "build_backend", fake_backend)
    parser = argparse.ArgumentParser()
    cli_record.add_record_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "bank.jsonl"
    args = parser.parse_args(["record", str(config_path), "--out", str(out)])
    assert args.samples is None
    assert cli_record.run_record(args) == 0
    assert built == ["vllm"]
    text = capsys.readouterr().out
    assert "wrote" in text and "backend: replay" in text
    bank = load_bank(out)
    assert bank.header["samples"] == 8  # default: what the study draws at most
    assert (tmp_path / "run" / "samples.sqlite").exists(), "samples go to the study store"
    # a second recording reuses the store: nothing generated
    args = parser.parse_args(["record", str(config_path), "--out", str(out), "--samples", "8"])
    assert cli_record.run_record(args) == 0
    assert "0 generated" in capsys.readouterr().out


def test_record_command_fails_before_the_engine_loads(tmp_path, monkeypatch):
    import argparse

    from jointopt.cli import record as cli_record

    def no_engine(config):
        raise AssertionError("the engine must not be built")

    monkeypatch.setattr(cli_record, "build_backend", no_engine)
    parser = argparse.ArgumentParser()
    cli_record.add_record_parser(parser.add_subparsers(dest="command"))
    cfg = yaml.safe_load((ROOT / "experiments/quickstart.yaml").read_text())
    for i, (space, argv, message) in enumerate([
        (_space(), ["--samples", "0"], "`samples` must be an integer >= 1"),
        (_space(temperature={"low": 0.1, "high": 0.9}), [], "continuous range"),
    ]):
        (tmp_path / f"space{i}.yaml").write_text(yaml.safe_dump(space))
        cfg.update(search_space=str(tmp_path / f"space{i}.yaml"),
                   output_dir=str(tmp_path / "run"))
        (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
        args = parser.parse_args(["record", str(tmp_path / "study.yaml"), "--out",
                                  str(tmp_path / "bank.jsonl"), *argv])
        with pytest.raises(ConfigError, match=message):
            cli_record.run_record(args)
        assert not (tmp_path / "bank.jsonl").exists()


# --------------------------------------------------------------------------- config-driven replay


def _has_bank_field() -> bool:
    from jointopt.search.config import ModelConfig

    return "bank" in ModelConfig.model_fields


@pytest.mark.skipif(not _has_bank_field(),
                    reason="needs ModelConfig.bank and the replay hook in plan_study (not applied yet)")
def test_a_replay_config_runs_offline_like_the_live_study(tmp_path):
    live_config = _config(tmp_path, "live", optimizer={"n_trials": 10})
    live = run_study(live_config, backend=ScriptedBackend(reverse_responder))
    record_bank(plan_study(live_config), ScriptedBackend(reverse_responder), samples=8,
                out=tmp_path / "bank.jsonl")

    cfg = yaml.safe_load((ROOT / "experiments/quickstart.yaml").read_text())
    cfg.update(model={"backend": "replay", "bank": "bank.jsonl", "model": "not-on-this-laptop"},
               search_space="space.yaml", output_dir=str(tmp_path / "replayed"),
               task={"builtin": {"family": "reverse_words", "levels": [1, 2, 3],
                                 "n_per_level": 3, "seed": 0}},
               optimizer={"n_trials": 10, "expand_variants": False},
               tracking={"enabled": False})
    (tmp_path / "replay.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(_space()))
    config = load_config(tmp_path / "replay.yaml")
    assert plan_study(config).model == "smollm2-135m-instruct"  # the recorded model
    replayed = run_study(config)
    assert _trial_rows(replayed) == _trial_rows(live)

    # checked before any compute: strategies, the bank file, bank without replay
    space = _space()
    space["strategies"]["mcts"] = {}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    with pytest.raises(ConfigError, match="'mcts'"):
        plan_study(load_config(tmp_path / "replay.yaml"))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(_space()))
    with pytest.raises(ConfigError, match="bank file not found"):
        plan_study(load_config(tmp_path / "replay.yaml", {"model": {"bank": "nope.jsonl"}}))
    with pytest.raises(ConfigError, match="needs a bank file"):
        plan_study(load_config(tmp_path / "replay.yaml", {"model": {"bank": None}}))
    with pytest.raises(ConfigError, match="backend: replay"):
        plan_study(load_config(tmp_path / "replay.yaml", {"model": {"backend": "vllm"}}))


def test_proposal_entries_are_refused_before_any_compute(plan, bank_path, tmp_path):
    space = replace(plan.space, entries=(*plan.space.entries, {"propose": {"k": 2}}))
    assert space.proposals
    with pytest.raises(ConfigError, match="propose"):
        record_bank(replace(plan, space=space), ScriptedBackend(), samples=2,
                    out=tmp_path / "x.jsonl")
    with pytest.raises(ConfigError, match="propose"):
        check_replayable(space, load_bank(bank_path))


@pytest.mark.parametrize("kind", ["probe", "predictor", "oracle"])
def test_fitted_difficulty_sources_are_refused_before_any_compute(plan, bank_path, tmp_path,
                                                                  kind):
    from jointopt._registry import DIFFICULTY_SOURCES

    settings = {"n_bins": 2, "probe_k": 2, "probe_temperature": 0.7, "probe_max_tokens": 16,
                "oracle_samples": 4}
    space = replace(plan.space,
                    difficulty_source=DIFFICULTY_SOURCES.load(kind).from_config(settings))
    engine = ScriptedBackend()
    for attempt in (lambda: check_replayable(space, load_bank(bank_path)),
                    lambda: record_bank(replace(plan, space=space), engine, samples=2,
                                        out=tmp_path / "x.jsonl")):
        with pytest.raises(ConfigError) as info:
            attempt()
        assert info.value.where.endswith("difficulty.source") and info.value.value == kind
    assert engine.calls == 0 and not (tmp_path / "x.jsonl").exists()
