"""Tests of the policy file (jointopt.core.policy_file) and the runtime (jointopt.serving.runtime)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml

from jointopt.backends import ScriptedBackend
from jointopt.errors import ConfigError, DataError
from jointopt.evaluation.evaluate import evaluate
from jointopt.core.policy import SCHEMA_VERSION, Allocation, DifficultySpec, Policy
from jointopt.core.policy_file import load_policy_file, save_policy
from jointopt.core.prompts import PromptTemplate
from jointopt.serving.runtime import Answer, PolicyRunner, load_policy, task_from_spec, task_spec
from jointopt.testing import RecordingBackend, noisy_responder, toy_task

pytestmark = pytest.mark.timeout(60)


def _policy(strategy: str = "majority", params=None, *, shots: int = 1, bins=None,
            difficulty: DifficultySpec | None = None, task=None, **prompt) -> Policy:
    task = task or toy_task()
    template = PromptTemplate(id="p", user=prompt.pop("user", "{{ question }}"),
                              system=prompt.pop("system", "Answer briefly."), shots=shots,
                              **prompt)
    bins = bins or {"all": Allocation(strategy, 0.7, 16, params if params is not None
                                      else ({"n": 3} if strategy != "single" else {}))}
    return Policy(model="smollm2-135m-instruct", prompt=template, bins=bins,
                  difficulty=difficulty or DifficultySpec(),
                  metadata={"task": task_spec(task, shots),
                            "metrics": {"n_examples": 6, "accuracy": {"estimate": 0.5,
                                                                      "low": 0.2, "high": 0.8}},
                            "provenance": {"study_name": "s", "trial_number": 3}})


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    return save_policy(_policy(), tmp_path / "policy.yaml")


# ------------------------------------------------------------------------------ policy file


@pytest.mark.parametrize("name", ["policy.yaml", "policy.yml", "policy.json"])
def test_round_trip(tmp_path, name):
    policy = _policy()
    path = save_policy(policy, tmp_path / name)
    loaded = load_policy_file(path)
    assert loaded == policy
    assert loaded.metadata["task"]["extractor"] == {"kind": "last_number"}
    assert loaded.metadata["provenance"]["trial_number"] == 3
    assert dict(loaded.bins["all"].params) == {"n": 3}
    text = path.read_text()
    if name.endswith(".json"):
        assert json.loads(text)["schema_version"] == SCHEMA_VERSION
    else:
        assert text.startswith("# jointopt policy file")


def test_round_trip_with_label_bins(tmp_path):
    bins = {"1": Allocation("single", 0.0, 8), "3": Allocation("majority", 0.8, 24, {"n": 5})}
    policy = _policy(bins=bins, difficulty=DifficultySpec(source="label", bins=("1", "3"),
                                                          default_bin="3"))
    assert load_policy_file(save_policy(policy, tmp_path / "p.yaml")) == policy


def _edit(path: Path, edit) -> Path:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    return path


def _fails(path: Path, *needles: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_policy_file(path)
    text = str(info.value)
    assert str(path) in text and "fix:" in text, text
    for needle in needles:
        assert needle in text, text
    return text


def test_unknown_schema_version_is_refused_clearly(policy_file):
    _edit(policy_file, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    text = _fails(policy_file, "schema_version", f"reads schema_version {SCHEMA_VERSION}",
                  "upgrade jointopt")
    assert "unsupported" in text


@pytest.mark.parametrize("edit, needles", [
    (lambda d: d.pop("schema_version"), ["no schema_version"]),
    (lambda d: d.update(schema_version="1"), ["must be an integer"]),
    (lambda d: d.update(bnis=d.pop("bins")), ["unknown key 'bnis'", "did you mean 'bins'"]),
    (lambda d: d["bins"]["all"].update(temperature=-1), ["bins.all.temperature"]),
    (lambda d: d["bins"]["all"].update(strategy="majorty"), ["bins.all", "did you mean 'majority'"]),
    (lambda d: d["bins"]["all"]["params"].update(n=0), ["bins.all", "n"]),
    (lambda d: d["bins"]["all"]["params"].update(k=2), ["unknown parameter", "bins.all"]),
    (lambda d: d.update(bins={}), ["bins"]),
    (lambda d: d["prompt"].update(user="{{ question "), ["prompt", "syntax"]),
    (lambda d: d["prompt"].update(user="{{ questoin }}"), ["prompt.user", "did you mean"]),
    (lambda d: d["prompt"].update(shots=4), ["demos", "4 demonstrations"]),
    (lambda d: d["prompt"].update(answer_regex="(unclosed"), ["prompt.answer_regex"]),
    (lambda d: d["metadata"]["task"]["extractor"].update(kind="regex", pattern="(x"),
     ["metadata.task.extractor", "regular expression"]),
    (lambda d: d["metadata"]["task"]["matcher"].update(kind="fuzzy"), ["matcher.kind"]),
    (lambda d: d["metadata"].update(metrcs={}), ["unknown key 'metrcs'", "did you mean 'metrics'"]),
    (lambda d: d["difficulty"].update(sourse="label"), ["difficulty.sourse", "did you mean"]),
    (lambda d: d["difficulty"].update(source="probe"), ["difficulty.probe_k", "probe_k: 4"]),
    (lambda d: d["difficulty"].update(default_bin="hard"), ["default bin"]),
    (lambda d: d["metadata"]["task"].update(verifier="not a path"), ["verifier"]),
    (lambda d: d["prompt"].update(shot_selction="nearest"), ["prompt.shot_selction",
                                                             "did you mean 'shot_selection'"]),
    (lambda d: d["prompt"].update(shot_selection="random"), ["prompt.shot_selection", "nearest"]),
    (lambda d: d["prompt"].pop("user"), ["prompt.user", "missing"]),
])
def test_bad_policy_files_name_file_field_and_fix(policy_file, edit, needles):
    _fails(_edit(policy_file, edit), *needles)


def test_unreadable_files(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("schema_version: 1\nbins: [\n")
    _fails(bad, "invalid YAML", f"{bad}:")
    bad_json = tmp_path / "p.json"
    bad_json.write_text("{not json")
    _fails(bad_json, "invalid JSON")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    _fails(listed, "mapping")
    _fails(tmp_path / "missing.yaml", "not found")
    with pytest.raises(ConfigError, match=r"\.yaml, \.yml or \.json"):
        load_policy_file(tmp_path / "policy.txt")


def test_save_refuses_an_invalid_policy(tmp_path):
    policy = _policy()
    broken = Policy(model=policy.model, prompt=PromptTemplate(id="p", user="{{ nope }}"),
                    bins=policy.bins, metadata=policy.metadata)
    with pytest.raises(ConfigError, match="nope"):
        save_policy(broken, tmp_path / "p.yaml")
    assert not (tmp_path / "p.yaml").exists()


# ------------------------------------------------------------------------------ runner


def _runner(policy: Policy | None = None, backend=None, **kw) -> PolicyRunner:
    return load_policy(policy or _policy(), backend=backend or ScriptedBackend(noisy_responder()),
                       **kw)


def test_answer_with_usage_of_every_call(policy_file):
    backend = RecordingBackend(ScriptedBackend(noisy_responder(0.9)))
    runner = load_policy(policy_file, backend=backend)
    result = runner.answer({"question": "What is 20 + 22?"})
    assert isinstance(result, Answer)
    assert result.answer == "42" and "42" in result.text
    assert result.bin == "all" and result.strategy == "majority" and result.completions == 3
    assert result.usage.total_tokens == backend.total_tokens
    assert result.usage.total_tokens == sum(c.total_tokens for c in result.calls)
    assert result.usage.prompt_tokens + result.usage.completion_tokens == result.usage.total_tokens


def test_batch_is_one_drive_and_equals_single_answers():
    inputs = [{"question": f"What is {i} + {i + 2}?"} for i in range(8)]
    backend = ScriptedBackend(noisy_responder())
    runner = _runner(backend=backend)
    batch = runner.answer_batch(inputs)
    assert backend.calls == 1 and backend.requests_seen == 8  # one round, one batch
    single = [_runner().answer(x) for x in inputs]
    assert [(a.answer, a.usage) for a in batch] == [(a.answer, a.usage) for a in single]
    assert runner.answer_batch([]) == []


def test_multi_round_strategy_counts_every_round():
    policy = _policy("revision", {"rounds": 3})
    backend = RecordingBackend(ScriptedBackend(noisy_responder()))
    runner = _runner(policy, backend)
    results = runner.answer_batch([{"question": "What is 1 + 2?"}, {"question": "What is 3 + 4?"}])
    assert len(backend.batches) == 3  # three rounds, each batched over both inputs
    assert all(len(r.calls) == 3 for r in results)
    assert sum(r.usage.total_tokens for r in results) == backend.total_tokens


def test_best_of_n_with_the_recorded_verifier(tmp_path):
    policy = _policy("best_of_n", {"n": 4, "scorer": "verifier"})
    assert policy.metadata["task"]["verifier"] == "jointopt.testing.contracts:_toy_verifier"
    runner = load_policy(save_policy(policy, tmp_path / "p.yaml"),
                         backend=ScriptedBackend(noisy_responder(0.5)))
    assert runner.task.verifier is not None
    result = runner.answer({"question": "What is 2 + 2?"})
    best = max(result.candidates, key=lambda c: c.score)
    assert result.text == best.text and result.answer == best.answer


def test_difficulty_labels_pick_the_bin():
    bins = {"easy": Allocation("single", 0.0, 8), "hard": Allocation("majority", 0.8, 16, {"n": 5})}
    policy = _policy(bins=bins, difficulty=DifficultySpec(source="label", bins=("easy", "hard"),
                                                          default_bin="hard"))
    runner = _runner(policy)
    easy, hard, unlabelled, unknown = runner.answer_batch(
        [{"question": "What is 1 + 1?"}] * 4, difficulties=["easy", "hard", None, "medium"])
    assert (easy.bin, easy.strategy, easy.completions) == ("easy", "single", 1)
    assert (hard.bin, hard.completions) == ("hard", 5)
    assert unlabelled.bin == "hard" and unknown.bin == "hard"
    with pytest.raises(DataError, match="one label per input"):
        runner.answer_batch([{"question": "x"}], difficulties=[])


@pytest.mark.parametrize("inputs, match", [
    ({}, "lacks the field 'question'"),
    ({"question": "x", "qestion": "y"}, "unknown input field 'qestion'"),
    ({"question": ["a"]}, "must be strings"),
    ("just text", "mapping"),
])
def test_bad_inputs_are_data_errors(inputs, match):
    with pytest.raises(DataError, match=match) as info:
        _runner().answer(inputs)
    assert "fix:" in str(info.value)


def test_numbers_are_accepted_as_text():
    assert _runner().answer({"question": 7}).bin == "all"


def test_optional_task_fields_are_accepted():
    from jointopt.tasks import make_task

    task = make_task("reverse_words", levels=(1,), n_per_level=2, n_demos=1)
    policy = _policy("single", task=task)
    runner = _runner(policy)
    assert runner.input_fields == ("question",) and runner.optional_fields == ("words",)
    runner.answer({"question": "Reverse the order of these words: a, b", "words": "a, b"})


def test_evaluate_rescoring_matches_evaluation():
    task = toy_task()
    policy = _policy()
    runner = _runner(policy, ScriptedBackend(noisy_responder()))
    got = runner.evaluate(task, seed=1)
    want = evaluate(policy, task, ScriptedBackend(noisy_responder()), seed=1)
    assert (got.accuracy, got.mean_tokens) == (want.accuracy, want.mean_tokens)
    subset = runner.evaluate(task.examples[:2])
    assert len(subset.records) == 2


def test_load_policy_needs_an_extraction_section(tmp_path):
    policy = _policy()
    bare = Policy(model=policy.model, prompt=PromptTemplate(id="p", user="{{ question }}"),
                  bins=policy.bins)
    path = save_policy(bare, tmp_path / "bare.yaml")
    with pytest.raises(ConfigError, match="metadata.task") as info:
        load_policy(path, backend=ScriptedBackend())
    assert "jointopt export" in str(info.value)
    runner = load_policy(path, backend=ScriptedBackend(noisy_responder()), task=toy_task())
    assert runner.answer({"question": "What is 1 + 2?"}).usage.total_tokens > 0


def test_per_input_demo_selection_keeps_the_whole_pool(tmp_path):
    from jointopt.tasks import make_task

    task = make_task("reverse_words", levels=(1, 2, 3), n_per_level=2, n_demos=6)
    template = PromptTemplate(id="near", user="{{ question }}", shots=2, shot_selection="nearest")
    spec = task_spec(task, template)
    assert len(spec["demos"]) == 6
    assert len(task_spec(task, PromptTemplate(id="f", user="{{ question }}", shots=2))["demos"]) == 2
    policy = Policy(model="m", prompt=template, bins={"all": Allocation("single", 0.0, 8)},
                    metadata={"task": spec})
    backend = RecordingBackend(ScriptedBackend())
    runner = load_policy(save_policy(policy, tmp_path / "p.yaml"), backend=backend)
    short = "Reverse the order of these words: a, b"
    long = "Reverse the order of these words: a, b, c, d"
    runner.answer_batch([{"question": short, "words": "a, b"},
                         {"question": long, "words": "a, b, c, d"}])
    shown = [[m.content for m in r.request.messages if m.role == "assistant"]
             for r in backend.batches[0]]
    assert shown[0] != shown[1]  # each input got the demos nearest to its own length
    assert all(len(s) == 2 for s in shown)


def test_task_from_spec_round_trip():
    task = toy_task()
    rebuilt = task_from_spec(task_spec(task, 1))
    assert rebuilt.fields == task.fields and rebuilt.demos == task.demos[:1]
    assert rebuilt.extractor == task.extractor and rebuilt.matcher == task.matcher
    assert rebuilt.verifier is task.verifier and rebuilt.examples == ()


def test_runner_serialises_a_backend_that_is_not_thread_safe():
    class Guarded(ScriptedBackend):
        def __init__(self) -> None:
            super().__init__(noisy_responder())
            self.active = 0
            self.overlap = False

        def generate(self, requests):
            self.active += 1
            self.overlap |= self.active > 1
            try:
                import time

                time.sleep(0.01)
                return super().generate(requests)
            finally:
                self.active -= 1

    backend = Guarded()
    runner = _runner(backend=backend)
    threads = [threading.Thread(target=runner.answer, args=({"question": f"What is {i} + 1?"},))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not backend.overlap and backend.calls == 6


def test_runner_closes_only_what_it_created():
    closed = []

    class Closing(ScriptedBackend):
        def close(self) -> None:
            closed.append(True)

    with _runner(backend=Closing(noisy_responder())):
        pass
    assert closed == []
    with load_policy(_policy(), backend="jointopt.backends.scripted:ScriptedBackend") as runner:
        assert runner.backend.name == "scripted"
