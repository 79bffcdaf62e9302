"""Pre-flight of a replayed study: is everything the search space can ask for in the bank?

Checked before any compute (``run`` and ``validate`` with ``backend: replay``, and
``jointopt record``): only the parallel strategies scored from pools, the recorded
prompts, temperatures and max_tokens, enough samples per pool, and the same dataset.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from jointopt.backends.bank_file import Bank, BankPool, messages_hash, preview
from jointopt.backends.replay import REPLAY_FIX, ReplayBackend
from jointopt.errors import ConfigError

if TYPE_CHECKING:
    from jointopt.search.space import SearchSpace
    from jointopt.tasks import Task

__all__ = ["check_difficulty_replayable", "check_replayable", "examples_hash",
           "largest_pool_k", "replay_pool_size", "sampling_values"]

log = logging.getLogger(__name__)

#: Largest number of values an integer range may enumerate for recording/replay.
_MAX_RANGE_VALUES = 64


def sampling_values(param: Any, label: str, source: str = "search space") -> list[Any]:
    """Every value a search-space parameter can produce, for recording and replay.

    ``Fixed`` gives its value, ``Choice`` its choices and an integer range every integer
    it can suggest; a real-valued range cannot be enumerated and raises
    :class:`ConfigError` (recorded settings must be a finite set). ``temperature`` values
    come back as ``float`` and ``max_tokens`` values as ``int``, exactly as a trial
    builds them (``0`` and ``0.0`` are different sampling keys otherwise).
    """
    from jointopt.search.space import Choice, Fixed, IntRange

    cast = float if label == "temperature" else int
    where = f"{source}: {label}"
    if isinstance(param, Fixed):
        raw = [param.value]
    elif isinstance(param, Choice):
        raw = list(param.choices)
    elif isinstance(param, IntRange):
        raw = list(range(param.low, param.high + 1, 1 if param.log else param.step))
        if len(raw) > _MAX_RANGE_VALUES:
            raise ConfigError(
                f"a range of {len(raw)} values cannot be recorded (at most "
                f"{_MAX_RANGE_VALUES} settings per parameter)", where=where,
                value={"low": param.low, "high": param.high, "step": param.step},
                fix=f"use {label}: {{choices: [...]}} with the values to record and search",
            )
    else:
        raise ConfigError(
            f"a continuous range of `{label}` cannot be recorded or replayed: a bank holds "
            "samples for a finite set of values", where=where,
            value={"low": getattr(param, "low", None), "high": getattr(param, "high", None)},
            fix=f"use {label}: {{choices: [...]}} (e.g. {{choices: [0.0, 0.4, 0.8]}}) for "
                "recording and for the replayed study",
        )
    out: list[Any] = []
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"`{label}` must be a number", where=where, value=value,
                              fix="use numbers")
        value = cast(value)
        if value not in out:
            out.append(value)
    return out


# --------------------------------------------------------------------------- pre-flight


def examples_hash(examples: Iterable[Any]) -> str:
    """sha256 over every example's id, inputs, target and difficulty label, sorted by id:
    the examples a version-2 bank holds pools for, whatever the dev/test split."""
    payload = sorted([e.id, dict(e.inputs), e.target, e.difficulty] for e in examples)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def replay_pool_size(bank: Any, configured: int | None) -> int:
    """The pool size of a study replayed from ``bank``: every recorded sample unless
    ``bank.pool_size`` says fewer, which is logged (a histogram pool cannot be cut)."""
    recorded = getattr(bank, "samples", None) or int(bank.header["samples"])
    if configured is None or configured >= recorded:
        return recorded if configured is None else configured
    histograms = getattr(bank, "arrays", {}).get("pool_sample_start")
    if histograms is not None and (histograms < 0).any():
        raise ConfigError(
            f"bank.pool_size={configured} would cut pools the bank holds as answer "
            f"histograms of {recorded} samples", where="bank.pool_size", value=configured,
            fix="leave bank.pool_size unset: a replayed study scores every recorded sample")
    log.warning("bank.pool_size=%d: every pool is scored from its first %d of the %d "
                "recorded samples (leave bank.pool_size unset to use them all)",
                configured, configured, recorded)
    return configured


def _strategy_values(params: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    """Combinations of the extreme values of a strategy's parameters."""
    names = list(params)
    values = [params[n].extremes() for n in names]
    for combo in itertools.product(*values):
        yield dict(zip(names, combo))


