"""One pool per temperature, cut at max_tokens (``CachedBackend(draw_max_tokens=...)``)."""

from __future__ import annotations

import random

import yaml

from jointopt.backends import CachedBackend, SampleStore, ScriptedBackend
from jointopt.core.generation import ChatMessage, GenerationRequest
from jointopt.evaluation.evaluate import evaluate
from jointopt.search.config import load_config
from jointopt.search.plan import plan_study
from jointopt.search.study import run_study


def ramble(request: GenerationRequest, index: int, rng: random.Random) -> str:
    """Sample ``index`` thinks aloud for a while, then answers (right for most indices):
    a pure function of the prompt and the index, as a sample's first tokens are of its
    first tokens' distribution."""
    text = request.messages[-1].content
    a, b = (int(x) for x in text.rstrip("?").split()[-3::2])
    answer = a + b + (1 if index % 4 == 3 else 0)
    return "Hmm, let me think." * ((index * 7 + a) % 9) + f" The answer is {answer}."


class Logged(ScriptedBackend):
    def __init__(self) -> None:
        super().__init__(ramble)
        self.caps: set[int] = set()

    def generate(self, requests):
        self.caps.update(r.max_tokens for r in requests)
        return super().generate(requests)


def request(max_tokens: int) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("user", "What is 3 + 4?"),), n=6,
                             max_tokens=max_tokens, logprobs=False)


def test_a_smaller_cap_is_the_cut_of_the_larger_pool(tmp_path):
    inner = Logged()
    cached = CachedBackend(inner, SampleStore(tmp_path / "s.sqlite"), draw_max_tokens=64)
    for cap in (8, 16, 64):
        got = cached.generate([request(cap)])[0]
        live = ScriptedBackend(ramble).generate([request(cap)])[0]
        assert got.request.max_tokens == cap
        assert got.completions == live.completions
    assert inner.caps == {64}
    assert any(c.finish_reason == "length" for c in cached.generate([request(8)])[0].completions)
    cached.store.close()


def test_a_backend_that_cannot_cut_keeps_a_pool_per_cap(tmp_path):
    from jointopt.testing import RecordingBackend

    cached = CachedBackend(RecordingBackend(ScriptedBackend(ramble)),
                           SampleStore(tmp_path / "s.sqlite"), draw_max_tokens=64)
    assert cached.draw_max_tokens is None
    cached.store.close()


def test_a_study_over_caps_draws_one_pool_per_temperature(tmp_path):
    import json

    rows = [{"id": f"q{i}", "question": f"What is {i} + {2 * i}?", "answer": str(3 * i)}
            for i in range(12)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "prompts": [{"id": "plain", "user": "{{ question }}"}],
        "strategies": {"single": {}, "majority": {"n": {"choices": [3, 5]}}},
        "temperature": 0.7, "max_tokens": {"choices": [16, 32, 64]}}))
    config = {"name": "cut", "output_dir": str(tmp_path / "run"), "model": {"backend": "scripted"},
              "task": {"dataset": {"path": "data.jsonl", "extractor": {"kind": "last_number"},
                                   "matcher": {"kind": "numeric"}}},
              # a budget queues the settings cheapest first: every cap is visited
              "search_space": "space.yaml",
              "optimizer": {"n_trials": 6, "seed": 0, "max_generated_tokens": 10_000_000},
              "tracking": {"enabled": False}, "bank": {"cut_max_tokens": True},
              "validation": {"resamples": 200}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    study_config = load_config(tmp_path / "study.yaml")
    inner = Logged()
    result = run_study(study_config, backend=inner)
    assert inner.caps == {64}
    caps = {t.policy.bins["all"].max_tokens for t in result.trials if t.policy}
    assert caps == {16, 32, 64}
    # every trial scores exactly what a live pool drawn at its own cap gives
    plan = plan_study(study_config)
    live = CachedBackend(ScriptedBackend(ramble), SampleStore(tmp_path / "live.sqlite"))
    for t in result.trials:
        again = evaluate(t.policy, plan.task, live, pool_size=8)
        assert (again.accuracy, again.mean_tokens) == (t.accuracy, t.mean_tokens)
    live.store.close()
