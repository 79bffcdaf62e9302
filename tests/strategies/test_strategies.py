"""The spine strategies: contract suite plus behaviour checks."""

from __future__ import annotations

import math

import pytest

from jointopt.backends import ScriptedBackend
from jointopt.errors import StrategyError
from jointopt.evaluation.evaluate import drive
from jointopt.core.generation import ChatMessage, Completion
from jointopt.strategies.scorers import AutoScorer, LogprobScorer, VerifierScorer
from jointopt.strategies import StrategyContext, make_strategy
from jointopt.strategies.parallel import BestOfN, MajorityVote, SingleSample
from jointopt.strategies.voting import plurality
from jointopt.testing import ScorerContract, StrategyContract, toy_task


class TestSingle(StrategyContract):
    @pytest.fixture
    def strategy(self):
        return SingleSample()


class TestMajority(StrategyContract):
    bad_params = [({"n": 0}, "n"), ({"n": -3}, "n"), ({"n": "five"}, "n")]

    @pytest.fixture
    def strategy(self):
        return MajorityVote(n=5)


class TestBestOfN(StrategyContract):
    bad_params = [({"n": 0}, "n"), ({"scorer": "logprobz"}, "scorer")]

    @pytest.fixture
    def strategy(self):
        return BestOfN(n=4, scorer="logprob")


class TestLogprobScorer(ScorerContract):
    @pytest.fixture
    def scorer(self):
        return LogprobScorer()


class TestVerifierScorer(ScorerContract):
    @pytest.fixture
    def scorer(self):
        return VerifierScorer()


class TestAutoScorer(ScorerContract):
    @pytest.fixture
    def scorer(self):
        return AutoScorer()


def _ctx(task=None):
    task = task or toy_task()
    ex = task.examples[1]
    return StrategyContext(example=ex, task=task, messages=(ChatMessage("user", "q"),),
                           temperature=0.7, max_tokens=16)


def _scripted(texts):
    return ScriptedBackend(lambda request, index, rng: texts[index])


def test_plurality_ignores_none_and_breaks_ties_by_first_seen():
    assert plurality(["3", None, "4", "4", "3"]) == "3"
    assert plurality([None, None]) is None
    assert plurality(["a", "b", "b"], [5.0, 1.0, 1.0]) == "a"


def test_majority_returns_the_most_frequent_answer():
    texts = ["It is 7", "7", "maybe 9", "9", "9", "no idea"]
    (outcome, results), = drive(_scripted(texts), [MajorityVote(n=6).run(_ctx())])
    assert outcome.answer == "9"
    assert len(results) == 1 and results[0].request.n == 6


def test_best_of_n_with_verifier_prefers_a_verified_answer():
    # toy verifier accepts digit strings; the unverifiable answer has the best logprob
    texts = ["no digits here", "The answer is 3"]
    ctx = _ctx()
    scorer = VerifierScorer()
    good = Completion("The answer is 3", (1, 2, 3, 4), "stop", (-2.0, -2.0, -2.0, -2.0))
    bad = Completion("no digits here", (1, 2, 3), "stop", (-0.01, -0.01, -0.01))
    assert scorer.score(ctx, good, "3") > scorer.score(ctx, bad, None)
    (outcome, _), = drive(_scripted(texts), [BestOfN(n=2, scorer="verifier").run(ctx)])
    assert outcome.answer == "3"


def test_logprob_scorer_is_the_mean_token_logprob():
    c = Completion("x", (1, 2), "stop", (-1.0, -3.0))
    assert LogprobScorer().score(_ctx(), c, "1") == pytest.approx(-2.0)
    assert LogprobScorer().score(_ctx(), c, None) == -math.inf


def test_verifier_scorer_refuses_a_task_without_verifier():
    from dataclasses import replace

    task = replace(toy_task(), verifier=None)
    with pytest.raises(StrategyError, match="no serve-time verifier"):
        BestOfN(n=2, scorer="verifier").check_task(task)


def test_unknown_strategy_suggests_the_closest_name():
    with pytest.raises(StrategyError) as info:
        make_strategy("majorty")
    assert "did you mean 'majority'" in str(info.value)
