"""What a trial does with its setting: race it over examples, then expand its free variants.

:class:`SettingExpansion` is the one object :class:`~jointopt.search.objective.TrialRunner`
asks: the pool size trials draw (the largest ``k`` of the free variants, so every variant
is scorable), whether a new setting is raced out (:mod:`jointopt.search.racing`) and, once
a setting is scored on the whole dev set, its derived trials
(:mod:`jointopt.search.derived`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from jointopt.core.policy import Policy
from jointopt.search.derived import (RACED_ATTR, SCREENED_ATTR, SETTING_ATTR,
                                     expanded_settings, raced_out, record_variants)
from jointopt.search.promise import Screen, next_setting, screen_points, screen_size
from jointopt.search.racing import race_order, race_setting, rung_sizes
from jointopt.search.results import front_trials
from jointopt.search.variants import (free_variants, max_pool_k, objective_cost,
                                      pooled_setting, score_variants, setting_key)

if TYPE_CHECKING:
    import optuna

    from jointopt.backends import Backend
    from jointopt.search.plan import StudyPlan

__all__ = ["SettingExpansion", "RACED_ATTR", "samples_saved"]

log = logging.getLogger(__name__)


class SettingExpansion:
    """Free-variant expansion and racing for the trials of one study plan."""

    def __init__(self, plan: "StudyPlan") -> None:
        from jointopt.search.multi_model import study_costs

        self.plan = plan
        self.variants = free_variants(plan.space.strategies)
        self.k = max_pool_k(self.variants)
        #: Model name -> cost per token under ``optimizer.cost`` (None: mean tokens).
        self.costs = study_costs(plan.config)

    @classmethod
    def for_plan(cls, plan: "StudyPlan") -> "SettingExpansion | None":
        """The expansion of ``plan``, or None when it is off (``optimizer.expand_variants``
        false; by default off without pool-scored strategies or without the sample bank)."""
        from jointopt.search.plan import bank_pool_size

        wanted = plan.config.optimizer.expand_variants
        if wanted is False or bank_pool_size(plan) is None:
            return None
        expansion = cls(plan)
        return expansion if expansion.variants else None

    def pool_size(self, base: int) -> int:
        """Samples per pool trials draw: enough for every free variant (a replayed bank's
        pools hold that many: :func:`~jointopt.search.replay_check.check_replayable`
        requires the largest ``k`` of the space's strategies)."""
        return max(base, self.k)

    def second(self) -> str:
        """The per-example trial attribute of the second objective: ``costs`` under a
        cost objective, else ``tokens``."""
        return "tokens" if self.costs is None else "costs"

    def applies(self, policy: Policy) -> bool:
        return pooled_setting(policy)

    def race(self, study: "optuna.Study", policy: Policy, engine: "Backend",
             pool: int) -> dict[str, int] | None:
        """Race ``policy``'s setting (when racing is on, the setting is new and the study
        has a front); returns the :data:`RACED_ATTR` record when it is raced out."""
        cfg = self.plan.config.optimizer.racing
        task = self.plan.task
        # Per-bin choices combine variants: only one-bin settings are raced (a setting
        # whose every uniform variant is dominated may still hold a front combination).
        if (not cfg.enabled or len(policy.bins) > 1
                or setting_key(policy) in expanded_settings(study)):
            return None
        front = [t for t in front_trials(study)
                 if len(t.user_attrs.get("correct", ())) == len(task.examples)
                 and len(t.user_attrs.get(self.second(), ())) == len(task.examples)
                 and t.user_attrs.get("dataset_hash") == self.plan.task_hash]
        if not front:
            return None
        order = race_order([str(e.difficulty) for e in task.examples], self.plan.config.seed)
        sizes = rung_sizes(len(task.examples), cfg.rungs, cfg.min_examples)
        second = self.second()
        rows = [(np.asarray(t.user_attrs["correct"], float),
                 np.asarray(t.user_attrs[second], float)) for t in front]

        def score(prefix: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
            return self._prefix_rows(policy, engine, pool, prefix)

        def front_rows(prefix: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
            return [(c[prefix], t[prefix]) for c, t in rows]

        result = race_setting(score, front_rows, order, sizes, cfg.confidence)
        if result.stopped_at is None:
            return None
        saved = (len(task.examples) - result.stopped_at) * pool
        return {"examples": result.stopped_at, "saved": saved}

    def _prefix_rows(self, policy: Policy, engine: "Backend", pool: int,
                     prefix: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per free variant: per-example (correct, cost) on the dev examples ``prefix``
        (drawing their pools)."""
        task = self.plan.task
        subset = task.subset(task.examples[i] for i in prefix)
        scores = score_variants(policy, self.variants, subset, engine,
                                seed=self.plan.config.seed, pool_size=pool, costs=self.costs)
        return [(np.array([r.correct for r in recs]),
                 np.array([objective_cost(r) for r in recs])) for recs in scores.records]

    def screen(self, study: "optuna.Study", policy: Policy, engine: "Backend",
               pool: int) -> tuple[Screen, int, int | None] | None:
        """Screen ``policy``'s setting (:mod:`jointopt.search.promise`): its variants on the
        screening prefix and the estimated tokens to complete it, the prefix size, and the
        engine tokens the screen spent (None: the engine does not count them). None when
        screening does not apply (several bins, or the setting is already expanded)."""
        cfg = self.plan.config.optimizer.racing
        examples = self.plan.task.examples
        if len(policy.bins) > 1 or setting_key(policy) in expanded_settings(study):
            return None
        size = screen_size(len(examples), cfg.screen, cfg.screen_min_examples)
        order = race_order([str(e.difficulty) for e in examples], self.plan.config.seed)
        before = getattr(engine, "engine_tokens", None)
        rows = self._prefix_rows(policy, engine, pool, order[:size])
        measured = None if before is None else engine.engine_tokens - before
        spent = measured
        if not spent:  # no store counting, or pools already drawn: estimate from the grid
            from jointopt.search.budget import estimated_cost, setting_of

            spent = estimated_cost(self.plan, setting_of(policy), pool) * size / len(examples)
        remaining = spent * (len(examples) - size) / size
        return Screen(screen_points(rows), float(remaining)), size, measured

    def enqueue_next(self, study: "optuna.Study") -> str | None:
        """Queue the screened setting to complete next (the most promising per token,
        :func:`~jointopt.search.promise.next_setting`) when nothing is waiting; returns
        its setting key."""
        import optuna

        states = optuna.trial.TrialState
        trials = study.get_trials(deepcopy=False)
        if any(t.state == states.WAITING for t in trials):
            return None
        done = expanded_settings(study) | {
            t.user_attrs.get(SETTING_ATTR) for t in trials
            if t.state == states.RUNNING or raced_out(t)}
        screens, params = {}, {}
        for t in trials:
            key = t.user_attrs.get(SETTING_ATTR)
            if SCREENED_ATTR in t.user_attrs and key not in done:
                screens[key] = Screen.from_dict(t.user_attrs[SCREENED_ATTR])
                params[key] = t.params
        if not screens:
            return None
        front = [(t.values[0], t.values[1]) for t in front_trials(study)
                 if t.user_attrs.get("dataset_hash") == self.plan.task_hash]
        key = next_setting(screens, front, self.plan.config.optimizer.racing.optimism)
        if key is not None:
            study.enqueue_trial(params[key], user_attrs={SETTING_ATTR: key})
            log.info("completing the most promising screened setting next: %s", key[:12])
        return key

    def expand(self, study: "optuna.Study", trial: "optuna.Trial", policy: Policy,
               engine: "Backend", pool: int) -> None:
        """Record the free variants of ``trial``'s setting (scored on the whole dev set,
        from the pools the trial filled), once per setting (the trial runner records the
        trial's :data:`SETTING_ATTR`)."""
        if setting_key(policy) in expanded_settings(study):
            return
        plan = self.plan
        scores = score_variants(policy, self.variants, plan.task, engine,
                                seed=plan.config.seed, pool_size=pool, costs=self.costs)
        record_variants(study, trial, policy, scores, plan.space.strategies,
                        validation=plan.config.validation, dataset_hash=plan.task_hash,
                        max_mean_tokens=plan.config.optimizer.max_mean_tokens,
                        cost_objective=None if self.costs is None
                        else plan.config.optimizer.cost)


def samples_saved(study: "optuna.Study") -> int:
    """Samples the study's raced-out trials did not draw."""
    return int(sum(t.user_attrs.get(RACED_ATTR, {}).get("saved", 0)
                   for t in study.get_trials(deepcopy=False)))

