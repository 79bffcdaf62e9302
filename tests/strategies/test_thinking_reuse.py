"""Thoughts drawn at the largest budget serve every smaller one through the sample store
(budget forcing): the scores equal a live run at each budget, and only the answers of cut
thoughts are generated."""

from __future__ import annotations

import dataclasses

import pytest

from jointopt.backends import CachedBackend, SampleStore, ScriptedBackend
from jointopt.core.generation import ChatMessage, GenerationRequest
from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.core.thinking import ThinkingSpec
from jointopt.evaluation.evaluate import evaluate
from jointopt.tasks import make_task
from jointopt.testing.thinking import NEED_PER_STEP, thinking_responder

SPEC = ThinkingSpec(budget=1, engine="forcing", answer_cue="Final answer: ")
BUDGETS = (128, 64, 32)  # the largest first: the smaller ones are cut from its pools


class Logged(ScriptedBackend):
    """The scripted thinking model, recording the budget of every thought it generates
    and the answer requests it gets."""

    def __init__(self) -> None:
        super().__init__(thinking_responder)
        self.thought_caps: list[int] = []
        #: (level, budget) of every thought pool drawn (levels from the story's steps).
        self.thoughts: list[tuple[str, int]] = []
        self.answers = 0

    def generate(self, requests):
        from jointopt.testing.thinking import solve_story

        for r in requests:
            if r.continuation == SPEC.start:
                self.thought_caps.append(r.max_tokens)
                steps = solve_story(r.messages[-1].content)[1]
                self.thoughts.append((str(steps), r.max_tokens))
            else:
                self.answers += 1
        return super().generate(requests)


def _task():
    # steps 1-4 need 24/48/72/96 thought tokens: level 1 ends by itself within 32
    return make_task("word_problems", levels=(1, 2, 3, 4), n_per_level=3, seed=0, n_demos=0)


def _policy(budget: int, strategy: str = "majority", n: int = 3) -> Policy:
    bins = ("1", "2", "3", "4")
    params = {"n": n} if strategy == "majority" else {}
    return Policy(model="scripted", prompt=PromptTemplate(id="p", user="{{ question }}"),
                  difficulty=DifficultySpec(source="label", bins=bins, default_bin="4"),
                  bins={b: Allocation(strategy, 0.7, 8, params=params,
                                      thinking={**SPEC.to_dict(), "budget": budget})
                        for b in bins})


@pytest.mark.parametrize("strategy", ["single", "majority"])
def test_smaller_budgets_are_cut_from_the_largest_and_score_as_live(tmp_path, strategy):
    task, inner = _task(), Logged()
    cached = CachedBackend(inner, SampleStore(tmp_path / "s.sqlite"), share_caps=True)
    got = {b: evaluate(_policy(b, strategy), task, cached, seed=0) for b in BUDGETS}
    assert set(inner.thought_caps) == {128}  # thoughts drawn once, at the largest budget
    for budget in BUDGETS:
        live = evaluate(_policy(budget, strategy), task, Logged(), seed=0)
        # the same records but for where the tokens came from (and the time taken)
        assert got[budget].records == tuple(
            dataclasses.replace(r, cached=g.cached, reused_tokens=g.reused_tokens,
                                wall_time=g.wall_time)
            for r, g in zip(live.records, got[budget].records))
        assert [r.answer for r in got[budget].records] == [r.answer for r in live.records]
        assert got[budget].accuracy == live.accuracy
        assert got[budget].mean_tokens == live.mean_tokens
    assert got[128].tokens_reused == 0
    assert 0 < got[64].tokens_generated < got[32].tokens_generated < got[128].tokens_generated
    cached.store.close()


