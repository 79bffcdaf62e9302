"""The checks a study plan runs before any compute: the backend and its credentials,
the model, a replay bank, input sizes and budgets against the configured caps, MLflow."""

from __future__ import annotations

import importlib
import importlib.util

from jointopt.errors import BackendError, ConfigError, DataError, JointoptError, relocate
from jointopt.search.config import StudyConfig
from jointopt.search.space import SearchSpace
from jointopt.tasks import Task

__all__ = ["check_backend", "check_credentials", "check_limits", "check_model",
           "check_replay", "check_tracking"]


def check_model(config: StudyConfig) -> str:
    """The model folder (an embedded model not prepared yet: the folder the engine
    prepares it into when it starts), or the name for a backend that loads no model."""
    from jointopt.backends.models import planned_model

    from jointopt.backends import backend_class

    if not backend_class(config.model.backend).loads_model:
        return config.model.model  # a name the server, bank or custom backend understands
    if importlib.util.find_spec("vllm") is None:
        raise BackendError(
            "the vLLM engine is not installed", where="model.backend", value="vllm",
            fix="run `bash scripts/setup.sh` (CPU) or `pip install 'jointopt[vllm]'` (GPU)",
        )
    try:
        return planned_model(config.model.model)
    except JointoptError as exc:
        raise relocate(exc, "model.") from None


def check_replay(config: StudyConfig, space: SearchSpace, task: Task,
                 test_task: Task | None,
                 calibration_task: Task | None = None) -> tuple[str, int]:
    """``backend: replay``: load the bank and check the study can run from it (strategies,
    prompts, temperatures, max_tokens, pool sizes, examples) before any compute.
    Returns the model name the bank was recorded with (the policies name it) and the
    samples per sampled pool it holds (the default pool size of a replayed study)."""
    from jointopt.backends.bank_loader import load_bank
    from jointopt.search.replay_check import check_replayable, replay_pool_size

    if config.model.bank is None:
        raise ConfigError(
            "backend 'replay' needs a bank file", where="model.bank",
            fix="record one with `jointopt record CONFIG --out bank.npz` or import one with "
                "`jointopt bank import`, then set model: {backend: replay, bank: FILE}")
    bank = load_bank(config.resolve(config.model.bank))
    pool_size = replay_pool_size(bank, config.bank.pool_size) if (
        config.bank.enabled and config.cache) else None
    check_replayable(space, bank, task=task, test_task=test_task, pool_size=pool_size,
                     calibration_task=calibration_task)
    return bank.model_name, getattr(bank, "samples", None) or int(bank.header["samples"])


