"""The contract suite every export target (:class:`~jointopt.export.base.Exporter`) passes.

Subclass :class:`ExporterContract` and supply an ``exporter`` fixture. The default
``context`` fixture is :func:`example_context` (a planned, not run, study of the embedded
model and a two-bin policy); override it to export something else (an
:class:`~jointopt.export.base.ExportContext` whose ``out_dir`` is an empty folder inside
pytest's ``tmp_path``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jointopt.export.base import ExportContext, Exporter, ExportSkipped

__all__ = ["ExporterContract", "example_context"]

_SPACE = """\
prompts:
  - {id: direct, user: "{{ question }}"}
  - {id: fewshot, system: Answer only., user: "{{ question }}", shots: 2, shot_answer: "{{ target }}"}
strategies:
  single: {}
  majority: {n: {choices: [3, 5]}}
temperature: {choices: [0.0, 0.7]}
max_tokens: 32
"""


def example_context(folder: Path, *, on_cpu: bool = False) -> ExportContext:
    """An export of a planned (not run) study: the ``reverse_words`` family on the embedded
    model (``vllm`` backend, so the alias must be prepared) and a policy with two
    difficulty bins (``single`` and ``majority``); files go to ``folder/out``."""
    import yaml

    from jointopt.core.policy import Allocation, DifficultySpec, Policy
    from jointopt.core.prompts import PromptTemplate
    from jointopt.core.task_spec import task_spec
    from jointopt.search.config import load_config
    from jointopt.search.plan import plan_study

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(_SPACE, encoding="utf-8")
    config = {
        "name": "contract", "output_dir": str(folder / "run"),
        "model": {"backend": "vllm", "model": "smollm2-135m-instruct", "seed": 0},
        "task": {"builtin": {"family": "reverse_words", "levels": [1, 2], "n_per_level": 3,
                             "seed": 0, "n_demos": 4}},
        "search_space": "space.yaml",
        "optimizer": {"n_trials": 1, "sampler": "random", "seed": 1},
        "tracking": {"enabled": False},
    }
    (folder / "contract.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    plan = plan_study(load_config(folder / "contract.yaml"))
    prompt = PromptTemplate(id="q", user="Reverse: {{ question }}", system="Be brief.", shots=2)
    policy = Policy(
        model="smollm2-135m-instruct", prompt=prompt,
        difficulty=DifficultySpec(source="label", bins=("1", "2"), default_bin="1"),
        bins={"1": Allocation("single", temperature=0.0, max_tokens=16),
              "2": Allocation("majority", temperature=0.7, max_tokens=32, params={"n": 3})},
        metadata={"task": task_spec(plan.task, prompt),
                  "serving": {"served_model_name": "smollm2-135m-instruct"}})
    return ExportContext(policy=policy, plan=plan, task=plan.task, out_dir=folder / "out",
                         served_model_name="smollm2-135m-instruct",
                         model_path="/models/smollm2", on_cpu=on_cpu)


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class ExporterContract:
    """Tests every :class:`Exporter` must pass. Provide ``exporter`` and ``context``."""

    @pytest.fixture
    def exporter(self) -> Exporter:  # pragma: no cover - supplied by subclasses
        raise NotImplementedError("define an `exporter` fixture")

    @pytest.fixture(params=[False, True], ids=["gpu", "cpu"])
    def context(self, request: pytest.FixtureRequest, tmp_path: Path) -> ExportContext:
        return example_context(tmp_path / "study", on_cpu=request.param)

    @staticmethod
    def _write(exporter: Exporter, context: ExportContext) -> dict[str, Path]:
        context.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            return exporter.write(context)
        except ExportSkipped as skipped:
            pytest.skip(f"{exporter.name} skipped: {skipped}")

    def test_is_a_named_exporter(self, exporter: Exporter) -> None:
        assert isinstance(exporter, Exporter)
        assert isinstance(exporter.name, str) and exporter.name

    def test_writes_only_the_files_it_returns_inside_the_folder(
            self, exporter: Exporter, context: ExportContext, tmp_path: Path) -> None:
        before = _snapshot(tmp_path)
        files = self._write(exporter, context)
        assert files and all(isinstance(k, str) and isinstance(p, Path) for k, p in files.items())
        changed = {p for p, data in _snapshot(tmp_path).items() if before.get(p) != data}
        out = context.out_dir.resolve()
        assert {p.resolve() for p in changed} == {p.resolve() for p in files.values()}
        for path in files.values():
            assert path.resolve().is_relative_to(out), f"{path} is outside {out}"
            assert path.is_file() and path.stat().st_size > 0, f"{path} is missing or empty"

    def test_deterministic_for_the_same_input(self, exporter: Exporter,
                                              context: ExportContext) -> None:
        first = self._write(exporter, context)
        other = dataclasses.replace(context, out_dir=context.out_dir.with_name(
            context.out_dir.name + "-again"))
        second = self._write(exporter, other)
        assert list(first) == list(second)
        for key in first:
            assert first[key].name == second[key].name
            assert first[key].read_bytes() == second[key].read_bytes(), key