def largest_pool_k(space: "SearchSpace") -> int:
    """The largest ``pool_k()`` any parallel strategy of ``space`` can take (at least 1)."""
    from jointopt.strategies import get_strategy_class

    largest = 1
    for name, params in space.strategies.items():
        cls = get_strategy_class(name, where=f"{space.source}: strategies.{name}")
        for values in _strategy_values(params):
            k = cls(**values).pool_k()
            if k is not None:
                largest = max(largest, int(k))
    return largest


def check_difficulty_replayable(space: "SearchSpace") -> None:
    """Refuse difficulty sources that generate beyond the recorded pools (``probe``,
    ``predictor``, ``oracle``): their bins are fitted from samples at their own settings
    (the probe's, or ``oracle_samples`` with the first prompt), which a bank does not hold."""
    from jointopt._registry import DIFFICULTY_SOURCES

    source = space.bin_source()
    if source.fit_generates:
        usable = [name for name in DIFFICULTY_SOURCES.names()
                  if not DIFFICULTY_SOURCES.load(name).fit_generates]
        raise ConfigError(
            f"difficulty source {source.key!r} cannot be recorded or replayed: its bins are "
            "fitted from samples a bank does not hold",
            where=f"{space.source}: difficulty.source", value=source.key,
            fix=f"use difficulty source {' or '.join(map(repr, usable))} for a recorded or "
                "replayed study, or run this one live")


def check_replayable(space: "SearchSpace", bank: Bank | ReplayBackend, *,
                     task: "Task | None" = None, test_task: "Task | None" = None,
                     calibration_task: "Task | None" = None,
                     pool_size: int | None = None) -> None:
    """Check, before any compute, that a study on ``space`` can run from ``bank``.

    Args:
        space: the study's search space.
        bank: a loaded bank or a :class:`ReplayBackend`.
        task: the examples the study searches on (``StudyPlan.task``); when given, its
            dataset hash must equal the bank's and every (prompt, example, temperature,
            max_tokens) pool the space can ask for must be in the bank (prompts are
            rendered and matched by sampling key). Without it only prompt ids,
            temperatures and max_tokens are compared.
        test_task: the held-out split (``StudyPlan.test_task``), checked the same way
            against the bank's ``test_dataset_hash``.
        calibration_task: the calibration split (``StudyPlan.calibration_task``): its
            pools must be there too (a version-2 bank's ``examples_hash`` covers all three).
        pool_size: the study's pool size (``bank.pool_size`` when the sample bank is on,
            None when strategies run directly); every sampled pool must hold at least
            ``max(pool_size, largest n)`` samples.

    Raises:
        ConfigError: a strategy that is not scored from pools (``pool_k()`` is None for
            some parameter value), a continuous temperature / max_tokens range, a prompt
            / temperature / max_tokens not in the bank, pools with too few samples, or a
            dataset whose hash differs from the bank's (both hashes are named).
    """
    bank = bank.bank if isinstance(bank, ReplayBackend) else bank
    where = f"{space.source}"
    unexpanded = getattr(space, "proposals", ())
    if unexpanded:
        raise ConfigError(
            "{propose: ...} prompt entries cannot be replayed: proposing calls the model with "
            "prompts that are not in the bank", where=f"{where}: prompts",
            value=[dict(e) for e in unexpanded],
            fix="write the templates the bank was recorded with into the search space")
    check_difficulty_replayable(space)
    if task is not None or test_task is not None:
        _check_hashes(bank, task, test_task, calibration_task)
    _check_strategies(space, where)
    temperatures = sampling_values(space.temperature, "temperature", where)
    budgets = sampling_values(space.max_tokens, "max_tokens", where)
    _check_settings(space, bank, temperatures, budgets, where)
    _check_pool_sizes(space, bank, task, test_task, temperatures, budgets, pool_size,
                      calibration_task)