def test_generated_tokens_are_the_answers_of_cut_thoughts_only(tmp_path):
    task, inner = _task(), Logged()
    cached = CachedBackend(inner, SampleStore(tmp_path / "s.sqlite"), share_caps=True)
    evaluate(_policy(128), task, cached, seed=0)
    answers_at_128 = inner.answers
    result = evaluate(_policy(32), task, cached, seed=0)
    by_level: dict[str, list] = {}
    for record in result.records:
        by_level.setdefault(record.bin, []).append(record)
    # level 1 thinks 24 tokens and stops by itself: thought and answer are reused whole
    assert NEED_PER_STEP < 32
    assert all(r.reused_tokens == r.completion_tokens and r.cached for r in by_level["1"])
    # levels 2-4 are cut at 32: the thought is reused, the answer after the forced end
    # is generated (one request per example: its three equal cut thoughts share it)
    for level in ("2", "3", "4"):
        for r in by_level[level]:
            assert r.thinking_tokens == 3 * 32
            assert r.reused_tokens == 3 * 32
    assert inner.answers - answers_at_128 == sum(len(by_level[lv]) for lv in ("2", "3", "4"))
    assert result.tokens_reused == sum(r.reused_tokens for r in result.records)
    assert result.tokens_generated == sum(r.completion_tokens - r.reused_tokens
                                          for r in result.records)
    metrics = result.metrics()
    assert metrics["completion_tokens_reused"] == result.tokens_reused
    assert metrics["completion_tokens_generated"] == result.tokens_generated
    cached.store.close()


def test_a_larger_budget_than_any_stored_draws_anew(tmp_path):
    task, inner = _task(), Logged()
    cached = CachedBackend(inner, SampleStore(tmp_path / "s.sqlite"), share_caps=True)
    evaluate(_policy(32), task, cached, seed=0)
    evaluate(_policy(64), task, cached, seed=0)
    assert sorted(set(inner.thought_caps)) == [32, 64]
    cached.store.close()


def _request(max_tokens: int, n: int = 2, offset: int = 0) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("user", "count"),), n=n, offset=offset,
                             max_tokens=max_tokens, logprobs=False)  # scripted logprobs hash the cap


def _words(request, index, rng):
    return " ".join(f"w{index}x{i}" for i in range(20))


def test_store_serves_a_smaller_cap_from_a_larger_pool_holding_its_samples(tmp_path):
    inner = ScriptedBackend(_words)
    cached = CachedBackend(inner, SampleStore(tmp_path / "s.sqlite"), share_caps=True)
    cached.generate([_request(16)])
    calls = inner.calls
    small = cached.generate([_request(5)])[0]
    assert inner.calls == calls and small.cached == 2 and small.reused_tokens == 10
    assert small.completions == ScriptedBackend(_words).generate([_request(5)])[0].completions
    assert all(c.finish_reason == "length" for c in small.completions)
    # more samples than the larger pool holds: the cap's pool (the larger one) grows
    more = cached.generate([_request(5, n=3)])[0]
    assert inner.calls == calls + 1 and more.cached == 2 and more.completions[:2] == \
        small.completions
    assert len(cached.store.pool(cached.key(_request(16)), 10)[1]) == 3  # grown at cap 16
    cached.store.close()


def _random_words(request, index, rng):
    """Each pool its own words (the scripted rng hashes the cap): pools tell apart."""
    return " ".join(f"w{rng.randrange(1000)}" for _ in range(20))


def test_a_cap_keeps_its_pool_when_a_larger_one_is_drawn_later(tmp_path):
    inner = ScriptedBackend(_random_words)
    cached = CachedBackend(inner, SampleStore(tmp_path / "s.sqlite"), share_caps=True)
    own = cached.generate([_request(4)])[0]  # drawn at its own cap: bound to it
    cached.generate([_request(16)])
    cut = cached.generate([_request(8)])[0]  # first asked now: cut from the 16 pool
    cached.generate([_request(32)])
    calls = inner.calls
    assert cached.generate([_request(8)])[0].completions == cut.completions
    assert cached.generate([_request(4)])[0].completions == own.completions
    assert inner.calls == calls
    # another process opening the store sees the same bindings
    again = CachedBackend(ScriptedBackend(_random_words), SampleStore(tmp_path / "s.sqlite"),
                          share_caps=True)
    assert again.generate([_request(8)])[0].completions == cut.completions
    again.store.close()
    cached.store.close()


