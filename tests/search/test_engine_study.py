"""The real path: studies and every strategy on the vLLM engine with the embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest

from jointopt.search.config import load_config
from jointopt.evaluation.evaluate import evaluate
from jointopt.core.policy import Allocation, Policy
from jointopt.core.prompts import PromptTemplate, render_messages
from jointopt.strategies import STRATEGIES
from jointopt.search.study import run_study
from jointopt.tasks import make_task
from jointopt.testing import RecordingBackend

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]


def test_a_real_study_end_to_end(engine, tmp_path):
    config = load_config(ROOT / "experiments/quickstart.yaml", {
        "output_dir": str(tmp_path / "run"), "optimizer": {"n_trials": 5},
        "task": {"builtin": {"family": "reverse_words", "n_per_level": 2}}})
    result = run_study(config, backend=engine)
    assert len(result.proposed) == 5 and result.pareto
    for t in result.trials:
        assert 0.0 <= t.accuracy <= 1.0
        assert t.mean_tokens > 20  # a chat prompt alone is more than that
    assert (tmp_path / "run" / "pareto.png").stat().st_size > 1000

    # A rerun regenerates nothing: every pool is already in the sample store.
    first = {t.number for t in result.proposed}
    again = run_study(config, backend=engine, n_trials=7)
    new = [t for t in again.proposed if t.number not in first]
    assert len(new) == 2


def test_prompt_tokens_are_the_engines_own(engine):
    task = make_task("digit_sum", levels=(1,), n_per_level=3, n_demos=2)
    prompt = PromptTemplate(id="fs", system="Answer with the number only.",
                            user="{{ question }}", shots=2)
    recording = RecordingBackend(engine)
    policy = Policy(model="m", prompt=prompt,
                    bins={"all": Allocation("majority", 0.7, 8, {"n": 3})})
    result = evaluate(policy, task, recording)
    tokenizer = engine.tokenizer
    for example, record in zip(task.examples, result.records):
        messages = [{"role": m.role, "content": m.content}
                    for m in render_messages(prompt, task, example)]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert record.prompt_tokens == len(ids)
        assert 3 <= record.completion_tokens <= 24
    assert sum(r.tokens for r in result.records) == recording.total_tokens


STRATEGY_PARAMS = {
    "single": {},
    "majority": {"n": 3},
    "best_of_n": {"n": 3, "scorer": "verifier"},
    "weighted_vote": {"n": 3},
    "adaptive_majority": {"batch": 2, "max_n": 4, "min_n": 2},
    "revision": {"rounds": 2},
    "parallel_revision": {"chains": 2, "rounds": 2},
    "mcts": {"iterations": 2, "branching": 2, "rollouts": 2, "max_depth": 2},
    "cascade": {"n": 2, "threshold": 1.0, "escalate_n": 2},
}


def test_every_registered_strategy_is_exercised_here():
    assert set(STRATEGY_PARAMS) == set(STRATEGIES)


@pytest.mark.parametrize("name", sorted(STRATEGY_PARAMS))
def test_each_strategy_runs_for_real(engine, name):
    task = make_task("reverse_words", levels=(1,), n_per_level=3, n_demos=3)
    prompt = PromptTemplate(id="fs", system="Reply with the reversed list only.",
                            user="{{ question }}", shots=3, shot_selection="nearest")
    policy = Policy(model="m", prompt=prompt,
                    bins={"all": Allocation(name, 0.7, 16, STRATEGY_PARAMS[name])})
    recording = RecordingBackend(engine)
    result = evaluate(policy, task, recording)
    assert len(result.records) == 3
    assert sum(r.tokens for r in result.records) == recording.total_tokens
    for record in result.records:
        assert record.completion_tokens > 0
    # every round of every example went to the engine as one batch
    rounds = max(r.engine_calls for r in result.records)
    assert len(recording.batches) <= rounds
