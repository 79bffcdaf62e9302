"""The cascade strategy: escalation by vote share, accounting of both stages per model."""

from __future__ import annotations

import pytest

from jointopt.backends import ScriptedBackend
from jointopt.backends.router import ModelRouter
from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.core.cost import flops_cost
from jointopt.evaluation.evaluate import drive, evaluate
from jointopt.strategies.base import example_context
from jointopt.strategies.cascade import Cascade, vote_share
from jointopt.tasks import make_task
from jointopt.testing import RecordingBackend, StrategyContract
from jointopt.testing.tiers import large, small


class TestCascadeContract(StrategyContract):
    bad_params = [({"n": 0}, "n"), ({"threshold": 1.5}, "threshold"),
                  ({"escalate_n": 0}, "escalate_n"), ({"escalate_to": ""}, "escalate_to"),
                  ({"escalate_max_tokens": 0}, "escalate_max_tokens")]

    @pytest.fixture(params=[0.0, 0.7, 1.0])
    def strategy(self, request):
        return Cascade(n=3, threshold=request.param, escalate_n=2)


def test_vote_share_counts_unanswered_samples_as_votes():
    assert vote_share(["a", "a", None, "b"]) == ("a", 0.5)
    assert vote_share([None, None]) == (None, 0.0)


TASK = make_task("reverse_words", levels=(1, 3), n_per_level=6, n_demos=3)
PROMPT = PromptTemplate(id="p", user="{{ question }}")


def two_models():
    recorders = {"small": RecordingBackend(ScriptedBackend(small, model_id="small")),
                 "large": RecordingBackend(ScriptedBackend(large, model_id="large"))}
    router = ModelRouter({k: (lambda b=b: b) for k, b in recorders.items()}, default="small")
    return router, recorders


def _contexts(model=None):
    return [example_context(PROMPT, TASK, e, temperature=0.8, max_tokens=16, seed=1,
                            model=model) for e in TASK.examples]


def test_sure_answers_stay_and_unsure_ones_escalate_to_the_named_model():
    router, rec = two_models()
    cascade = Cascade(n=4, threshold=0.75, escalate_n=3, escalate_to="large")
    outcomes = drive(router, [cascade.run(ctx) for ctx in _contexts()])
    escalated = [o.info["escalated"] for o, _ in outcomes]
    assert any(escalated) and not all(escalated)
    for (outcome, results), up in zip(outcomes, escalated):
        assert outcome.info["escalated"] == (outcome.info["first_share"] < 0.75)
        assert [r.request.model for r in results] == ([None, "large"] if up else [None])
        assert [r.request.n for r in results] == ([4, 3] if up else [4])
        # Escalated samples sit after the first stage's: were the bin's model the one
        # escalated to, they would be fresh ones, not the first stage's again.
        assert [r.request.offset for r in results] == ([0, 4] if up else [0])
    # Each model's engine saw exactly its own stage's requests.
    assert sum(len(b) for b in rec["large"].batches) == sum(escalated)
    assert sum(len(b) for b in rec["small"].batches) == len(outcomes)
    # Long lists (level 3) are where the small model is unsure.
    by_level = {}
    for ctx, up in zip(_contexts(), escalated):
        by_level.setdefault(ctx.example.difficulty, []).append(up)
    assert sum(by_level["3"]) > sum(by_level["1"])


def test_cascade_cost_counts_both_stages_each_at_its_models_price():
    router, rec = two_models()
    costs = {"small": flops_cost(100), "large": flops_cost(400)}
    policy = Policy(model="small", prompt=PROMPT, bins={"all": Allocation(
        "cascade", 0.8, 16, {"n": 4, "threshold": 0.75, "escalate_n": 3,
                             "escalate_to": "large"})})
    result = evaluate(policy, TASK, router, seed=1, costs=costs)
    tokens = {k: sum(r.total_tokens for b in v.batches for r in b) for k, v in rec.items()}
    assert tokens["large"] > 0 and tokens["small"] > 0
    assert sum(r.tokens for r in result.records) == tokens["small"] + tokens["large"]
    expected = (200 * tokens["small"] + 800 * tokens["large"]) / len(TASK.examples)
    assert result.mean_cost == pytest.approx(expected)
    # Never escalating: only the small model runs, at its price.
    cheap = Policy(model="small", prompt=PROMPT, bins={"all": Allocation(
        "cascade", 0.8, 16, {"n": 4, "threshold": 0.0, "escalate_to": "large"})})
    router, rec = two_models()
    alone = evaluate(cheap, TASK, router, seed=1, costs=costs)
    assert not rec["large"].batches
    assert alone.mean_cost == pytest.approx(200 * alone.mean_tokens)
    assert alone.mean_cost < result.mean_cost


def test_probe_samples_are_the_cascades_first_stage_and_are_paid_once():
    spec = DifficultySpec(source="probe", bins=("easy", "hard"), default_bin="easy",
                          probe_k=4, probe_temperature=0.8, probe_max_tokens=16,
                          thresholds=(0.99,))
    cascade = Allocation("cascade", 0.8, 16, {"n": 4, "threshold": 0.75, "escalate_n": 2,
                                              "escalate_to": "large"})
    policy = Policy(model="small", prompt=PROMPT, difficulty=spec,
                    bins={"easy": Allocation("single", 0.8, 16), "hard": cascade})
    router, rec = two_models()
    result = evaluate(policy, TASK, router, seed=1)
    hard = [r for r in result.records if r.bin == "hard"]
    assert hard
    # The small model generated only the probes: the cascade's first stage reused them.
    small_requests = [r for b in rec["small"].batches for r in b]
    assert all(r.request.n == 4 for r in small_requests)
    assert len(small_requests) == len(TASK.examples)
    assert sum(r.tokens for r in result.records) == sum(
        r.total_tokens for v in rec.values() for b in v.batches for r in b)


def test_without_escalate_to_the_second_stage_is_fresh_samples_of_the_same_model():
    backend = RecordingBackend(ScriptedBackend(small))
    cascade = Cascade(n=2, threshold=1.0, escalate_n=2)
    outcomes = drive(backend, [cascade.run(ctx) for ctx in _contexts()])
    for outcome, results in outcomes:
        if outcome.info["escalated"]:
            first, second = results
            assert (first.request.offset, second.request.offset) == (0, 2)
            assert first.request.sampling_key() == second.request.sampling_key()
