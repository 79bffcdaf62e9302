"""The contract suite every difficulty source
(:class:`~jointopt.difficulty.base.DifficultySource`) passes.

Subclass :class:`DifficultySourceContract` and supply a ``source`` fixture (an instance
with its settings)::

    class TestMySource(DifficultySourceContract):
        @pytest.fixture
        def source(self):
            return MySource(MySource.Settings(n_bins=2))

The suite fits the source (or labels examples, for a source that is not servable) on the
:func:`~jointopt.testing.contracts.toy_task` with a scripted backend, then runs its
policies through the evaluation and the serve-time path; override ``task`` for a source
that needs other examples.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.difficulty.base import DifficultySource
from jointopt.tasks import Task

__all__ = ["DifficultySourceContract"]

_PROMPT = PromptTemplate(id="p", user="{{ question }}")


def _backend() -> Any:
    from jointopt.backends.scripted import ScriptedBackend
    from jointopt.testing.contracts import RecordingBackend, noisy_responder

    return RecordingBackend(ScriptedBackend(noisy_responder(0.6)))


def _prepared(source: DifficultySource, task: Task, backend: Any) -> tuple[DifficultySpec, Task]:
    """The spec a study's trials would use, and the task with the labels they would see."""
    spec = source.space_spec(task)
    if source.needs_fit:
        spec = source.fit(task, backend, prompt=_PROMPT, seed=0)
    if not source.servable:
        labels = source.label_examples(task, backend, prompt=_PROMPT, seed=0)
        task = task.subset(dataclasses.replace(e, difficulty=labels[e.id])
                           for e in task.examples)
    return spec, task


def _policy(spec: DifficultySpec) -> Policy:
    names = list(dict.fromkeys([*spec.bins, spec.default_bin]))
    return Policy(model="scripted", prompt=_PROMPT, difficulty=spec,
                  bins={b: Allocation("single", temperature=0.7, max_tokens=16) for b in names})


class DifficultySourceContract:
    """Tests every :class:`DifficultySource` must pass. Provide a ``source`` fixture."""

    @pytest.fixture
    def source(self) -> DifficultySource:  # pragma: no cover - supplied by subclasses
        raise NotImplementedError("define a `source` fixture")

    @pytest.fixture
    def task(self) -> Task:
        from jointopt.testing.contracts import toy_task

        return toy_task(12)

    def test_declares_its_name_settings_and_capabilities(self, source: DifficultySource) -> None:
        cls = type(source)
        assert isinstance(source, DifficultySource)
        assert isinstance(cls.name, str) and cls.name and source.key
        assert dataclasses.is_dataclass(cls.Settings) and isinstance(source.settings, cls.Settings)
        for flag in ("splits", "servable", "probes", "fit_generates", "needs_fit"):
            assert isinstance(getattr(cls, flag), bool), flag
        assert cls.servable or not cls.probes, "a source that probes at serve time is servable"
        # built from a whole `difficulty:` section, it keeps only its own keys
        config = {"source": source.key, "not_a_setting": 1, **dataclasses.asdict(source.settings)}
        assert cls.from_config(config, source.key) == source

    def test_its_spec_round_trips_through_a_policy_file(self, source: DifficultySource,
                                                       task: Task) -> None:
        spec, _ = _prepared(source, task, _backend())
        assert spec.source_class().servable
        data = json.loads(json.dumps(spec.to_dict()))
        assert DifficultySpec(**data) == spec
        assert Policy.from_dict(_policy(spec).to_dict()) == _policy(spec)

    def test_every_input_gets_a_bin_of_the_policy_and_every_token_is_counted(
            self, source: DifficultySource, task: Task) -> None:
        from jointopt.evaluation.evaluate import evaluate

        spec, task = _prepared(source, task, _backend())
        policy = _policy(spec)
        backend = _backend()
        result = evaluate(policy, task, backend)
        assert len(result.records) == len(task.examples)
        assert all(r.bin in policy.bins for r in result.records)
        assert sum(r.tokens for r in result.records) == backend.total_tokens
        if not spec.source_class().probes:  # the bin costs no generation
            assert all(r.completions == 1 for r in result.records)

    def test_the_serve_time_path_assigns_the_same_bins(self, source: DifficultySource,
                                                       task: Task) -> None:
        from jointopt.evaluation.evaluate import check_policy, drive, evaluate, policy_run

        spec, task = _prepared(source, task, _backend())
        policy = _policy(spec)
        strategies = check_policy(policy, task)
        runs = [policy_run(policy, strategies, task, e) for e in task.examples]
        driven = drive(_backend(), [run for run, _ in runs])
        served = [known or outcome.info["bin"] for (_, known), (outcome, _) in zip(runs, driven)]
        assert served == [r.bin for r in evaluate(policy, task, _backend()).records]

    def test_bins_never_read_the_target(self, source: DifficultySource, task: Task) -> None:
        from jointopt.evaluation.evaluate import evaluate

        spec, task = _prepared(source, task, _backend())
        hidden = task.subset(dataclasses.replace(e, target="?") for e in task.examples)
        bins = [r.bin for r in evaluate(_policy(spec), task, _backend()).records]
        assert [r.bin for r in evaluate(_policy(spec), hidden, _backend()).records] == bins

    def test_fitting_is_deterministic(self, source: DifficultySource, task: Task) -> None:
        first_spec, first_task = _prepared(source, task, _backend())
        second_spec, second_task = _prepared(source, task, _backend())
        assert first_spec == second_spec
        assert [e.difficulty for e in first_task.examples] == \
            [e.difficulty for e in second_task.examples]

    def test_generates_to_fit_only_when_it_says_so(self, source: DifficultySource,
                                                   task: Task) -> None:
        backend = _backend()
        _prepared(source, task, backend)
        assert bool(backend.batches) == type(source).fit_generates
