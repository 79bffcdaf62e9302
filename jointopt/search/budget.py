"""Generation budget and cost-aware proposals.

**Cost.** A trial's cost is the tokens the engine processed for it
(``tokens_generated``: prompt + completion tokens of the samples the store lacked; 0 for
a setting whose pools are already filled, and for derived trials). The study's spending is
their sum over every trial (failed and raced-out ones included), and
``optimizer.max_generated_tokens`` stops the study once it is reached.

**Cheap first when equally promising.** Before the study has scored anything, every
setting is equally promising; so a fresh study that races settings or has a generation
budget, and whose settings form a small finite grid
(prompts x temperature choices x max_tokens choices x models of a multi-model study, at
most :data:`MAX_SEEDED`; none when a thinking budget is searched: thinking bins have no
free variants) queues
each setting once, cheapest to complete first, before the sampler proposes anything. The
cost to complete a setting is estimated from what is known before generating: the
rendered prompt (about 4 characters a token) once per pool request, plus the pool size
times the max_tokens cap (1 sample at temperature 0), priced at the model's rate under
a cost objective (``optimizer.cost``). With racing (one-bin spaces), the queued trials
*screen* their settings instead, and the settings are then completed by promise, not by
price (:mod:`jointopt.search.promise`). After the queue the sampler proposes; settings it
repeats cost nothing.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

from jointopt.core.prompts import render_messages
from jointopt.search.derived import SCREEN_ATTR
from jointopt.search.thinking_fit import CHARS_PER_TOKEN

if TYPE_CHECKING:
    import optuna

    from jointopt.core.policy import Policy
    from jointopt.search.config import OptimizerConfig
    from jointopt.search.plan import StudyPlan
    from jointopt.search.variants import Variant

__all__ = ["MAX_SEEDED", "spent_tokens", "budget_spent", "setting_grid", "estimated_cost",
           "setting_of", "seed_settings"]

log = logging.getLogger(__name__)

#: Largest grid of settings a fresh study queues (larger grids are left to the sampler).
MAX_SEEDED = 64


def spent_tokens(study: "optuna.Study") -> float:
    """Tokens the engine processed for the study's trials so far."""
    return float(sum(t.user_attrs.get("tokens_generated", 0.0) or 0.0
                     for t in study.get_trials(deepcopy=False)))


def budget_spent(study: "optuna.Study", opt: "OptimizerConfig") -> bool:
    """``optimizer.max_generated_tokens`` is set and the study has spent it."""
    budget = getattr(opt, "max_generated_tokens", None)
    return budget is not None and spent_tokens(study) >= budget


def _values(spec: Any) -> list | None:
    from jointopt.search.variants import _values as enumerate_values

    return enumerate_values(spec)


def setting_grid(plan: "StudyPlan") -> list[dict[str, Any]] | None:
    """Every setting of the space as (prompt, temperature, max_tokens, model: None when
    the study has one), or None when the space's settings are not a small finite grid or
    a thinking budget is searched."""
    space = plan.space
    temps, caps = _values(space.temperature), _values(space.max_tokens)
    if temps is None or caps is None or space.proposals or space.thinking is not None:
        return None
    models = list(space.models) if len(space.models) > 1 else [None]
    grid = [{"prompt": p.id, "temperature": float(t), "max_tokens": int(m), "model": model}
            for p, t, m, model in itertools.product(space.prompts, temps, caps, models)]
    return grid if len(grid) <= MAX_SEEDED else None


def estimated_cost(plan: "StudyPlan", setting: dict[str, Any], pool: int) -> float:
    """Tokens (or, under a cost objective, their price) to fill ``setting``'s pools on the
    dev set (see the module docstring)."""
    from jointopt.search.multi_model import study_costs

    prompt = plan.space.prompt(setting["prompt"])
    samples = 1 if setting["temperature"] == 0 else pool
    prompt_tokens = completion_tokens = 0.0
    for example in plan.task.examples:
        chars = sum(len(m.content) for m in render_messages(prompt, plan.task, example))
        prompt_tokens += chars / CHARS_PER_TOKEN
        completion_tokens += samples * setting["max_tokens"]
    costs = study_costs(plan.config)
    if costs is None:
        return prompt_tokens + completion_tokens
    return costs[setting.get("model") or plan.model].of(prompt_tokens, completion_tokens)


def setting_of(policy: "Policy") -> dict[str, Any]:
    """The setting of a one-bin ``policy`` as :func:`setting_grid` lists it."""
    allocation = next(iter(policy.bins.values()))
    return {"prompt": policy.prompt.id, "temperature": allocation.temperature,
            "max_tokens": allocation.max_tokens, "model": allocation.model}


def seed_settings(study: "optuna.Study", plan: "StudyPlan",
                  variants: "list[Variant] | tuple[Variant, ...]", pool: int,
                  screen: bool = False) -> int:
    """Queue every setting of a fresh study once, cheapest first (see the module
    docstring), with the first free variant as its strategy; with ``screen`` (one-bin
    spaces) as screening trials (:mod:`jointopt.search.promise`). Returns how many."""
    if study.get_trials(deepcopy=False) or not variants:
        return 0
    grid = setting_grid(plan)
    if grid is None:
        return 0
    from jointopt.search.space import Fixed

    space = plan.space
    source = space.bin_source()
    prefixes = [f"{b}." for b in space.difficulty.bins] if source.splits else [""]
    first = variants[0]
    order = sorted(grid, key=lambda s: (estimated_cost(plan, s, pool), s["prompt"]))
    for setting in order:
        params: dict[str, Any] = {"prompt": setting["prompt"]}
        for prefix in prefixes:
            for name, spec, value in (("temperature", space.temperature, setting["temperature"]),
                                      ("max_tokens", space.max_tokens, setting["max_tokens"])):
                if not isinstance(spec, Fixed):
                    params[f"{prefix}{name}"] = value
            if setting["model"] is not None:
                params[f"{prefix}model"] = setting["model"]
            params[f"{prefix}strategy"] = first.strategy
            for pname, value in first.params:
                if not isinstance(space.strategies[first.strategy][pname], Fixed):
                    params[f"{prefix}{first.strategy}.{pname}"] = value
        attrs = {SCREEN_ATTR: True} if screen and prefixes == [""] else None
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
    log.info("queued %d settings, %s", len(order),
             "to screen" if screen and prefixes == [""] else "cheapest to complete first")
    return len(order)
