"""Pools cut at max_tokens on the real engine: scores match pools drawn at each cap."""

from __future__ import annotations

import pytest

from jointopt.backends import Backend, CachedBackend, SampleStore
from jointopt.core.policy import Allocation, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.evaluation.evaluate import evaluate
from jointopt.evaluation.stats import bootstrap
from jointopt.tasks import make_task

pytestmark = pytest.mark.engine


class Caps(Backend):
    """The engine, noting the max_tokens of every request it gets (cuts through it)."""

    name = "caps"

    def __init__(self, inner) -> None:
        self.inner, self.caps = inner, set()

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def generate(self, requests):
        self.caps.update(r.max_tokens for r in requests)
        return self.inner.generate(requests)

    def cut(self, completion, max_tokens):
        return self.inner.cut(completion, max_tokens)


def test_cut_pools_score_like_pools_drawn_at_each_cap(engine, tmp_path):
    task = make_task("reverse_words", levels=(1, 2), n_per_level=10, n_demos=3)
    prompt = PromptTemplate(id="think", system="Think, then answer on the last line.",
                            user="{{ question }}")
    caps = Caps(engine)
    cut = CachedBackend(caps, SampleStore(tmp_path / "cut.sqlite"), draw_max_tokens=64)
    live = CachedBackend(engine, SampleStore(tmp_path / "live.sqlite"))
    for cap in (16, 32):
        policy = Policy(model="m", prompt=prompt,
                        bins={"all": Allocation("single", 0.8, cap)})
        a = evaluate(policy, task, cut, pool_size=8)
        b = evaluate(policy, task, live, pool_size=8)
        diff = [x.correct - y.correct for x, y in zip(a.records, b.records)]
        interval = bootstrap(diff, resamples=1000, level=0.99)
        assert interval.low <= 0.0 <= interval.high, (cap, interval)
        ratio = a.mean_completion_tokens / b.mean_completion_tokens
        assert 0.8 <= ratio <= 1.25, (cap, ratio)
        assert all(r.completion_tokens <= cap for r in a.records)
    assert caps.caps == {64}
    cut.store.close()
    live.store.close()
