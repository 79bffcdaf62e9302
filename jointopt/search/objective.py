"""Running trials in this process: the engine (with the sample cache in front), the
difficulty fits a space needs, and one trial (build its Policy, evaluate, record it)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jointopt.backends import (Backend, CachedBackend, SampleStore,
                               backend_from_settings)
from jointopt.errors import JointoptError
from jointopt.evaluation.evaluate import EvaluationResult, evaluate
from jointopt.evaluation.stats import objective_intervals
from jointopt.search.config import StudyConfig
from jointopt.search.derived import SCREEN_ATTR, SCREENED_ATTR, SETTING_ATTR
from jointopt.search.multi_model import engine_factories, model_labels, study_costs
from jointopt.search.plan import StudyPlan, bank_pool_size
from jointopt.search.results import TrialCallback, summarize
from jointopt.search.variants import setting_key
from jointopt.tasks import Task

if TYPE_CHECKING:
    import optuna

__all__ = ["build_backend", "TrialRunner"]

log = logging.getLogger(__name__)

#: Study user attribute: how the engine runs (dtype, threads, KV cache, CPU).
ENGINE_ATTR = "engine"
#: Trial user attribute: the cost objective (``flops`` / ``price``) of a trial whose second
#: value is its mean cost per example (absent: mean tokens).
COST_ATTR = "cost_objective"


def build_backend(config: StudyConfig) -> Backend:
    """The engine a study config names (no cache in front): the registered backend's
    :meth:`~jointopt.backends.Backend.from_settings` (``vllm``: the offline engine;
    ``openai``: servers of ``model.base_urls`` with the key of ``api_key_env`` /
    ``api_key_file``; ``replay``: ``model.bank``; ``scripted``:
    :func:`jointopt.testing.scripted_backend`), or a ``module:factory`` called with
    ``model``, ``seed``, ``max_model_len`` and ``engine_kwargs``."""
    return backend_from_settings(config.model.backend, config.backend_settings())


class TrialRunner:
    """Runs trials of one study in this process: the engine (built on first use, with the
    sample cache in front), the MLflow tracker, and the per-trial bookkeeping."""

    def __init__(self, plan: StudyPlan, study: "optuna.Study", tracker: Any, target: int,
                 backend: Backend | None = None, on_trial: TrialCallback | None = None,
                 on_engine_ready: Callable[[], None] | None = None) -> None:
        self.plan = plan
        self.study = study
        self.tracker = tracker
        self.target = target
        self.backend = backend
        self.on_trial = on_trial
        self.on_engine_ready = on_engine_ready
        self.engine: Backend | None = None
        self._labelled = False
        self._store: SampleStore | None = None  # the router's store (several models)
        self._expansion_of: tuple[StudyPlan, Any] | None = None
        #: Model name -> cost per token under ``optimizer.cost`` (None: mean tokens).
        self.costs = study_costs(plan.config)

    def ready(self) -> Backend:
        if self.engine is None and self.backend is None and self.plan.config.models:
            self.engine = self._router()
        if self.engine is None:
            engine = self.backend or build_backend(self.plan.config)
            if self.on_engine_ready:
                self.on_engine_ready()
            if self.plan.config.cache:
                engine = CachedBackend(engine, SampleStore(self.plan.out_dir / "samples.sqlite"),
                                       draw_max_tokens=self._draw_cap())
            self.engine = engine
            self._record_engine(engine.engine_record())
        return self.engine

    def _draw_cap(self) -> int | None:
        """The max_tokens pools are drawn at under ``bank.cut_max_tokens`` (the space's
        largest), else None: a pool per cap."""
        if not self.plan.config.bank.cut_max_tokens:
            return None
        return max(int(v) for v in self.plan.space.max_tokens.extremes())

    def _router(self) -> Backend:
        """Several models: one engine per model, each built on its first request."""
        from jointopt.backends.router import ModelRouter

        config = self.plan.config
        if config.cache:
            self._store = SampleStore(self.plan.out_dir / "samples.sqlite")
        if self.on_engine_ready:
            self.on_engine_ready()
        return ModelRouter(engine_factories(config, build_backend, self._store,
                                            draw_max_tokens=self._draw_cap()),
                           default=model_labels(config)[0],
                           max_loaded=config.max_engines_loaded)

    def _record_engine(self, record: dict[str, str | int | float]) -> None:
        """Keep how the engine runs in the study's attributes and the MLflow parent run:
        dtype and threads change results slightly, so a resumed study shows each."""
        if not record:
            return
        self.study.set_user_attr(ENGINE_ATTR, record)
        if self.tracker is not None:
            self.tracker.tag_parent({f"engine.{k.removeprefix('engine_')}": v
                                     for k, v in record.items()})

    def label_examples(self) -> None:
        """For a difficulty source that cannot run at serve time (``oracle``): give dev
        and test examples their bins as difficulty labels, once (deterministic given the
        sample store); the trials' policies then split by label."""
        import dataclasses

        source = self.plan.space.bin_source()
        if source.servable or self._labelled:
            return
        engine, seed = self.ready(), self.plan.config.seed

        def relabel(task: Task) -> Task:
            bins = self.plan.space.difficulty_labels(task, engine, seed)
            return task.subset(dataclasses.replace(e, difficulty=bins[e.id])
                               for e in task.examples)

        test = self.plan.test_task
        self.plan = dataclasses.replace(self.plan, task=relabel(self.plan.task),
                                        test_task=relabel(test) if test else None)
        self._labelled = True
        counts: dict[str, int] = {}
        for e in self.plan.task.examples:
            counts[str(e.difficulty)] = counts.get(str(e.difficulty), 0) + 1
        log.info("%s bins on dev: %s", source.key, dict(sorted(counts.items())))

    def _fit_difficulty(self) -> None:
        """Fit the difficulty source on the dev split (deterministic given the sample
        store, so every worker and rerun gets the same fit) and write its report (how its
        bins agree with oracle bins) to ``difficulty_report.json`` and MLflow."""
        import dataclasses

        space, fit = self.plan.space.fit_difficulty(
            self.plan.task, self.ready(), seed=self.plan.config.seed,
            test_task=self.plan.test_task)
        self.plan = dataclasses.replace(self.plan, space=space)
        if fit.report is not None:
            self._publish_difficulty_report(dict(fit.report), dict(fit.agreements))

    def _publish_difficulty_report(self, report: dict[str, Any],
                                   agreements: dict[str, dict[str, Any]]) -> None:
        """``agreements``: metric-name pattern (``{}`` is the measure) -> agreement dict."""
        import json

        path = self.plan.out_dir / "difficulty_report.json"
        path.write_text(json.dumps(report, indent=2), encoding="utf-8")
        for pattern, agree in agreements.items():
            log.info("%s bins vs oracle bins: exact %.2f, within one %.2f, spearman %.2f",
                     pattern.format("*"), agree["exact"], agree["within_one"],
                     agree["spearman"])
        if self.tracker is not None:
            from mlflow.entities import Metric

            metrics = [Metric(pattern.format(key), float(agree[key]), 0, 0)
                       for pattern, agree in agreements.items()
                       for key in ("exact", "within_one", "spearman")]
            try:
                self.tracker.client.log_batch(self.tracker.parent_run_id, metrics=metrics)
                self.tracker.client.log_artifact(self.tracker.parent_run_id, str(path))
            except Exception as exc:  # another worker logged the same report first
                log.debug("difficulty report not logged: %s", exc)

    def _expand_proposals(self) -> None:
        """Turn ``{propose: ...}`` prompt entries into templates with the study's engine
        (cached in ``<output_dir>/proposals.json``: reruns and other workers make no new
        proposal calls) and log new proposals, with the proposer's tokens, to MLflow."""
        import dataclasses

        from jointopt.integrations.proposals import log_proposals_to_mlflow

        collected: list[Any] = []
        space = self.plan.space.with_proposals(self.plan.task, self.ready(),
                                               self.plan.out_dir / "proposals.json", collected)
        self.plan = dataclasses.replace(self.plan, space=space)
        for proposals in collected:
            log.info("proposals %s: %d templates, %d proposer tokens%s", proposals.key[:12],
                     len(proposals.templates), proposals.proposer_tokens,
                     " (cached)" if proposals.cache_hit else "")
            if self.tracker is not None and not proposals.cache_hit:
                log_proposals_to_mlflow(self.tracker.client, self.tracker.parent_run_id,
                                        proposals,
                                        artifact_file=f"proposals/{proposals.key[:12]}.json")

    def _expansion(self, policy: Any) -> Any:
        """The study's :class:`~jointopt.search.expansion.SettingExpansion` when it applies
        to ``policy`` (its setting is scored from pools), else None."""
        expansion = self._setting_expansion()
        return expansion if expansion is not None and expansion.applies(policy) else None

    def _setting_expansion(self) -> Any:
        """The :class:`~jointopt.search.expansion.SettingExpansion` of the current plan
        (built once per plan: fitting difficulty or expanding proposals replaces it)."""
        from jointopt.search.expansion import SettingExpansion

        if self._expansion_of is None or self._expansion_of[0] is not self.plan:
            self._expansion_of = (self.plan, SettingExpansion.for_plan(self.plan))
        return self._expansion_of[1]

    def _race(self, trial: "optuna.Trial", expansion: Any, policy: Any, engine: Backend,
              engine_tokens: int | None, pool_size: int) -> None:
        """Race a new setting over dev-example prefixes; a setting raced out is PRUNED
        (with its cost and the samples it saved recorded)."""
        import optuna

        from jointopt.search.expansion import RACED_ATTR

        raced = expansion.race(self.study, policy, engine, pool_size)
        if raced is None:
            return
        if engine_tokens is not None:
            trial.set_user_attr("tokens_generated",
                                float(engine.engine_tokens - engine_tokens))
        trial.set_user_attr(RACED_ATTR, raced)
        log.info("trial %d: setting raced out after %d examples (%d samples saved)",
                 trial.number, raced["examples"], raced["saved"])
        raise optuna.TrialPruned(f"dominated with confidence after {raced['examples']} "
                                 "examples")

    def _screen(self, trial: "optuna.Trial", expansion: Any, policy: Any, engine: Backend,
                pool_size: int) -> None:
        """Screen a queued setting on a short prefix (:mod:`jointopt.search.promise`); the
        trial is PRUNED with what it saw (it does not count towards ``n_trials``)."""
        import optuna

        screened = expansion.screen(self.study, policy, engine, pool_size)
        if screened is None:
            return
        screen, examples, spent = screened
        if spent is not None:
            trial.set_user_attr("tokens_generated", float(spent))
        trial.set_user_attr(SCREENED_ATTR, {**screen.to_dict(), "examples": examples})
        log.info("trial %d: setting screened on %d examples", trial.number, examples)
        raise optuna.TrialPruned(f"screened on {examples} examples")

    def close(self) -> None:
        if self.engine is None:
            return
        if self._store is not None:
            self._record_engine(self.engine.engine_record())
            self.engine.close()
            self._store.close()
            self._store = None
        elif self.backend is None:
            self.engine.close()
        elif isinstance(self.engine, CachedBackend):
            self.engine.store.close()
        self.engine = None

    def run(self, trial: "optuna.Trial") -> list[float]:
        from optuna import TrialPruned

        from jointopt.safety.secrets import redact
        from jointopt.search.storage import FAIL_ATTR, MLFLOW_ATTR, WORKER_ATTR
        from jointopt.search.recovery import worker_identity

        if self.plan.space.proposals:
            self._expand_proposals()
        if self.plan.space.needs_fit:
            self._fit_difficulty()
        self.label_examples()
        plan = self.plan
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        policy = plan.space.build_policy(trial, plan.model)
        trial.set_user_attr("policy", policy.to_dict())
        run_id = None
        if self.tracker is not None:
            run_id = self.tracker.start_trial(trial.number, trial.params, policy)
            trial.set_user_attr(MLFLOW_ATTR, run_id)
        expansion = self._expansion(policy)
        pool_size = bank_pool_size(plan)
        if expansion is not None and pool_size is not None:
            pool_size = expansion.pool_size(pool_size)
        try:
            engine = self.ready()
            engine_tokens = getattr(engine, "engine_tokens", None)
            if expansion is not None:
                trial.set_user_attr(SETTING_ATTR, setting_key(policy))
                if trial.user_attrs.get(SCREEN_ATTR):
                    self._screen(trial, expansion, policy, engine, pool_size)
                self._race(trial, expansion, policy, engine, engine_tokens, pool_size)
            result: EvaluationResult = evaluate(policy, plan.task, engine,
                                                seed=plan.config.seed, pool_size=pool_size,
                                                costs=self.costs)
            if expansion is not None:
                expansion.expand(self.study, trial, policy, engine, pool_size)
        except TrialPruned:  # raced out: a normal outcome, told to Optuna as PRUNED
            raise
        except JointoptError as exc:
            trial.set_user_attr(FAIL_ATTR, redact(str(exc)))
            log.warning("trial %d failed: %s", trial.number, exc)
            raise
        except BaseException as exc:
            reason = redact(f"{type(exc).__name__}: {exc}")
            trial.set_user_attr(FAIL_ATTR, reason)
            if run_id is not None:  # Optuna runs no callback after an uncaught error
                self.tracker.end_run(run_id, "FAILED", reason)
            raise
        for key, value in result.metrics().items():
            trial.set_user_attr(key, value)
        # Without a sample store the engine ran everything the evaluation counted.
        trial.set_user_attr("tokens_generated", float(
            engine.engine_tokens - engine_tokens if engine_tokens is not None
            else sum(r.tokens for r in result.records)))
        # Per-example outcomes, in task order, so intervals can be computed later.
        trial.set_user_attr("correct", [round(r.correct, 6) for r in result.records])
        trial.set_user_attr("tokens", [round(r.tokens, 3) for r in result.records])
        if self.costs is not None:
            trial.set_user_attr(COST_ATTR, plan.config.optimizer.cost)
            trial.set_user_attr("costs", [r.cost for r in result.records])
        trial.set_user_attr("dataset_hash", plan.task_hash)
        trial.set_user_attr("dev_intervals", {
            k: v.to_dict()
            for k, v in objective_intervals(result.records, plan.config.validation).items()})
        limit = plan.config.optimizer.max_mean_tokens
        if limit is not None:
            trial.set_user_attr("constraint", [result.mean_tokens - limit])
        if result.mean_cost is not None:
            return [result.accuracy, result.mean_cost]
        return [result.accuracy, result.mean_tokens]

    def after(self, frozen: "optuna.trial.FrozenTrial", complete: int) -> None:
        if self.tracker is not None:
            self.tracker.end_trial(frozen)
        if self.plan.config.optimizer.racing.enabled and self.study is not None:
            expansion = self._setting_expansion()
            if expansion is not None:
                expansion.enqueue_next(self.study)
        if self.on_trial:
            self.on_trial(summarize(frozen), complete, self.target)
