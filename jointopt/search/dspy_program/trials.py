"""The pieces of a program study's trials: difficulty bins, allocations sampled from the
space, the trial's policy, the Optuna study and its Pareto front."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.errors import ConfigError
from jointopt.core.policy import DEFAULT_BIN, Allocation, DifficultySpec, Policy
from jointopt.core.prompts import PromptTemplate
from jointopt.integrations.proposer import _as_jinja_text
from jointopt.search.dspy_program.program import InstructionCandidate, ProgramInterface
from jointopt.search.space import suggest_allocation
from jointopt.search.results import TrialSummary, front_trials, summarize
from jointopt.search.dspy_program.space import _Space

if TYPE_CHECKING:
    import optuna


def _bins_of(trainset: Sequence[Any], difficulty: str | Callable[[Any], Any] | None
             ) -> tuple[list[str], str | None]:
    if difficulty is None:
        return [DEFAULT_BIN] * len(trainset), None
    if isinstance(difficulty, str):
        labels = []
        for i, ex in enumerate(trainset):
            value = ex.get(difficulty) if hasattr(ex, "get") else None
            if value is None:
                raise ConfigError(f"trainset example has no difficulty field {difficulty!r}",
                                  where=f"trainset[{i}]", value=sorted(ex.keys()),
                                  fix="give every example that field, or pass difficulty=None")
            labels.append(str(value))
        return labels, difficulty
    if callable(difficulty):
        return [str(difficulty(ex)) for ex in trainset], None
    raise ConfigError("difficulty must be None, a field name or a callable", where="difficulty",
                      value=type(difficulty).__name__, fix="pass e.g. difficulty='level'")


def _suggest_allocation(trial: Any, space: _Space, prefix: str) -> Allocation:
    return suggest_allocation(trial, space.strategies, space.temperature, space.max_tokens,
                              prefix)


def _user_template(inputs: Sequence[str]) -> str:
    if list(inputs) == ["question"] or len(inputs) == 1:
        return "{{ %s }}" % inputs[0]
    return "\n".join(f"{f}: {{{{ {f} }}}}" for f in inputs)


def _policy(model: str, chosen: Mapping[str, InstructionCandidate], allocations: Mapping[str, Allocation],
            bins: Sequence[str], interface: ProgramInterface, output_field: str,
            difficulty_field: str | None, program: Any, extra: Mapping[str, Any]) -> Policy:
    first = next(iter(chosen.values()))
    prompt_id = first.id if len(chosen) == 1 else "__".join(c.id for c in chosen.values())
    prompt = PromptTemplate(
        id=prompt_id, system=_as_jinja_text(first.text), user=_user_template(interface.inputs),
        description="DSPy program instructions (per predictor in metadata.instructions)")
    split = len(set(bins)) > 1 or bins[0] != DEFAULT_BIN
    default_bin = Counter(bins).most_common(1)[0][0] if split else DEFAULT_BIN
    metadata = {
        "kind": "dspy_program",
        "program": type(program).__name__,
        "instructions": {name: c.text for name, c in chosen.items()},
        "instruction_ids": {name: c.id for name, c in chosen.items()},
        "inputs": list(interface.inputs),
        "outputs": list(interface.outputs),
        "output_field": output_field,
        "difficulty_field": difficulty_field,
        **dict(extra),
    }
    return Policy(model=model, prompt=prompt, bins=dict(allocations),
                  difficulty=DifficultySpec(source="label" if split else "none",
                                            bins=tuple(sorted(set(bins))) if split else (),
                                            default_bin=default_bin),
                  metadata=metadata)


def _open_study(storage: str | None, study_name: str, seed: int, n_trials: int) -> "optuna.Study":
    import optuna

    from jointopt.search.config import OptimizerConfig
    from jointopt.search.sampler import make_sampler

    if storage and storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    sampler = make_sampler(OptimizerConfig(seed=seed),
                           n_startup_trials=min(8, max(n_trials // 2, 1)))
    try:
        return optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True,
                                   directions=["maximize", "minimize"], sampler=sampler)
    except ValueError as exc:
        raise ConfigError(f"cannot open the Optuna study: {exc}", where="storage", value=storage,
                          fix="use a fresh study_name or storage") from None


def _pareto(study: "optuna.Study") -> tuple[TrialSummary, ...]:
    """The study's front (the study runner's :func:`~jointopt.search.results.front_trials`)
    among trials that hold a policy."""
    return tuple(summarize(t) for t in
                 front_trials(study, keep=lambda t: "policy" in t.user_attrs))
