"""The ``oracle`` difficulty source: bins by each example's pass rate.

An example's bin is the quantile of its pass rate over a pool of ``oracle_samples``
samples with the space's first prompt (Snell et al., 2024: pass rate over N samples, 5
bins); ``"1"`` is the easiest bin. It needs the targets, so it is an analysis upper bound
on dev and test data, not servable: a study labels its examples with it and its policies
split by those labels (their spec's source is ``label``). The ``probe`` and ``predictor``
sources compare their bins with these and the predictor is trained on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from jointopt.core.policy import DifficultySpec
from jointopt.difficulty.base import (DifficultySource, check_n_bins, check_number,
                                      numbered_bins, sampling_contexts)
from jointopt.difficulty.label import LabelSource
from jointopt.errors import ConfigError
from jointopt.strategies.pool import PoolSample, expected_pass_at, pool_samples

if TYPE_CHECKING:
    from jointopt.backends.base import Backend
    from jointopt.core.prompts import PromptTemplate
    from jointopt.tasks import Task

__all__ = ["OracleSettings", "OracleSource", "oracle_bins", "oracle_labels",
           "pass_rates_from_pools"]


@dataclass(frozen=True)
class OracleSettings:
    """The ``difficulty:`` keys of the oracle bins (also read by the sources compared
    with or trained on them)."""

    n_bins: int = 3
    """Number of bins (``"1"`` = easiest)."""
    probe_temperature: float = 0.7
    """Sampling temperature of the oracle samples."""
    probe_max_tokens: int = 16
    """Completion-token cap of the oracle samples."""
    oracle_samples: int = 8
    """Samples per example whose pass rate sets its bin."""


class OracleSource(DifficultySource):
    """Bins by pass rate over ``oracle_samples`` samples; needs the target, so not servable:
    a study labels its dev and test examples with them."""

    name: ClassVar[str] = "oracle"
    Settings: ClassVar[type] = OracleSettings
    servable: ClassVar[bool] = False
    fit_generates: ClassVar[bool] = True

    def space_spec(self, task: "Task | None" = None, where: str = "difficulty"
                   ) -> DifficultySpec:
        labels = numbered_bins(self.settings.n_bins)
        return DifficultySpec(source=LabelSource.name, bins=labels, default_bin=labels[-1])

    def label_examples(self, task: "Task", backend: "Backend", *,
                       prompt: "PromptTemplate", seed: int = 0) -> dict[str, str]:
        return oracle_labels(prompt, task, backend, self.settings, seed)


def oracle_labels(template: "PromptTemplate", task: "Task", backend: "Backend",
                  settings: Any, seed: int = 0) -> dict[str, str]:
    """Oracle bins of ``task``'s examples: each one's pass rate over
    ``settings.oracle_samples`` samples with ``template``, cut into ``settings.n_bins``
    quantile bins (``"1"`` = easiest)."""
    contexts = sampling_contexts(template, task, settings, seed)
    results = backend.generate([c.request(n=int(settings.oracle_samples)) for c in contexts])
    pools = {ctx.example.id: pool_samples(ctx, result.completions)
             for ctx, result in zip(contexts, results)}
    return oracle_bins(pass_rates_from_pools(pools), int(settings.n_bins))


def oracle_bins(pass_rates: Mapping[str, float], n_bins: int) -> dict[str, str]:
    """Quantile bins of per-example pass rate: ``"1"`` = easiest ... ``str(n_bins)`` = hardest.

    Examples are ranked by pass rate, highest first. An example's bin is
    ``floor(n_bins * h / n) + 1`` where ``h`` is the number of examples with a *strictly
    higher* pass rate and ``n`` the number of examples; without ties this splits the
    examples into ``n_bins`` bins of (nearly) equal size. Equal pass rates always share a
    bin (the bin of the first position of their group), so the easiest group is always
    ``"1"``. With ties, or fewer distinct pass rates than bins, fewer bins are used and
    some labels stay empty -- labels keep their quantile meaning rather than being
    renumbered (e.g. with 5 bins and 40% of examples at pass rate 0, those examples all
    land in ``"4"`` and ``"5"`` is unused).

    Args:
        pass_rates: ``{example id: pass rate in [0, 1]}``, non-empty.
        n_bins: number of bins, at least 2.

    Returns:
        ``{example id: bin label}`` in the order of ``pass_rates``.

    Raises:
        ConfigError: empty ``pass_rates``, a rate outside [0, 1], or ``n_bins < 2``.
    """
    n_bins = check_n_bins(n_bins)
    if not isinstance(pass_rates, Mapping) or not pass_rates:
        raise ConfigError("`pass_rates` must be a non-empty mapping of example id to rate",
                          where="pass_rates", value=pass_rates,
                          fix="score at least one example (see pass_rates_from_pools)")
    rates = {}
    for key, r in pass_rates.items():
        v = check_number(r, f"pass_rates[{key!r}]")
        if not 0.0 <= v <= 1.0:
            raise ConfigError("a pass rate must lie in [0, 1]", where=f"pass_rates[{key!r}]",
                              value=r, fix="pass the share of correct samples")
        rates[key] = v
    n = len(rates)
    values = np.array(sorted(rates.values(), reverse=True))
    # number of strictly higher values = position of the first occurrence in descending order
    neg = -values  # ascending
    out = {}
    for key, v in rates.items():
        higher = int(np.searchsorted(neg, -v, side="left"))
        out[key] = str(min(n_bins, n_bins * higher // n + 1))
    return out


def pass_rates_from_pools(pools: Mapping[str, Sequence[PoolSample]]) -> dict[str, float]:
    """Per-example pass rate (expected pass@1, the share of correct samples) of each pool.

    Args:
        pools: ``{example id: samples}``, non-empty, every pool non-empty.

    Returns:
        ``{example id: pass rate in [0, 1]}`` in the order of ``pools``.

    Raises:
        ConfigError: no pools, or an empty pool.
    """
    if not isinstance(pools, Mapping) or not pools:
        raise ConfigError("`pools` must be a non-empty mapping of example id to samples",
                          where="pools", value=pools, fix="draw a pool for at least one example")
    out = {}
    for key, pool in pools.items():
        pool = tuple(pool)
        if not pool:
            raise ConfigError("a pool is empty", where=f"pools[{key!r}]", value=[],
                              fix="draw at least one sample per example")
        out[key] = expected_pass_at(pool, 1)
    return out


