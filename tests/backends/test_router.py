"""Several models behind one backend: routing, lazy engines, swapping within a limit."""

from __future__ import annotations

import pytest

from jointopt.backends import ScriptedBackend
from jointopt.backends.router import ModelRouter
from jointopt.core.generation import ChatMessage, GenerationRequest
from jointopt.errors import BackendError


class Counted(ScriptedBackend):
    closed = 0

    def close(self) -> None:
        self.closed += 1


def make(built):
    def factory(name):
        def build():
            engine = Counted(lambda r, i, rng: f"{name} says {r.messages[-1].content}",
                             model_id=name)
            built.append(engine)
            return engine
        return build
    return {name: factory(name) for name in ("a", "b", "c")}


def req(text, model=None):
    return GenerationRequest(messages=(ChatMessage("user", text),), n=2, model=model)


def test_requests_go_to_their_models_engine_in_order_and_engines_are_built_lazily():
    built = []
    router = ModelRouter(make(built), default="a")
    assert built == []
    requests = [req("x", "b"), req("y"), req("z", "a"), req("w", "b")]
    results = router.generate(requests)
    assert [r.request for r in results] == requests  # the caller's requests, model kept
    assert [r.completions[0].text for r in results] == ["b says x", "a says y", "a says z",
                                                        "b says w"]
    assert [e.model_id for e in built] == ["b", "a"]  # built on first request, once each
    assert [e.requests_seen for e in built] == [2, 2]
    assert all(e.calls == 1 for e in built)  # one batch per model per round
    # Engines get the request without the router's field: their samples and store keys
    # are those of a one-model study.
    alone = ScriptedBackend(lambda r, i, rng: f"b says {r.messages[-1].content}",
                            model_id="b").generate([req("x")])
    assert results[0].completions == alone[0].completions


def test_at_most_max_loaded_engines_the_least_recently_used_is_closed():
    built = []
    router = ModelRouter(make(built), default="a", max_loaded=2)
    router.generate([req("1", "a")])
    router.generate([req("2", "b")])
    router.generate([req("3", "a")])  # a is now the most recently used
    router.generate([req("4", "c")])  # closes b
    assert sorted(router.engines) == ["a", "c"]
    assert [e.closed for e in built] == [0, 1, 0]
    router.generate([req("5", "b")])  # closes a, builds b again
    assert router.builds == {"a": 1, "b": 2, "c": 1}
    router.close()
    assert router.engines == {} and all(e.closed == 1 for e in built)


def test_an_unknown_model_is_refused_by_name():
    router = ModelRouter(make([]), default="a")
    with pytest.raises(BackendError) as info:
        router.generate([req("x", "zz")])
    assert "zz" in str(info.value) and "'a', 'b', 'c'" in str(info.value)
    with pytest.raises(BackendError):
        ModelRouter(make([]), default="nope")
    with pytest.raises(BackendError):
        ModelRouter(make([]), default="a", max_loaded=0)