def check_backend(config: StudyConfig) -> None:
    """The backend name resolves, and an ``openai`` backend has valid server URLs and at
    most one source of API key; no credentials inside the config (before any compute)."""
    import difflib
    import re

    from jointopt.backends import BACKENDS
    from jointopt.safety.secrets import check_config_for_secrets

    model = config.model
    name = model.backend
    if name not in BACKENDS:
        if ":" not in name:
            close = difflib.get_close_matches(name, list(BACKENDS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise BackendError("unknown backend", where="model.backend", value=name,
                               fix=f"{hint}choose one of: {', '.join(BACKENDS)}, or "
                                   "'package.module:factory'")
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise BackendError(f"cannot import the backend module: {exc}", where="model.backend",
                               value=name, fix="check the module path (package.module:Name) "
                                               "and that the package is installed") from None
        if not callable(getattr(module, attr, None)):
            raise BackendError(f"module {module_name!r} has no callable {attr!r}",
                               where="model.backend", value=name,
                               fix="name a Backend class or a function returning one")
    check_config_for_secrets(config)
    from jointopt.backends import OPTIONAL_SETTINGS, backend_class, settings_takers

    cls = backend_class(name)
    for key in OPTIONAL_SETTINGS:
        if getattr(model, key) and key not in cls.settings_keys:
            takers = settings_takers(key)
            raise ConfigError(f"`{key}` only applies to backend: {' or '.join(takers)}",
                              where=f"model.{key}", value=name,
                              fix=f"set backend: {takers[0]}, or remove the key")
    if model.api_key_env and model.api_key_file:
        raise ConfigError("give the API key by api_key_env or by api_key_file, not both",
                          where="model.api_key_file", value=model.api_key_file,
                          fix="remove one of the two")
    if model.api_key_env and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", model.api_key_env):
        from jointopt.safety.secrets import register

        register(model.api_key_env)
        raise ConfigError("api_key_env must be the NAME of an environment variable, not the key "
                          "itself (the value is not shown)", where="model.api_key_env",
                          fix="export OPENAI_API_KEY=... and write api_key_env: OPENAI_API_KEY; "
                              "if a real key was written into the config, revoke it")

    cls.check_settings(config.backend_settings())


def check_credentials(config: StudyConfig) -> None:
    """The API key of the config can be read (environment variable set, file present).
    Called by ``jointopt run``/``worker``/``validate`` before any compute; not part of
    :func:`plan_study`, so exports work on machines without the key."""
    from jointopt.safety.secrets import read_api_key

    model = config.model
    from jointopt.backends import backend_class

    engine_env = (model.engine.get("api_key_env")
                  if "api_key_env" in backend_class(model.backend).settings_keys else None)
    read_api_key(env=model.api_key_env or engine_env, file=model.api_key_file,
                 base_dir=config.base_dir)


def check_limits(config: StudyConfig, space: SearchSpace, task: Task) -> None:
    """Oversize inputs and budgets above the configured caps are refused, naming the field,
    the value and the fix."""
    import itertools

    from jointopt.errors import StrategyError
    from jointopt.strategies import get_strategy_class

    opt = config.optimizer
    for kind, examples in (("example", task.examples), ("demonstration", task.demos)):
        for ex in examples:
            size = sum(len(str(v)) for v in ex.inputs.values())
            if size > opt.max_input_chars:
                big = max(ex.inputs, key=lambda k: len(str(ex.inputs[k])))
                raise DataError(
                    f"{kind} {ex.id!r} has {size} characters of input (field {big!r} alone "
                    f"{len(str(ex.inputs[big]))}), above optimizer.max_input_chars = "
                    f"{opt.max_input_chars}", where=f"task: {kind} {ex.id!r}", value=size,
                    fix="shorten or drop that input, or raise optimizer.max_input_chars")
    for value in space.max_tokens.extremes():
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and value > opt.max_tokens_cap:
            raise ConfigError(
                f"max_tokens {value} is above optimizer.max_tokens_cap = {opt.max_tokens_cap}",
                where=f"{space.source}: max_tokens", value=value,
                fix="lower the largest max_tokens of the search space, or raise "
                    "optimizer.max_tokens_cap")
    for name, params in space.strategies.items():
        cls = get_strategy_class(name, where=f"{space.source}: strategies.{name}")
        names = list(params)
        grids = [list(dict.fromkeys(params[p].extremes())) for p in names]
        worst, worst_params = 0, {}
        for combo in itertools.islice(itertools.product(*grids), 4096):
            chosen = dict(zip(names, combo))
            try:
                budget = cls(**chosen).max_completions()
            except (StrategyError, TypeError, ValueError):
                continue  # a combination the strategy refuses is never run
            if budget > worst:
                worst, worst_params = budget, chosen
        if worst > opt.max_completions_per_input:
            shown = ", ".join(f"{k}={v!r}" for k, v in worst_params.items()) or "defaults"
            field_names = set(cls.param_names())
            raise ConfigError(
                f"strategy {name!r} may spend {worst} completions per input ({shown}), above "
                f"optimizer.max_completions_per_input = {opt.max_completions_per_input}",
                where=f"{space.source}: strategies.{name}", value=worst_params or worst,
                fix=f"lower the largest values of {', '.join(sorted(set(names) & field_names)) or 'its parameters'}, "
                    "or raise optimizer.max_completions_per_input")


def check_tracking(config: StudyConfig) -> None:
    if config.tracking.enabled and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            "MLflow is not installed", where="tracking.enabled", value=True,
            fix="pip install 'jointopt[tracking]', or set tracking: {enabled: false}",
        )
