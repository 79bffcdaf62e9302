"""DSPy integration, offline: the backend LM, proposed instructions, program optimization.

Everything runs on the scripted backend. The responder below plays a model that reads
DSPy's chat-adapter prompts: it answers digit sums right more often when the system
prompt says "carefully", sometimes replies without DSPy's field markers, and writes
instructions when asked by the proposer.
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time

import pytest

dspy = pytest.importorskip("dspy")
lm15 = pytest.importorskip("dspy.lm15")

from jointopt.backends import ScriptedBackend  # noqa: E402
from jointopt.integrations.dspy_lm import (  # noqa: E402
    BackendEngine,
    engine_of,
    make_dspy_lm,
    meter_of,
)
from jointopt.integrations.token_meter import TokenCounts, TokenMeter  # noqa: E402
from jointopt.search.dspy_program import (  # noqa: E402
    InferencePolicy,
    attach_policy,
    load_policy,
    optimize_program,
    policy_of,
    run_program,
)
from jointopt.errors import BackendError, ConfigError  # noqa: E402
from jointopt.core.generation import GenerationRequest  # noqa: E402
from jointopt.core.policy import Allocation, Policy  # noqa: E402
from jointopt.core.prompts import PromptTemplate, render_messages, validate_template  # noqa: E402
from jointopt.integrations.proposals import (  # noqa: E402
    ProposalSource,
    expand_prompts,
    log_proposals_to_mlflow,
    propose_instructions,
)
from jointopt.search.space import Choice, Fixed, SearchSpace  # noqa: E402
from jointopt.tasks import make_task  # noqa: E402
from jointopt.testing import RecordingBackend  # noqa: E402

PROPOSALS = (
    "Add the numbers carefully and answer with one integer.",
    "Reply with the final number only.",
    "Work out the sum step by step, then give it.",
)


def responder(request: GenerationRequest, index: int, rng: random.Random) -> str:
    system = request.messages[0].content if request.messages[0].role == "system" else ""
    user = request.messages[-1].content
    if "instructions for an AI assistant" in system:
        text = rng.choice(PROPOSALS)
        return text if rng.random() < 0.3 else (
            f"[[ ## instruction ## ]]\n{text}\n\n[[ ## completed ## ]]")
    found = re.search(r"What is ([\d +]+)\?", user)
    truth = sum(int(x) for x in re.findall(r"\d+", found.group(1))) if found else 0
    p_right = 0.85 if "carefully" in system else 0.45
    roll = rng.random()
    if roll < 0.04:
        return "Sorry, I am not sure."  # no field markers: the adapter cannot parse it
    answer = truth if roll < p_right else truth + rng.choice([-2, -1, 1, 2])
    return (f"[[ ## reasoning ## ]]\nI add the numbers.\n\n[[ ## answer ## ]]\n{answer}\n\n"
            "[[ ## completed ## ]]")


def backend() -> ScriptedBackend:
    return ScriptedBackend(responder, model_id="scripted-sums")


@pytest.fixture
def task():
    return make_task("digit_sum", levels=(1, 2), n_per_level=6, n_demos=4)


@pytest.fixture
def trainset(task):
    return [dspy.Example(question=e.inputs["question"], answer=e.target, level=e.difficulty)
            .with_inputs("question") for e in task.examples]


def exact(example, prediction, trace=None) -> bool:
    return str(prediction.answer).strip() == example.answer


SPACE = {
    "strategies": {"single": {}, "majority": {"n": {"low": 3, "high": 7}},
                   "best_of_n": {"n": {"choices": [2, 4]}}},
    "temperature": 0.8,
    "max_tokens": 64,
    "instructions": ["Add carefully."],
}


# --------------------------------------------------------------------------- the LM


def test_routing_of_messages_n_temperature_and_max_tokens():
    seen: list[GenerationRequest] = []

    def capture(request, index, rng):
        seen.append(request)
        return f"sample {rng.randint(0, 10**6)}"

    recording = RecordingBackend(ScriptedBackend(capture))
    meter = TokenMeter()
    lm = make_dspy_lm(recording, meter, temperature=0.3, max_tokens=7)
    outputs = lm("Name a colour.", n=3, stop=["\n\n"])
    assert len(outputs) == 3 and len(set(outputs)) == 3  # n distinct samples
    assert len(seen) == 3
    for request in seen:
        assert [(m.role, m.content) for m in request.messages] == [("user", "Name a colour.")]
        assert request.temperature == 0.3 and request.max_tokens == 7 and request.n == 1
        assert request.stop == ("\n\n",)
    assert sorted(r.offset for r in seen) == [0, 1, 2]
    # DSPy's canonical request form: system prompt, turns and config all arrive
    response = lm(lm15.Request(
        model=lm.model, system="Be brief.",
        messages=(lm15.Message.user("Hi"), lm15.Message.assistant("Hello!"),
                  lm15.Message.user("Name a colour.")),
        config=lm15.Config(temperature=0.9, max_tokens=4)))
    assert isinstance(response, lm15.Response) and response.usage.input_tokens > 0
    assert [(m.role, m.content) for m in seen[-1].messages] == [
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"),
        ("user", "Name a colour.")]
    assert (seen[-1].temperature, seen[-1].max_tokens) == (0.9, 4)
    # a call's own values win over the LM's defaults
    lm("Hello", temperature=1.1, max_tokens=5)
    assert seen[-1].temperature == 1.1 and seen[-1].max_tokens == 5
    counts = meter.snapshot()
    assert isinstance(counts, TokenCounts)
    assert counts.calls == 5
    assert counts.total_tokens == recording.total_tokens > 0
    assert counts.prompt_tokens == sum(r.prompt_tokens for b in recording.batches for r in b)
    assert meter_of(lm) is meter and isinstance(engine_of(lm), BackendEngine)
    # the snapshot is frozen
    with pytest.raises(AttributeError):
        counts.calls = 0  # type: ignore[misc]


def test_dspy_cache_is_off_and_no_provider_is_touched():
    recording = RecordingBackend(ScriptedBackend())
    lm = make_dspy_lm(recording, temperature=0.0)
    assert lm.cache is False
    lm("same prompt")
    lm("same prompt")
    assert sum(len(b) for b in recording.batches) == 2  # both reached the backend
    assert "litellm" not in sys.modules
    with pytest.raises(ConfigError, match="cache"):
        make_dspy_lm(recording, cache=True)
    with pytest.raises(ConfigError, match="hosted provider"):
        make_dspy_lm(recording, api_key="sk-123")


def test_a_fresh_lm_with_the_same_seed_replays_the_same_samples():
    def draws() -> list[str]:
        lm = make_dspy_lm(ScriptedBackend(lambda r, i, rng: str(rng.random())), temperature=1.0,
                          seed=5)
        return lm("x", n=4) + lm("x")

    first = draws()
    assert first == draws()
    assert len(set(first)) == 5


def test_program_calls_go_through_the_backend_with_logprobs():
    recording = RecordingBackend(backend())
    lm = make_dspy_lm(recording, temperature=0.5, max_tokens=40)
    program = dspy.ChainOfThought("question -> answer")
    with dspy.context(lm=lm):
        prediction = program(question="What is 2 + 3?")
    assert prediction.answer in {"1", "3", "4", "5", "6", "7"}
    request = recording.batches[0][0].request
    assert request.messages[0].role == "system" and "[[ ## question ## ]]" in request.messages[1].content
    out = lm("What is 1 + 1?", logprobs=True)[0]
    content = out["logprobs"]["content"]
    assert len(content) == recording.batches[-1][0].completions[0].num_tokens
    assert all(item["logprob"] <= 0 for item in content)


def test_unsupported_features_are_refused_not_dropped():
    lm = make_dspy_lm(ScriptedBackend())
    with pytest.raises(Exception, match="response_format"):
        lm("x", response_format={"type": "json_object"})


def test_concurrent_calls_share_backend_batches():
    class Slow(ScriptedBackend):
        def generate(self, requests):
            time.sleep(0.05)
            return super().generate(requests)

    slow = Slow()
    lm = make_dspy_lm(slow, temperature=0.7)
    threads = [threading.Thread(target=lm, args=(f"prompt {i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert slow.requests_seen == 8
    assert slow.calls < 8  # later arrivals waited for the engine and went as one batch
    assert meter_of(lm).calls == 8


def test_backend_errors_reach_the_caller():
    class Broken(ScriptedBackend):
        def generate(self, requests):
            raise BackendError("engine died", fix="restart it")

    lm = make_dspy_lm(Broken())
    with pytest.raises(Exception, match="engine died") as info:
        lm("x")
    assert isinstance(info.value.__cause__, BackendError)


# --------------------------------------------------------------------------- proposals


def test_proposals_are_cached_with_counts_shown(task, tmp_path):
    recording = RecordingBackend(backend())
    meter = TokenMeter()
    cache = tmp_path / "proposals.json"
    first = propose_instructions(task, recording, 3, n_examples=2, seed=0, cache_path=cache,
                                 meter=meter)
    calls_after_first = meter.calls
    assert not first.cache_hit
    assert calls_after_first >= 3 and first.usage.calls == calls_after_first
    assert first.proposer_tokens == meter.total_tokens == recording.total_tokens > 0
    assert [t.id for t in first.templates] == ["proposed_0", "proposed_1", "proposed_2"]
    assert set(first.instructions) == set(PROPOSALS)
    for template, text in zip(first.templates, first.instructions):
        assert template.system == text and template.user == "{{ question }}"
        validate_template(template, task)
    assert len(first.example_ids) == 2 and all("demo" in i for i in first.example_ids)

    backend_calls = len(recording.batches)
    again = propose_instructions(task, recording, 3, n_examples=2, seed=0, cache_path=cache,
                                 meter=meter)
    assert again.cache_hit
    assert meter.calls == calls_after_first  # no new proposal calls
    assert len(recording.batches) == backend_calls
    assert again.instructions == first.instructions
    assert again.proposer_tokens == first.proposer_tokens  # what they cost originally
    assert [t.to_dict() for t in again.templates] == [t.to_dict() for t in first.templates]

    other = propose_instructions(task, recording, 3, n_examples=2, seed=1, cache_path=cache,
                                 meter=meter)
    assert not other.cache_hit and meter.calls > calls_after_first
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 2


def test_proposed_text_with_jinja_delimiters_renders_literally(task, tmp_path):
    text = "Answer with {{ the sum }} only, as one integer."
    lm_backend = ScriptedBackend(lambda r, i, rng: f"[[ ## instruction ## ]]\n{text}\n\n[[ ## completed ## ]]")
    proposals = propose_instructions(task, lm_backend, 1, n_examples=0,
                                     cache_path=tmp_path / "p.json")
    messages = render_messages(proposals.templates[0], task, task.examples[0])
    assert messages[0].content == text
    assert messages[1].content == task.examples[0].inputs["question"]


def test_proposal_arguments_are_checked(task, tmp_path):
    with pytest.raises(ConfigError, match="4 demos"):
        propose_instructions(task, backend(), 2, n_examples=9, cache_path=tmp_path / "p.json")
    with pytest.raises(ConfigError, match="`k`"):
        propose_instructions(task, backend(), 0, cache_path=tmp_path / "p.json")
    silent = ScriptedBackend(lambda r, i, rng: "")
    with pytest.raises(BackendError, match="no usable instruction"):
        propose_instructions(task, silent, 2, n_examples=0, cache_path=tmp_path / "p.json")


def test_expand_prompts_mixes_templates_and_proposals(task, tmp_path):
    prompts = [
        {"id": "bare", "user": "{{ question }}"},
        {"propose": {"k": 2, "n_examples": 1, "seed": 0}},
        {"propose": {"k": 1, "n_examples": 0, "id_prefix": "alt"}},
    ]
    templates = expand_prompts(prompts, task, backend(), tmp_path / "p.json")
    assert [t.id for t in templates] == ["bare", "proposed_0", "proposed_1", "alt_0"]
    with pytest.raises(ConfigError, match="duplicate prompt id"):
        expand_prompts([{"propose": {"k": 1}}, {"propose": {"k": 1, "seed": 2}}], task,
                       backend(), tmp_path / "p.json")
    with pytest.raises(ConfigError, match="did you mean 'seed'"):
        expand_prompts([{"propose": {"k": 1, "sed": 2}}], task, backend(), tmp_path / "p.json")
    with pytest.raises(ConfigError, match="backend_for"):
        expand_prompts([{"propose": {"k": 1, "model": "other"}}], task, backend(),
                       tmp_path / "p.json")
    spec = ProposalSource.model_validate({"propose": {"k": 2}}).propose
    assert (spec.k, spec.n_examples, spec.seed, spec.model) == (2, 3, 0, None)
    assert ProposalSource.model_fields["propose"].description


def test_proposals_are_logged_to_mlflow(task, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    proposals = propose_instructions(task, backend(), 2, n_examples=1,
                                     cache_path=tmp_path / "p.json")
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("proposals",
                                          artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment)
    log_proposals_to_mlflow(client, run.info.run_id, proposals)
    data = client.get_run(run.info.run_id).data
    assert data.metrics["proposer_tokens"] == proposals.proposer_tokens > 0
    assert data.params["proposer_tokens"] == str(proposals.proposer_tokens)
    assert data.params["proposals_count"] == "2"
    text = (tmp_path / "art" / run.info.run_id / "artifacts" / "proposals" / "proposals.json")
    logged = json.loads(text.read_text())
    assert [t["system"] for t in logged["templates"]] == list(proposals.instructions)


# --------------------------------------------------------------------------- programs


def test_field_mismatch_names_both_lists_before_any_compute():
    recording = RecordingBackend(backend())
    program = dspy.ChainOfThought("question -> answer")
    cases = [
        ([dspy.Example(query="q", answer="1").with_inputs("query")], ["'query'", "'question'"]),
        ([dspy.Example(question="q", result="1").with_inputs("question")], ["'answer'", "'result'"]),
        ([dspy.Example(question="q", answer="1")], ["with_inputs", "'question'"]),
    ]
    for trainset, names in cases:
        with pytest.raises(ConfigError) as info:
            optimize_program(program, trainset, exact, backend=recording, n_trials=2,
                             search_space=SPACE)
        for name in names:
            assert name in str(info.value)
    with pytest.raises(ConfigError, match="mcts"):
        optimize_program(program, [dspy.Example(question="q", answer="1").with_inputs("question")],
                         exact, backend=recording, n_trials=1,
                         search_space={"strategies": {"mcts": {}}})
    assert recording.batches == []


def test_optimize_picks_among_strategies_and_counts_tokens(trainset, tmp_path):
    recording = RecordingBackend(backend())
    program = dspy.ChainOfThought("question -> answer")
    original = program.predict.signature.instructions
    result = optimize_program(program, trainset, exact, backend=recording, search_space=SPACE,
                              n_trials=14, seed=0, proposal_cache=tmp_path / "p.json")
    policy = result.policy
    allocation = policy.bins["all"]
    # voting with the careful instruction is what wins on this responder
    assert allocation.strategy == "majority" and allocation.params["n"] >= 3
    assert policy.metadata["instructions"]["predict"] == "Add carefully."
    assert policy.metadata["accuracy"] == max(p.accuracy for p in result.pareto)
    strategies = {p.policy.bins["all"].strategy for p in result.pareto}
    assert "single" in strategies and len(result.pareto) >= 2
    tokens = [p.mean_tokens for p in result.pareto]
    assert tokens == sorted(tokens)
    # the input program is untouched; the tuned copy carries instructions and policy
    assert program.predict.signature.instructions == original
    assert not hasattr(program, "inference_policy")
    assert result.program.predict.signature.instructions == "Add carefully."
    assert policy_of(result.program) == policy
    # tokens are the backend's own counts: every generated token was charged to a trial
    complete = [t for t in result.study.trials if t.values and "reused_from" not in t.user_attrs]
    charged = sum(t.user_attrs["prompt_tokens"] + t.user_attrs["completion_tokens"]
                  for t in complete)
    assert charged == recording.total_tokens
    for t in complete:
        assert t.values[1] == pytest.approx(
            (t.user_attrs["prompt_tokens"] + t.user_attrs["completion_tokens"]) / len(trainset))


def test_tuned_program_round_trips_through_dspy_save_and_load(trainset, tmp_path):
    result = optimize_program(dspy.ChainOfThought("question -> answer"), trainset, exact,
                              backend=backend(), search_space=SPACE, n_trials=8, seed=1,
                              proposal_cache=tmp_path / "p.json")
    before = run_program(result.program, trainset, backend=backend(), seed=7)
    assert any(p is not None for p in before)
    path = tmp_path / "program.json"
    result.program.save(str(path))
    assert json.loads(path.read_text())["inference_policy"]["policy"] == result.policy.to_dict()

    # (a) a freshly built program: DSPy's load restores the instructions, load_policy the policy
    fresh = dspy.ChainOfThought("question -> answer")
    fresh.load(str(path))
    assert fresh.predict.signature.instructions == result.program.predict.signature.instructions
    assert load_policy(path) == result.policy
    after = run_program(fresh, trainset, backend=backend(), seed=7, policy=load_policy(path))
    # (b) a program that has the attribute gets the policy from DSPy's own load
    holder = attach_policy(dspy.ChainOfThought("question -> answer"),
                           Policy(model="x", prompt=PromptTemplate(id="p", user="{{ question }}"),
                                  bins={"all": Allocation("single")}))
    holder.load(str(path))
    assert isinstance(holder.inference_policy, InferencePolicy)
    assert policy_of(holder) == result.policy
    again = run_program(holder, trainset, backend=backend(), seed=7)

    def answers(preds):
        return [None if p is None else (p.answer, p.reasoning) for p in preds]

    assert answers(before) == answers(after) == answers(again)


def test_per_difficulty_allocations_and_proposed_instructions(trainset, tmp_path):
    space = {**SPACE, "instructions": [{"propose": {"k": 2, "n_examples": 2}}]}
    result = optimize_program(dspy.ChainOfThought("question -> answer"), trainset, exact,
                              backend=backend(), search_space=space, n_trials=6, seed=0,
                              difficulty="level", proposal_cache=tmp_path / "p.json")
    ids = [c.id for c in result.candidates["predict"]]
    assert ids[0] == "original" and {"proposed_0", "proposed_1"} <= set(ids)
    assert set(result.policy.bins) == {"1", "2"}
    assert result.policy.difficulty.source == "label"
    assert result.policy.metadata["difficulty_field"] == "level"
    params = result.study.trials[0].params
    assert "1.strategy" in params and "2.strategy" in params
    assert result.proposer_tokens > 0
    # proposals are cached: a second run makes no proposal calls
    recording = RecordingBackend(backend())
    again = optimize_program(dspy.ChainOfThought("question -> answer"), trainset, exact,
                             backend=backend(), proposer_backend=recording, search_space=space,
                             n_trials=1, seed=0, difficulty="level",
                             proposal_cache=tmp_path / "p.json")
    assert recording.batches == [] and again.proposer_tokens == 0


def test_search_space_object_and_multi_predictor_programs(trainset, tmp_path):
    class TwoStep(dspy.Module):
        def __init__(self):
            super().__init__()
            self.draft = dspy.Predict("question -> answer")
            self.check = dspy.Predict("question, draft -> answer")

        def forward(self, question):
            draft = self.draft(question=question).answer
            return self.check(question=question, draft=draft)

    def two_step_responder(request, index, rng):
        return "[[ ## answer ## ]]\n3\n\n[[ ## completed ## ]]"

    space = SearchSpace(
        prompts=(PromptTemplate(id="terse", system="Answer carefully.", user="{{ question }}"),),
        strategies={"single": {}, "majority": {"n": Choice((2, 3))}},
        temperature=Fixed(0.5), max_tokens=Fixed(32),
    )
    program = TwoStep()
    with pytest.raises(ConfigError, match="signature="):
        optimize_program(program, trainset, exact, backend=ScriptedBackend(two_step_responder),
                         search_space=space, n_trials=1)
    result = optimize_program(program, trainset, exact, signature="question -> answer",
                              backend=ScriptedBackend(two_step_responder), search_space=space,
                              n_trials=4, proposal_cache=tmp_path / "p.json")
    assert set(result.policy.metadata["instructions"]) == {"draft", "check"}
    assert {"prompt.draft", "prompt.check"} <= set(result.study.trials[0].params)

    bad = SearchSpace(prompts=(PromptTemplate(id="v", system="Use {{ question }}", user="x"),),
                      strategies={"single": {}})
    with pytest.raises(ConfigError, match="system"):
        optimize_program(dspy.ChainOfThought("question -> answer"), trainset, exact,
                         backend=backend(), search_space=bad, n_trials=1)


def test_predictors_with_their_own_lm_or_sampling_config_are_refused(trainset):
    program = dspy.ChainOfThought("question -> answer", temperature=0.2)
    with pytest.raises(ConfigError, match="temperature"):
        optimize_program(program, trainset, exact, backend=backend(), search_space=SPACE,
                         n_trials=1)
    program = dspy.ChainOfThought("question -> answer")
    program.predict.lm = make_dspy_lm(backend())
    with pytest.raises(ConfigError, match="own LM"):
        optimize_program(program, trainset, exact, backend=backend(), search_space=SPACE,
                         n_trials=1)


def test_run_program_needs_a_policy(trainset):
    with pytest.raises(ConfigError, match="no inference policy"):
        run_program(dspy.ChainOfThought("question -> answer"), trainset, backend=backend())


def test_study_resumes_from_storage(trainset, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    kwargs = dict(backend=backend(), search_space=SPACE, seed=0, storage=storage,
                  proposal_cache=tmp_path / "p.json")
    optimize_program(dspy.ChainOfThought("question -> answer"), trainset, exact, n_trials=3,
                     **kwargs)
    recording = RecordingBackend(backend())
    kwargs["backend"] = recording
    result = optimize_program(dspy.ChainOfThought("question -> answer"), trainset, exact,
                              n_trials=3, **kwargs)
    assert len(result.study.trials) == 3 and recording.batches == []
    other = {**SPACE, "instructions": ["Something else entirely."]}
    with pytest.raises(ConfigError, match="other instruction candidates or another trainset"):
        optimize_program(dspy.ChainOfThought("question -> answer"), trainset, exact, n_trials=4,
                         **{**kwargs, "search_space": other})


def test_token_meter_is_thread_safe_and_snapshots_add_up():
    meter = TokenMeter()
    engine = BackendEngine(ScriptedBackend(), meter)
    view = engine.recording()
    assert view.meter is meter and view.records == [] and engine.records is None
    meter.add_counts(TokenCounts(1, 2, 3))
    assert meter.snapshot() - TokenCounts(1, 2, 3) == TokenCounts()


# --------------------------------------------------------------------------- batching races


class _YieldingCondition:
    """A ``threading.Condition`` that sleeps after every release of its lock, so other
    threads get in between any two locked steps of the dispatcher: a race window between
    two such steps, a few bytecodes wide in production, becomes ``pause`` seconds wide."""

    def __init__(self, pause: float) -> None:
        self._cond = threading.Condition()
        self._pause = pause

    def __enter__(self):
        return self._cond.__enter__()

    def __exit__(self, *exc):
        released = self._cond.__exit__(*exc)
        time.sleep(self._pause)
        return released

    def wait(self, timeout=None):
        return self._cond.wait(timeout)

    def notify_all(self):
        self._cond.notify_all()


class _SlowScripted(ScriptedBackend):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def generate(self, requests):
        time.sleep(self.delay)
        return super().generate(requests)


def _request(text: str) -> GenerationRequest:
    from jointopt.core.generation import ChatMessage

    return GenerationRequest(messages=(ChatMessage("user", text),), n=1, temperature=0.7,
                             max_tokens=8)


def _hammer(dispatcher, n_threads: int, calls: int, seed: int,
            gap: float) -> tuple[list, list]:
    """``n_threads`` threads each submit ``calls`` requests, each after a random pause of up
    to ``gap`` seconds (so the leader often finds the queue empty and leaves, while other
    requests keep arriving)."""
    errors: list[BaseException] = []
    answered: list[str] = []
    lock = threading.Lock()

    def caller(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        for j in range(calls):
            time.sleep(rng.random() * gap)
            try:
                result = dispatcher.submit(_request(f"t{i} c{j}"))
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                with lock:
                    errors.append(exc)
            else:
                with lock:
                    answered.append(result.completions[0].text)

    threads = [threading.Thread(target=caller, args=(i,), daemon=True)
               for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a caller is stranded waiting"
    return errors, answered


def test_dispatcher_serves_every_request_under_contention():
    """Regression: the leader saw an empty queue, released the lock and only then stepped
    down (cleared its busy flag); a request queued in that window waited for a leader that
    had already left and was failed with "batch leader stopped" (seen in CI on a busy
    machine). ``_YieldingCondition`` widens that window so the old code fails every run."""
    from jointopt.integrations.batching import _Dispatcher

    for round_ in range(5):
        backend = _SlowScripted(delay=0.001)
        dispatcher = _Dispatcher(backend, max_batch=4)
        dispatcher._cond = _YieldingCondition(pause=0.001)
        errors, answered = _hammer(dispatcher, n_threads=8, calls=25, seed=round_, gap=0.01)
        assert errors == [], f"round {round_}: {len(errors)} failed, first: {errors[0]!r}"
        assert sorted(answered) == sorted(f"t{i} c{j}" for i in range(8) for j in range(25))
        assert backend.requests_seen == 8 * 25
        assert dispatcher._leader is None and not dispatcher._queue


class _Stop(BaseException):
    """Stands for KeyboardInterrupt (or a SIGTERM turned into one) in the leader thread."""


def test_an_interrupted_leader_fails_every_waiter_instead_of_stranding_it():
    """The leader's thread is interrupted while it sends a batch that holds requests of
    other threads: those callers get an error at once, nobody waits forever, and the
    dispatcher serves new requests afterwards."""
    from jointopt.integrations.batching import _Dispatcher

    class Interrupting(ScriptedBackend):
        def __init__(self) -> None:
            super().__init__()
            self.dispatcher = None

        def generate(self, requests):
            if self.calls == 0:  # the leader's own request: wait until 3 more queue up
                deadline = time.monotonic() + 10
                while len(self.dispatcher._queue) < 3 and time.monotonic() < deadline:
                    time.sleep(0.001)
            elif self.calls == 1:
                self.calls += 1
                raise _Stop()
            return super().generate(requests)

    backend = Interrupting()
    dispatcher = _Dispatcher(backend, max_batch=8)
    backend.dispatcher = dispatcher
    outcomes: dict[str, object] = {}

    def call(name: str) -> None:
        try:
            outcomes[name] = dispatcher.submit(_request(name)).completions[0].text
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            outcomes[name] = exc

    leader = threading.Thread(target=call, args=("leader",), daemon=True)
    leader.start()
    while dispatcher._leader is None:
        time.sleep(0.001)
    others = [threading.Thread(target=call, args=(f"w{i}",), daemon=True) for i in range(3)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    for t in [leader, *others]:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in [leader, *others]), "a caller is stranded waiting"
    assert isinstance(outcomes["leader"], _Stop)
    for i in range(3):
        assert isinstance(outcomes[f"w{i}"], BackendError), outcomes
        assert "stopped" in str(outcomes[f"w{i}"])
    assert dispatcher._leader is None and not dispatcher._queue
    assert dispatcher.submit(_request("after")).completions[0].text == "after"


def test_program_strategies_that_take_a_scorer_rank_rollouts_by_logprob():
    from jointopt.search.dspy_program.space import _normalize_space
    from jointopt.search.space import Fixed

    space = _normalize_space({"strategies": {"single": {}, "majority": {"n": 3},
                                             "best_of_n": {"n": 3}}}, None)
    assert space.strategies["best_of_n"]["scorer"] == Fixed("logprob")
    assert "scorer" not in space.strategies["majority"]
    assert "scorer" not in space.strategies["single"]