def test_a_backend_that_cannot_cut_shares_nothing_between_caps(tmp_path):
    from jointopt.testing import RecordingBackend

    inner = RecordingBackend(ScriptedBackend(_words))
    cached = CachedBackend(inner, SampleStore(tmp_path / "s.sqlite"), share_caps=True)
    cached.generate([_request(16)])
    assert cached.generate([_request(5)])[0].cached == 0
    cached.store.close()


@pytest.mark.parametrize("options", [{"share_caps": False}, {}])
def test_share_caps_off_keeps_a_pool_per_cap(tmp_path, options):
    # off unless asked for, or implied by draw_max_tokens (bank.cut_max_tokens)
    inner = ScriptedBackend(_words)
    cached = CachedBackend(inner, SampleStore(tmp_path / "s.sqlite"), **options)
    assert not cached.share_caps
    cached.generate([_request(16)])
    assert cached.generate([_request(5)])[0].cached == 0
    cached.store.close()
    assert CachedBackend(inner, SampleStore(tmp_path / "t.sqlite"), draw_max_tokens=16
                         ).share_caps


def test_a_study_over_budgets_scores_as_live_and_draws_fewer_thoughts(tmp_path):
    import yaml

    from jointopt.search.config import load_config
    from jointopt.search.plan import plan_study
    from jointopt.search.study import run_study

    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "prompts": [{"id": "p", "user": "{{ question }}"}], "strategies": {"single": {}},
        "temperature": 0.7, "max_tokens": 8, "thinking_budget": {"choices": [32, 64, 128]},
        "thinking": {"engine": "forcing", "answer_cue": "Final answer: "},
        "difficulty": {"source": "label"}}))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "reuse", "output_dir": str(tmp_path / "run"), "model": {"backend": "scripted"},
        "task": {"builtin": {"family": "word_problems", "levels": [1, 2, 3, 4],
                             "n_per_level": 4, "seed": 0}},
        "search_space": "space.yaml", "optimizer": {"n_trials": 12, "seed": 0},
        "tracking": {"enabled": False}, "validation": {"resamples": 100},
        "bank": {"cut_max_tokens": True}}))  # pools of one family shared, cut
    config = load_config(tmp_path / "study.yaml")
    inner = Logged()
    result = run_study(config, backend=inner)
    trials = [t for t in result.trials if t.policy]
    plan = plan_study(config)
    bins = {e.id: e.difficulty for e in plan.task.examples}
    # a store without sharing draws a thought pool per (level, budget) the trials visit
    visited = {(str(b), t.policy.bins[str(b)].thinking.budget) for t in trials
               for b in set(bins.values())}
    drawn = {(level, cap) for level, cap in inner.thoughts}
    assert drawn < visited
    for t in trials:  # every trial scores exactly what live thoughts at its budgets give
        live = evaluate(t.policy, plan.task, Logged(), seed=config.seed)
        assert (live.accuracy, live.mean_tokens) == (t.accuracy, t.mean_tokens)
    import optuna

    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    attrs = [t.user_attrs for t in study.trials]
    assert all({"completion_tokens_generated", "completion_tokens_reused"} <= set(a)
               for a in attrs)
    assert sum(a["completion_tokens_reused"] for a in attrs) > 0
    # the trial record and trials.csv carry it too
    assert sum(t.tokens_reused or 0 for t in result.trials) > 0
    import csv

    with (tmp_path / "run" / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sum(int(r["tokens_reused"] or 0) for r in rows) == sum(
        int(t.tokens_reused or 0) for t in result.trials)


def test_pooled_evaluation_counts_generated_then_reused_tokens(tmp_path):
    task = _task()
    cached = CachedBackend(Logged(), SampleStore(tmp_path / "s.sqlite"))
    policy = Policy(model="scripted", prompt=PromptTemplate(id="p", user="{{ question }}"),
                    difficulty=DifficultySpec(), bins={"all": Allocation(
                        "majority", 0.7, 8, params={"n": 3})})
    first = evaluate(policy, task, cached, seed=0, pool_size=4)
    again = evaluate(policy, task, cached, seed=0, pool_size=4)
    assert first.tokens_generated > 0 == first.tokens_reused
    assert (again.tokens_generated, again.tokens_reused) == (0, first.tokens_generated)
    cached.store.close()