def _check_hashes(bank: Bank, task: "Task | None", test_task: "Task | None",
                  calibration_task: "Task | None" = None) -> None:
    """The bank was recorded on the same searched and held-out examples as the study's
    (a version-2 bank: on the same examples, however they are split)."""
    from jointopt.search.plan import task_hash

    recorded = bank.header.get("examples_hash")
    if recorded is not None:
        mine = examples_hash([e for t in (task, test_task, calibration_task) if t is not None
                              for e in t.examples])
        if mine != recorded:
            raise ConfigError(
                "the bank holds pools for other examples than this study's (ids, inputs, "
                "targets or difficulty labels differ)", where=f"{bank.path}: examples_hash",
                value={"bank": recorded, "study": mine},
                fix=f"use the dataset the bank was written with (task "
                    f"{bank.header.get('task')!r}, {bank.header.get('examples', '?')} "
                    "examples); the dev/test split may change freely")
        return

    for label, field_name, mine_task in (("searched", "dataset_hash", task),
                                          ("held-out test", "test_dataset_hash",
                                           test_task)):
        if mine_task is None:
            continue
        mine = task_hash(mine_task)
        theirs = bank.header.get(field_name)
        if mine != theirs:
            raise ConfigError(
                f"the bank was recorded on other {label} examples than this study's",
                where=f"{bank.path}: {field_name}",
                value={"bank": theirs, "study": mine},
                fix=f"use the task and validation.test_fraction/seed the bank was recorded "
                    f"with (task {bank.header.get('task')!r}, "
                    f"{bank.header.get('examples', '?')} examples), or re-record the bank "
                    "with this config",
            )


def _check_strategies(space: "SearchSpace", where: str) -> None:
    """Every strategy of the space is scored from sample pools at every parameter value."""
    from jointopt.strategies import get_strategy_class

    for name, params in space.strategies.items():
        cls = get_strategy_class(name, where=f"{where}: strategies.{name}")
        for values in _strategy_values(params):
            if cls(**values).pool_k() is None:
                shown = f" with {values}" if values else ""
                raise ConfigError(
                    f"strategy {name!r}{shown} is not scored from sample pools, so it cannot "
                    "be replayed from a bank",
                    where=f"{where}: strategies.{name}", value=name,
                    fix=f"remove {name!r} from the search space for a replayed study, or run "
                        "it live; " + REPLAY_FIX,
                )


def _check_settings(space: "SearchSpace", bank: Bank, temperatures: list[float],
                    budgets: list[int], where: str) -> None:
    """Every temperature, max_tokens and prompt id of the space is in the bank."""
    for label, wanted, have in (("temperature", temperatures, bank.temperatures),
                                ("max_tokens", budgets, bank.max_tokens)):
        missing = [v for v in wanted if v not in have]
        if missing:
            raise ConfigError(
                f"the search space's {label} values {missing} are not in the bank",
                where=f"{where}: {label}", value=missing,
                fix=f"recorded {label} values: {sorted(have)}; search only those, or record "
                    "the others first",
            )
    prompt_ids = bank.prompt_ids
    absent = [p.id for p in space.prompts if p.id not in prompt_ids]
    if absent:
        raise ConfigError(
            f"prompt(s) {absent} are not in the bank", where=f"{where}: prompts",
            value=absent, fix=f"recorded prompts: {sorted(prompt_ids)}; search only those, "
                              "or record the others first",
        )


