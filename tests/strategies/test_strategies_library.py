"""The strategy library: contract suite plus behaviour checks for each strategy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import pytest

from jointopt.backends import ScriptedBackend
from jointopt.backends.base import Backend
from jointopt.errors import StrategyError
from jointopt.evaluation.evaluate import drive
from jointopt.core.generation import ChatMessage, Completion, GenerationRequest, GenerationResult
from jointopt.strategies import STRATEGIES, StrategyContext, make_strategy
from jointopt.strategies.adaptive import AdaptiveVote
from jointopt.strategies.hybrid import ParallelRevision, split_budget
from jointopt.strategies.mcts import MCTS, uct_choice, uct_score
from jointopt.strategies.parallel import MajorityVote, SingleSample
from jointopt.strategies.sequential import DEFAULT_REVISION_PROMPT, RevisionChain
from jointopt.strategies.weighted import WeightedVote
from jointopt.testing import RecordingBackend, StrategyContract, noisy_responder, toy_task

# --------------------------------------------------------------------------- helpers


def _ctx(task=None, index: int = 1, max_tokens: int = 32, **kw) -> StrategyContext:
    task = task or toy_task()
    ex = task.examples[index]
    return StrategyContext(example=ex, task=task, messages=(ChatMessage("user", "q"),),
                           temperature=0.7, max_tokens=max_tokens, seed=11, **kw)


def _run(strategy, responder, ctx=None):
    """Run one example; returns (outcome, results, recording backend)."""
    backend = RecordingBackend(ScriptedBackend(responder))
    (outcome, results), = drive(backend, [strategy.run(ctx or _ctx())])
    return outcome, results, backend


def _requests(backend: RecordingBackend) -> list[list[GenerationRequest]]:
    return [[r.request for r in batch] for batch in backend.batches]


class FixedBackend(Backend):
    """Returns the given completions, in order, across all requests."""

    def __init__(self, completions: Sequence[Completion]) -> None:
        self.completions = list(completions)

    @property
    def model_id(self) -> str:
        return "fixed"

    def generate(self, requests):
        out = []
        for request in requests:
            got, self.completions = self.completions[: request.n], self.completions[request.n:]
            out.append(GenerationResult(request, 5, tuple(got)))
        return out


def _completion(text: str, logprob: float, tokens: int = 4) -> Completion:
    return Completion(text, tuple(range(tokens)), "stop", (logprob,) * tokens)


# --------------------------------------------------------------------------- contracts


class TestRevisionChain(StrategyContract):
    bad_params = [({"rounds": 0}, "rounds"), ({"rounds": -2}, "rounds"),
                  ({"context": 0}, "context"), ({"aggregate": "mean"}, "aggregate"),
                  ({"revision_prompt": ""}, "revision_prompt")]

    @pytest.fixture
    def strategy(self):
        return RevisionChain(rounds=3, context=2, aggregate="vote")


class TestParallelRevision(StrategyContract):
    bad_params = [({"chains": 0}, "chains"), ({"rounds": -1}, "rounds"),
                  ({"context": 0}, "context"), ({"chain_share": 0.3}, "chain_share"),
                  ({"budget": 0}, "budget"), ({"budget": 8, "chain_share": 1.5}, "chain_share"),
                  ({"budget": 16, "chains": 3}, "chains")]

    @pytest.fixture
    def strategy(self):
        return ParallelRevision(chains=3, rounds=2)


class TestWeightedVote(StrategyContract):
    bad_params = [({"n": 0}, "n"), ({"weight": "mean_logprobs"}, "weight"),
                  ({"weight": "scorer:oracle"}, "weight")]

    @pytest.fixture(params=["mean_logprob", "sum_logprob", "scorer:verifier", "scorer:auto"])
    def strategy(self, request):
        return WeightedVote(n=5, weight=request.param)


class TestAdaptiveVote(StrategyContract):
    bad_params = [({"batch": 0}, "batch"), ({"max_n": 0}, "max_n"),
                  ({"threshold": 0.3}, "threshold"), ({"threshold": 1.5}, "threshold"),
                  ({"min_n": 0}, "min_n"), ({"min_n": 20, "max_n": 8}, "min_n")]

    @pytest.fixture
    def strategy(self):
        return AdaptiveVote(batch=3, max_n=10, min_n=3, threshold=0.7)


class TestMCTS(StrategyContract):
    bad_params = [({"iterations": 0}, "iterations"), ({"branching": 0}, "branching"),
                  ({"c": -0.5}, "c"), ({"c": math.inf}, "c"), ({"max_depth": 0}, "max_depth"),
                  ({"rollouts": 0}, "rollouts"), ({"step_delimiter": ""}, "step_delimiter"),
                  ({"value": "agreemnt"}, "value"), ({"final": "best"}, "final")]

    @pytest.fixture(params=["best_value", "most_visited", "vote"])
    def strategy(self, request):
        return MCTS(iterations=6, branching=2, rollouts=2, max_depth=2, final=request.param)


def test_all_library_strategies_are_registered():
    for name, cls in [("revision", RevisionChain), ("parallel_revision", ParallelRevision),
                      ("weighted_vote", WeightedVote), ("adaptive_majority", AdaptiveVote),
                      ("mcts", MCTS)]:
        assert name in STRATEGIES
        assert type(make_strategy(name)) is cls
        assert cls.name == name


# --------------------------------------------------------------------------- revision


def _attempt_counter(request, index, rng):
    """Answers 'attempt k: k+10', k = 1 + the number in the latest attempt shown."""
    shown = [m.content for m in request.messages if m.role == "assistant"]
    k = int(shown[-1].split()[1].rstrip(":")) + 1 if shown else 0
    return f"attempt {k}: {k + 10}"


def test_revision_shows_the_previous_attempts_and_resends_them():
    outcome, results, backend = _run(RevisionChain(rounds=3, context=5), _attempt_counter)
    batches = _requests(backend)
    assert [len(b) for b in batches] == [1, 1, 1]
    first, second, third = (b[0] for b in batches)
    assert first.messages == (ChatMessage("user", "q"),)
    assert second.messages == (ChatMessage("user", "q"),
                               ChatMessage("assistant", "attempt 0: 10"),
                               ChatMessage("user", DEFAULT_REVISION_PROMPT))
    assert third.messages[1:] == (ChatMessage("assistant", "attempt 0: 10"),
                                  ChatMessage("user", DEFAULT_REVISION_PROMPT),
                                  ChatMessage("assistant", "attempt 1: 11"),
                                  ChatMessage("user", DEFAULT_REVISION_PROMPT))
    prompt_tokens = [r.prompt_tokens for r in results]
    assert prompt_tokens[0] < prompt_tokens[1] < prompt_tokens[2]
    assert outcome.answer == "12"  # aggregate "last"
    assert outcome.info["answers"] == ("10", "11", "12")


def test_revision_context_limits_what_is_resent():
    _, wide, backend = _run(RevisionChain(rounds=4, context=3), _attempt_counter)
    _, narrow, narrow_backend = _run(RevisionChain(rounds=4, context=1), _attempt_counter)
    last = _requests(narrow_backend)[-1][0]
    assert last.messages == (ChatMessage("user", "q"), ChatMessage("assistant", "attempt 2: 12"),
                             ChatMessage("user", DEFAULT_REVISION_PROMPT))
    wide_last = _requests(backend)[-1][0]
    assert [m.content for m in wide_last.messages if m.role == "assistant"] == [
        "attempt 0: 10", "attempt 1: 11", "attempt 2: 12"]
    # every narrow revision resends the same amount; wide ones grow
    assert len({r.prompt_tokens for r in narrow[1:]}) == 1
    assert narrow[3].prompt_tokens < wide[3].prompt_tokens
    assert sum(r.total_tokens for r in narrow) < sum(r.total_tokens for r in wide)
    assert sum(r.total_tokens for r in narrow) == narrow_backend.total_tokens


def _by_round(texts):
    """Round r answers texts[r] (needs a context that keeps every attempt)."""
    def respond(request, index, rng):
        return texts[sum(m.role == "assistant" for m in request.messages)]
    return respond


def test_revision_aggregation_last_vs_vote():
    texts = ["It is 5", "It is 5", "It is 7"]
    last, _, _ = _run(RevisionChain(rounds=3, context=3, aggregate="last"), _by_round(texts))
    vote, _, _ = _run(RevisionChain(rounds=3, context=3, aggregate="vote"), _by_round(texts))
    assert (last.answer, vote.answer) == ("7", "5")
    # a vote tie goes to the later attempt; "last" skips a final attempt without answer
    tie, _, _ = _run(RevisionChain(rounds=2, aggregate="vote"), _by_round(["5", "7"]))
    assert tie.answer == "7"
    lost, _, _ = _run(RevisionChain(rounds=2), _by_round(["It is 5", "no idea"]))
    assert lost.answer == "5"


def test_revision_rounds_of_all_examples_are_batched_together():
    task = toy_task(4)
    backend = RecordingBackend(ScriptedBackend(noisy_responder()))
    runs = [RevisionChain(rounds=3).run(_ctx(task, i)) for i in range(4)]
    drive(backend, runs)
    assert [len(b) for b in backend.batches] == [4, 4, 4]


def test_one_round_revision_is_a_single_sample():
    ctx = _ctx()
    _, _, chain = _run(RevisionChain(rounds=1), noisy_responder(), ctx)
    _, _, single = _run(SingleSample(), noisy_responder(), ctx)
    assert _requests(chain) == _requests(single)


# --------------------------------------------------------------------------- weighted vote


def test_weighted_vote_differs_from_majority_on_confident_minority():
    completions = [_completion("It is 7", -3.0)] * 3 + [_completion("It is 9", -0.1)] * 2
    ctx = _ctx()
    (majority, _), = drive(FixedBackend(completions), [MajorityVote(n=5).run(ctx)])
    (weighted, _), = drive(FixedBackend(completions),
                           [WeightedVote(n=5, weight="mean_logprob").run(ctx)])
    assert majority.answer == "7"
    assert weighted.answer == "9"
    assert [c.score for c in weighted.candidates][:1] == [pytest.approx(math.exp(-3.0))]


def test_sum_logprob_weighs_sequence_likelihood_without_underflow():
    # per token the long answer is likelier; as a sequence it is far less likely
    completions = [_completion("It is 3", -0.5, tokens=2000)] * 2 + [_completion("It is 4", -1.0,
                                                                                 tokens=4)]
    ctx = _ctx()
    (by_mean, _), = drive(FixedBackend(completions),
                          [WeightedVote(n=3, weight="mean_logprob").run(ctx)])
    (by_sum, _), = drive(FixedBackend(completions),
                         [WeightedVote(n=3, weight="sum_logprob").run(ctx)])
    assert by_mean.answer == "3"
    assert by_sum.answer == "4"
    assert by_sum.candidates[2].score == 1.0  # relative to the likeliest sample
    # sequences too unlikely for exp() still vote by their relative likelihood
    far = [_completion("It is 5", -1.0, 3000), _completion("It is 6", -1.0, 3001)]
    (outcome, _), = drive(FixedBackend(far), [WeightedVote(n=2, weight="sum_logprob").run(ctx)])
    assert outcome.answer == "5" and outcome.candidates[1].score == pytest.approx(math.exp(-1))


def test_verifier_weights_let_verified_answers_win():
    # the toy verifier rejects negative numbers
    completions = [_completion("It is -3", -0.1)] * 3 + [_completion("It is 4", -2.0)] * 2
    ctx = _ctx()
    (outcome, _), = drive(FixedBackend(completions),
                          [WeightedVote(n=5, weight="scorer:verifier").run(ctx)])
    assert outcome.answer == "4"
    task = replace(toy_task(), verifier=None)
    with pytest.raises(StrategyError, match="weighted_vote.weight"):
        WeightedVote(weight="scorer:verifier").check_task(task)
    WeightedVote(weight="scorer:auto").check_task(task)  # falls back to logprob


@pytest.mark.parametrize("weight", ["mean_logprob", "sum_logprob", "scorer:verifier"])
def test_weighted_vote_pool_score_matches_a_run_on_the_whole_pool(weight):
    from jointopt.strategies.pool import PoolSample

    completions = ([_completion("It is -3", -0.1)] * 2 + [_completion("It is 4", -2.0)] * 2
                   + [_completion("It is 5", -1.0, tokens=1)])
    ctx = _ctx(index=1)  # toy example 1: 1 + 2, target "3"
    strategy = WeightedVote(n=5, weight=weight)
    (outcome, _), = drive(FixedBackend(completions), [strategy.run(ctx)])
    for target in ("-3", "4", "5"):
        pool = [PoolSample(answer=ctx.extract(c.text),
                           correct=ctx.extract(c.text) == target,
                           completion_tokens=c.num_tokens, mean_logprob=c.mean_logprob,
                           sum_logprob=c.sum_logprob) for c in completions]
        expected = strategy.score_pool(pool, completions, ctx)
        assert expected.accuracy == pytest.approx(1.0 if outcome.answer == target else 0.0)
    assert strategy.pool_k() == 5


# --------------------------------------------------------------------------- adaptive vote


def test_adaptive_stops_early_on_unanimous_answers():
    same = lambda request, index, rng: "The answer is 5"  # noqa: E731
    outcome, results, _ = _run(AdaptiveVote(batch=2, max_n=10, min_n=2, threshold=0.8), same)
    assert [r.request.n for r in results] == [2]
    assert outcome.answer == "5" and outcome.info["samples"] == 2
    # threshold 1.0 with min_n = max_n: stop only once the others cannot catch up (6 > 4)
    outcome, results, _ = _run(AdaptiveVote(batch=2, max_n=10, min_n=10, threshold=1.0), same)
    assert [r.request.n for r in results] == [2, 2, 2]


def test_adaptive_spends_max_n_on_split_votes_and_never_more():
    split = lambda request, index, rng: f"The answer is {5 + index % 2}"  # noqa: E731
    outcome, results, _ = _run(AdaptiveVote(batch=4, max_n=10, min_n=2, threshold=0.6), split)
    assert [r.request.n for r in results] == [4, 4, 2]
    assert outcome.info["samples"] == 10
    assert outcome.answer == "5"
    # every round draws fresh samples: offsets follow the samples drawn
    assert [r.request.offset for r in results] == [0, 4, 8]
    big = AdaptiveVote(batch=7, max_n=5, min_n=1)
    _, results, _ = _run(big, split)
    assert sum(r.request.n for r in results) == 5 == big.max_completions()


def test_adaptive_none_answers_count_against_the_threshold():
    texts = ["5", "no idea", "no idea", "5"]
    responder = lambda request, index, rng: texts[index % 4]  # noqa: E731
    outcome, results, _ = _run(AdaptiveVote(batch=4, max_n=8, min_n=4, threshold=0.75),
                               responder)
    # 2 of 4 samples is a 0.5 share (the two unanswered ones count), so it goes on
    assert len(results) == 2 and outcome.answer == "5"


# --------------------------------------------------------------------------- hybrid


def test_parallel_revision_sends_m_completions_per_round_in_one_yield():
    def distinct(request, index, rng):
        shown = [m.content for m in request.messages if m.role == "assistant"]
        return f"{shown[-1]} again" if shown else f"The answer is {index}"

    outcome, results, backend = _run(ParallelRevision(chains=3, rounds=3), distinct)
    batches = _requests(backend)
    assert len(batches) == 3
    assert [r.n for r in batches[0]] == [3]  # round 1: one request, n = m
    for batch in batches[1:]:
        assert len(batch) == 3 and all(r.n == 1 for r in batch)
        # each chain's revision shows that chain's own previous attempt
        shown = sorted(r.messages[1].content for r in batch)
        assert len(set(shown)) == 3
    assert sum(len(r.completions) for r in results) == 9 == ParallelRevision(
        chains=3, rounds=3).max_completions()


def test_parallel_revision_chains_with_equal_contexts_share_a_request():
    same = lambda request, index, rng: "The answer is 5"  # noqa: E731
    _, _, backend = _run(ParallelRevision(chains=4, rounds=2), same)
    second = _requests(backend)[1]
    assert [r.n for r in second] == [4]


def test_parallel_revision_votes_across_chains_last_answers():
    def respond(request, index, rng):
        if len(request.messages) == 1:
            return f"The answer is {index}"  # chains start at 0, 1, 2
        previous = request.messages[-2].content
        return "The answer is 2" if previous.endswith("2") else "The answer is 4"

    outcome, _, _ = _run(ParallelRevision(chains=3, rounds=2), respond)
    assert outcome.info["answers"] == (("0", "4"), ("1", "4"), ("2", "2"))
    assert outcome.answer == "4"  # first-round majority would be "0"


def test_parallel_revision_one_round_is_majority_vote():
    ctx = _ctx()
    _, _, hybrid = _run(ParallelRevision(chains=5, rounds=1), noisy_responder(), ctx)
    _, _, majority = _run(MajorityVote(n=5), noisy_responder(), ctx)
    assert _requests(hybrid) == _requests(majority)


def test_parallel_revision_budget_shape():
    assert split_budget(16, 0.5) == (4, 4)
    assert split_budget(16, 0.0) == (1, 16)
    assert split_budget(16, 1.0) == (16, 1)
    assert split_budget(10, 0.5) == (3, 3)
    s = ParallelRevision(budget=16, chain_share=0.75)
    assert (s.params.chains, s.params.rounds) == (8, 2)
    assert ParallelRevision(budget=16, chains=4).params.rounds == 4  # consistent: accepted
    assert (ParallelRevision().params.chains, ParallelRevision().params.rounds) == (4, 2)
    for share in (0.0, 0.3, 0.6, 1.0):
        assert ParallelRevision(budget=12, chain_share=share).max_completions() <= 12


# --------------------------------------------------------------------------- MCTS


def test_uct_choice_on_a_hand_built_node():
    children = [(5, 4.0), (2, 1.0), (3, 2.4)]  # Q = 0.8, 0.5, 0.8
    assert uct_choice(10, children, c=0.0) == 0  # greedy; tie 0.8/0.8 -> lower index
    # c = 1: 0.8 + sqrt(ln10/5) = 1.479, 0.5 + sqrt(ln10/2) = 1.573, 0.8 + sqrt(ln10/3) = 1.676
    assert uct_choice(10, children, c=1.0) == 2
    assert uct_score(10, 2, 1.0, 1.0) == pytest.approx(0.5 + math.sqrt(math.log(10) / 2))
    # c = 3: exploration dominates, the least visited wins
    assert uct_choice(10, children, c=3.0) == 1
    assert uct_choice(10, [(5, 4.0), (0, 0.0), (0, 0.0)], c=1.0) == 1  # first unvisited


def _steps(request, index, rng):
    """Never finishes: every expansion is a new step, rollouts answer by their prefix."""
    depth = request.continuation.count("\n")
    if request.stop:
        return f"step {depth}.{index}\nrest"
    return f"so the answer is {depth + 1}"


def test_mcts_one_round_per_iteration_one_expansion_per_node():
    task = toy_task(3)
    backend = RecordingBackend(ScriptedBackend(_steps))
    strategy = MCTS(iterations=7, branching=2, rollouts=3, max_depth=3)
    outcomes = drive(backend, [strategy.run(_ctx(task, i)) for i in range(3)])
    assert len(backend.batches) == 7
    for batch in _requests(backend):
        assert len(batch) == 6  # per example: one expansion and one evaluation
        expansions = [r for r in batch if r.stop]
        assert len(expansions) == 3 and all(r.n == 2 and r.stop == ("\n",) for r in expansions)
        assert all(r.n == 3 for r in batch if not r.stop)
    for (outcome, results) in outcomes:
        prefixes = [r.request.continuation for r in results if r.request.stop]
        assert len(prefixes) == len(set(prefixes))  # each node expanded at most once
        assert len(results) == 14
        completions = sum(len(r.completions) for r in results)
        assert completions <= strategy.max_completions() == 35


def test_mcts_respects_max_depth():
    strategy = MCTS(iterations=20, branching=1, rollouts=1, max_depth=3)
    outcome, results, backend = _run(strategy, _steps)
    # root, depth 1 and depth 2 are expanded; depth 3 is terminal: evaluated only;
    # the remaining iterations revisit it without generating
    assert len(backend.batches) == 4
    for r in results:
        depth = r.request.continuation.count("\n")
        assert depth <= (2 if r.request.stop else 3)
    assert outcome.info["depth"] == 3 and outcome.info["rounds"] == 4
    assert outcome.answer == "4"  # the terminal node's rollouts


def test_mcts_returns_an_answer_found_in_the_tree():
    task = toy_task(6)
    backend = ScriptedBackend(noisy_responder())
    for final in ("best_value", "most_visited", "vote"):
        strategy = MCTS(iterations=6, branching=2, rollouts=2, max_depth=2, final=final)
        for outcome, _ in drive(backend, [strategy.run(_ctx(task, i)) for i in range(6)]):
            found = {c.answer for c in outcome.candidates}
            assert outcome.answer is None or outcome.answer in found


def test_mcts_uct_picks_the_better_child_end_to_end():
    def responder(good: str):
        def respond(request, index, rng):
            if request.stop:
                return "path A" if index == 0 else "path B"
            if request.continuation.startswith(good):
                return "answer is 3"  # rollouts agree: value 1.0
            return f"answer is {index}"  # rollouts disagree: value 0.5
        return respond

    for good in ("path A", "path B"):
        strategy = MCTS(iterations=4, branching=2, rollouts=2, max_depth=3, c=0.0,
                        value="agreement")
        outcome, _, backend = _run(strategy, responder(good))
        # iteration 4 descends (c=0: greedy) into the better child, to its first child
        fourth = [r for r in _requests(backend)[3] if r.stop][0]
        assert fourth.continuation == good + "\npath A\n"
        assert outcome.answer == "3"


def test_mcts_node_where_the_model_ends_is_terminal():
    def respond(request, index, rng):
        if not request.continuation:
            return "The answer is 5"  # every expansion and rollout from the root
        return ""  # the model ends right after that step

    outcome, results, backend = _run(MCTS(iterations=5, branching=2, rollouts=2), respond)
    assert len(backend.batches) == 2  # root, then its single (merged) child; no more
    assert [r.request.n for r in results] == [2, 2, 2, 2]
    assert outcome.info["terminal"] == 1 and outcome.info["nodes"] == 2
    assert outcome.answer == "5"


def test_mcts_marked_answer_step_is_terminal():
    respond = lambda request, index, rng: "Answer: 5" if request.stop else "Answer: 5"  # noqa
    ctx = _ctx(answer_regex=r"Answer: (\d+)")
    outcome, results, _ = _run(MCTS(iterations=4, branching=2, rollouts=1), respond, ctx)
    expansions = [r for r in results if r.request.stop]
    assert len(expansions) == 1  # only the root is expanded
    assert outcome.answer == "5"


def test_mcts_token_budget_covers_the_whole_solution():
    outcome, results, _ = _run(MCTS(iterations=6, branching=1, rollouts=1, max_depth=6),
                               _steps, _ctx(max_tokens=10))
    for r in results:
        spent = sum(len(x.completions[0].token_ids) for x in results
                    if x.request.stop and r.request.continuation.startswith(x.request.continuation)
                    and x.request.continuation != r.request.continuation)
        assert r.request.max_tokens == max(1, 10 - spent)
    assert outcome.info["depth"] < 6  # the budget ran out before max_depth


def test_mcts_verifier_value_needs_a_verifier():
    task = replace(toy_task(), verifier=None)
    with pytest.raises(StrategyError, match="mcts.value"):
        MCTS(value="verifier").check_task(task)
    MCTS(value="auto").check_task(task)
