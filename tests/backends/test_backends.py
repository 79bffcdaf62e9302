"""Scripted and cached backends: contract suite plus caching behaviour."""

from __future__ import annotations

import pytest

from jointopt.backends import CachedBackend, SampleStore, ScriptedBackend
from jointopt.backends.scripted import tokenize
from jointopt.core.generation import ChatMessage, GenerationRequest
from jointopt.testing import BackendContract


def _ramble(request, index, rng):
    return " ".join(["word"] * rng.randint(1, 12)) + f" {index}"


class TestScriptedBackend(BackendContract):
    @pytest.fixture
    def backend(self):
        return ScriptedBackend(_ramble)


class TestCachedBackend(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path):
        return CachedBackend(ScriptedBackend(_ramble), SampleStore(tmp_path / "s.sqlite"))


def _req(n, text="hello there", **kw):
    return GenerationRequest(messages=(ChatMessage("user", text),), n=n, max_tokens=16, **kw)


def test_tokens_come_from_the_tokenizer():
    backend = ScriptedBackend(lambda r, i, rng: "a b, c")
    result = backend.generate([_req(1)])[0]
    assert result.completions[0].num_tokens == len(tokenize("a b, c")) == 4


def test_cache_reuses_a_pool_and_grows_it_only_when_needed(tmp_path):
    inner = ScriptedBackend(_ramble)
    cached = CachedBackend(inner, SampleStore(tmp_path / "s.sqlite"))
    first = cached.generate([_req(4)])[0]
    assert first.cached == 0 and inner.requests_seen == 1
    again = cached.generate([_req(2)])[0]
    assert again.cached == 2 and inner.requests_seen == 1
    assert again.completions == first.completions[:2]
    assert again.total_tokens == again.prompt_tokens + sum(
        c.num_tokens for c in first.completions[:2])
    grown = cached.generate([_req(6)])[0]
    assert grown.cached == 4 and inner.requests_seen == 2
    assert grown.completions[:4] == first.completions
    assert cached.generated == 6 and cached.hits == 6


def test_cache_persists_across_processes_and_separates_sampling_settings(tmp_path):
    path = tmp_path / "s.sqlite"
    CachedBackend(ScriptedBackend(_ramble), SampleStore(path)).generate([_req(3)])
    inner = ScriptedBackend(_ramble)
    cached = CachedBackend(inner, SampleStore(path))
    assert cached.generate([_req(3)])[0].cached == 3
    assert inner.requests_seen == 0
    cached.generate([_req(3, temperature=0.2)])
    assert inner.requests_seen == 1  # another temperature is another pool


def test_cache_keys_include_the_model(tmp_path):
    store = SampleStore(tmp_path / "s.sqlite")
    CachedBackend(ScriptedBackend(_ramble, model_id="a"), store).generate([_req(2)])
    other = ScriptedBackend(_ramble, model_id="b")
    CachedBackend(other, store).generate([_req(2)])
    assert other.requests_seen == 1


def test_offset_requests_get_later_samples_of_the_same_pool(tmp_path):
    inner = ScriptedBackend(_ramble)
    cached = CachedBackend(inner, SampleStore(tmp_path / "s.sqlite"))
    first = cached.generate([_req(2)])[0]
    later = cached.generate([_req(3, offset=2)])[0]
    assert later.cached == 0 and inner.requests_seen == 2
    whole = cached.generate([_req(5)])[0]
    assert whole.cached == 5
    assert whole.completions == first.completions + later.completions
    # the same samples without the store: offsets index the same sequence
    direct = ScriptedBackend(_ramble).generate([_req(3, offset=2)])[0]
    assert direct.completions == later.completions


def test_greedy_requests_are_generated_once_and_copied(tmp_path):
    inner = ScriptedBackend(_ramble)
    cached = CachedBackend(inner, SampleStore(tmp_path / "s.sqlite"))
    result = cached.generate([_req(4, temperature=0.0)])[0]
    assert len(result.completions) == 4 and result.copies == 3
    assert len(set(result.completions)) == 1
    assert result.completion_tokens == result.completions[0].num_tokens
    assert inner.requests_seen == 1
    again = cached.generate([_req(2, temperature=0.0, offset=3)])[0]
    assert again.completions[0] == result.completions[0] and inner.requests_seen == 1
