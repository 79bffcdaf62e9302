"""Study configuration: the ``optimizer`` section (the Optuna study, free-variant expansion,
generation budget and racing) and the ``bank`` section (shared sample pools); re-exported by
:mod:`jointopt.search.config`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from jointopt.search.config_parse import StrictModel

__all__ = ["BankConfig", "DEFAULT_POOL_SIZE", "OptimizerConfig", "RacingConfig"]


class RacingConfig(StrictModel):
    """Racing over dev examples (successive halving; see :mod:`jointopt.search.racing`):
    a new setting is scored on growing prefixes of the shuffled, stratified dev examples,
    and stops drawing samples once every one of its free variants is dominated with
    confidence by the current Pareto front."""

    enabled: bool = False
    """Race new settings (needs free-variant expansion, ``optimizer.expand_variants``;
    settings with several difficulty bins are not raced)."""
    rungs: list[float] = Field(default_factory=lambda: [0.1, 0.25, 0.5])
    """Prefix sizes checked before the full dev set: fractions of the dev examples (< 1),
    increasing. After each rung a setting whose every variant is dominated stops."""
    min_examples: int = Field(16, ge=2)
    """Smallest prefix a decision is taken on (smaller rungs are raised to it)."""
    confidence: float = Field(0.99, gt=0.5, lt=1.0)
    """Confidence of each paired comparison (variant against a front trial, on the same
    examples) that declares a variant dominated."""
    screen: float = Field(0.1, ge=0.0, lt=1.0)
    """Fraction of the dev examples every setting of a fresh study's grid is screened on
    before any is completed (0: no screening; settings are then completed cheapest
    first). Screening orders the settings by promise (see :mod:`jointopt.search.promise`);
    it decides nothing."""
    screen_min_examples: int = Field(4, ge=1)
    """Smallest screening prefix."""
    optimism: float = Field(0.5, ge=0.0)
    """Standard errors added to a screened variant's accuracy when settings are ordered
    by promise (higher: more settings look worth completing)."""


class OptimizerConfig(StrictModel):
    """The Optuna study."""

    n_trials: int = Field(20, ge=1)
    """Completed trials the study should hold; a rerun continues up to this number."""
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    """Optuna sampler (multi-objective TPE, NSGA-II or random)."""
    seed: int = 0
    """Sampler seed."""
    storage: str | None = None
    """Optuna storage: any SQLAlchemy URL (``sqlite:///abs/path.db``,
    ``postgresql+psycopg2://user@host/db``) or ``journal:///abs/path/file.log`` (Optuna's
    journal file storage); default ``sqlite:///<output_dir>/optuna.db``. Several workers
    share a study through PostgreSQL or a journal file."""
    study_name: str | None = None
    """Name inside the storage; default: the config's ``name``."""
    max_mean_tokens: float | None = Field(None, gt=0)
    """Optional constraint: trials spending more mean tokens per example are infeasible
    (Optuna constraints; they never enter the Pareto front)."""
    cost: Literal["tokens", "flops", "price"] = "tokens"
    """Second objective per example: ``tokens``, ``flops`` (2 x params of the model that ran
    each token) or ``price`` (each model's ``prices``); mean tokens are always reported."""
    workers: int = Field(1, ge=1)
    """Worker processes ``jointopt run`` starts on this machine (``--workers`` wins). Each
    builds its own backend, so more than one suits remote engines (``backend: openai``);
    use a shared storage (PostgreSQL, or a ``journal:///`` file) to add workers on other
    machines with ``jointopt worker``."""
    heartbeat_interval: int = Field(10, ge=1)
    """Seconds between heartbeats of a running trial (Optuna heartbeat; RDB and journal
    storages). A trial whose heartbeat stops is failed and retried by any live worker."""
    grace_period: int | None = Field(None, ge=1)
    """Seconds without a heartbeat after which a running trial counts as dead; default
    twice ``heartbeat_interval``. Trials of a dead process on the same machine are failed
    at once (the process id is checked), without waiting."""
    max_trial_retries: int = Field(2, ge=0)
    """How often a trial whose worker died (killed, machine lost) is retried with the same
    parameters (Optuna ``RetryHeartbeatStaleTrialCallback``); 0 = never."""
    max_consecutive_failures: int = Field(3, ge=1)
    """A worker stops with an error after this many failed trials in a row (an engine or
    upstream that is down); completed trials are kept and a rerun continues."""
    max_input_chars: int = Field(100_000, ge=1)
    """Largest input of one example (characters over its fields, demonstrations
    included); larger examples are refused when the study is validated."""
    max_completions_per_input: int = Field(256, ge=1)
    """Cap on the completions any policy of the search space may spend on one input (the
    strategy's budget at its largest parameters, e.g. ``n`` of ``majority``); a search
    space that can exceed it is refused when the study is validated."""
    max_tokens_cap: int = Field(8192, ge=1)
    """Cap on the search space's ``max_tokens`` values; larger values are refused when the
    study is validated."""
    expand_variants: bool | None = None
    """Score every free variant of a setting once its pools are filled (every pool-scored
    strategy, ``n`` and aggregation on the same prompt, model, temperature and
    max_tokens) and record them as derived trials (see :mod:`jointopt.search.variants`).
    Default: on when the search space has pool-scored strategies and ``bank`` is on;
    ``n_trials`` counts the trials the sampler proposes, not derived ones."""
    max_generated_tokens: int | None = Field(None, ge=1)
    """Generation budget: the study stops once its trials made the engine process this
    many tokens (prompt + completion; samples served by the store cost nothing). With a
    budget, ``n_trials`` is an upper bound on proposed trials."""
    racing: RacingConfig = Field(default_factory=RacingConfig)
    """Racing of new settings over growing prefixes of the dev examples."""


#: ``bank.pool_size`` of a live study when the config leaves it unset.
DEFAULT_POOL_SIZE = 8


class BankConfig(StrictModel):
    """Sample once, score many: how parallel strategies are evaluated."""

    enabled: bool = True
    """Score single / majority / best-of-n / weighted vote from shared sample pools with
    the exact expected accuracy over k-subsets, instead of running them trial by trial."""
    pool_size: int | None = Field(None, ge=1)
    """Samples per (prompt, temperature, max_tokens, example) pool; a trial that needs
    more grows the pool. Default: 8 for a live study; every recorded sample for a replayed
    one (a smaller value scores each pool from its first ``pool_size`` samples and says so;
    a pool imported as a histogram cannot be cut)."""
    cut_max_tokens: bool = False
    """One pool per (prompt, temperature, example), drawn at the search space's largest
    ``max_tokens``: a smaller cap is served by cutting each sample after its first
    ``max_tokens`` tokens (finish reason ``length``; the answer is read from the cut
    text). Exact in distribution; needs a backend that can cut its samples (the scripted
    backend can; others draw a pool per cap)."""