def _check_pool_sizes(space: "SearchSpace", bank: Bank, task: "Task | None",
                      test_task: "Task | None", temperatures: list[float], budgets: list[int],
                      pool_size: int | None,
                      calibration_task: "Task | None" = None) -> None:
    """Every pool the study samples holds enough samples (and, with a task, exists)."""
    needed = max(pool_size or 0, largest_pool_k(space))
    if task is None and test_task is None:
        too_few = [p for p in bank.pools.values()
                   if p.temperature in temperatures and p.max_tokens in budgets
                   and p.temperature != 0 and p.samples < needed]
    else:
        too_few = [pool for t in (task, test_task, calibration_task) if t is not None
                   for pool in _check_pools(space, bank, t, temperatures, budgets, needed)]
    if too_few:
        pool = min(too_few, key=lambda p: p.samples)
        raise ConfigError(
            f"the bank holds {pool.samples} samples per pool for some settings, the study "
            f"needs {needed} (largest of bank.pool_size and the largest strategy n)",
            where=f"{bank.path}:{pool.line}",
            value={"prompt_id": pool.prompt_id, "temperature": pool.temperature,
                   "max_tokens": pool.max_tokens, "recorded": pool.samples,
                   "needed": needed},
            fix=f"record with --samples >= {needed}, or lower bank.pool_size and the "
                f"strategies' n to at most {pool.samples}",
        )


def _check_pools(space: "SearchSpace", bank: Bank, task: "Task",
                 temperatures: list[float], budgets: list[int],
                 needed: int) -> list[BankPool]:
    """Every pool the space can request is in the bank; returns pools with too few samples."""
    from jointopt.core.prompts import render_messages
    from jointopt.strategies import StrategyContext

    too_few: list[BankPool] = []
    if not getattr(bank, "has_messages", True):
        return _check_pools_by_id(space, bank, task, temperatures, budgets, needed)
    for template in space.prompts:
        for example in task.examples:
            messages = render_messages(template, task, example)
            for temperature in temperatures:
                for max_tokens in budgets:
                    request = StrategyContext(
                        example=example, task=task, messages=messages,
                        temperature=temperature, max_tokens=max_tokens).request(n=1)
                    pool = bank.pools.get(request.sampling_key())
                    if pool is None:
                        recorded = bank.settings(messages_hash(messages))
                        reason = (
                            "the prompt renders differently from the recorded one (the "
                            "template, demonstrations or data changed)" if not recorded else
                            "this (temperature, max_tokens) was not recorded for it")
                        raise ConfigError(
                            f"prompt {template.id!r} on example {example.id!r} at "
                            f"temperature={temperature:g}, max_tokens={max_tokens} is not in "
                            f"the bank: {reason}",
                            where=f"{space.source}: prompts.{template.id}",
                            value=preview(messages),
                            fix="record the bank from this exact search space and task, or "
                                "search only recorded settings",
                        )
                    if temperature != 0 and pool.samples < needed:
                        too_few.append(pool)
    return too_few



def _check_pools_by_id(space: "SearchSpace", bank: Any, task: "Task",
                       temperatures: list[float], budgets: list[int],
                       needed: int) -> list[BankPool]:
    """A bank without rendered prompts: every (prompt id, example id, temperature,
    max_tokens) pool exists; returns pools with too few samples."""
    too_few: list[BankPool] = []
    for template in space.prompts:
        for example in task.examples:
            for temperature in temperatures:
                for max_tokens in budgets:
                    row = bank.find(template.id, example.id, temperature, max_tokens)
                    if row is None:
                        raise ConfigError(
                            f"prompt {template.id!r} on example {example.id!r} at "
                            f"temperature={temperature:g}, max_tokens={max_tokens} is not "
                            "in the bank", where=f"{space.source}: prompts.{template.id}",
                            value=example.id,
                            fix="search only the prompts and settings the bank holds, on "
                                "the examples it was written with")
                    pool = bank.pools["|".join(map(str, (template.id, example.id,
                                                         float(temperature),
                                                         int(max_tokens))))]
                    if temperature != 0 and pool.samples < needed:
                        too_few.append(pool)
    return too_few
