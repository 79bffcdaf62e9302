"""The ``probe`` difficulty source: a few cheap samples pick the bin at serve time.

The policy first draws ``probe_k`` samples with its prompt; their agreement (the share of
the plurality answer plus a small likelihood tie-breaker, :func:`probe_signal`) is cut
into bins by thresholds fitted at the quantiles of the dev signals
(:func:`fit_thresholds`, :func:`bin_of`). The bin's strategy reuses the probe's samples
when it samples with the same temperature and max_tokens, so none is paid twice. A study
fits thresholds per prompt and reports how the probe's bins agree with oracle bins.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from jointopt.core.generation import GenerationRequest, GenerationResult
from jointopt.core.policy import DifficultySpec
from jointopt.difficulty.agreement import agreement
from jointopt.difficulty.base import (DifficultySource, StudyFit, check_n_bins, check_number,
                                      numbered_bins, sampling_contexts)
from jointopt.difficulty.oracle import OracleSettings, oracle_bins, pass_rates_from_pools
from jointopt.errors import ConfigError
from jointopt.strategies.pool import pool_samples

if TYPE_CHECKING:
    from jointopt.backends.base import Backend
    from jointopt.core.policy import Policy
    from jointopt.core.prompts import PromptTemplate
    from jointopt.strategies.base import Run, Strategy, StrategyContext
    from jointopt.tasks import Task

__all__ = ["ProbeSettings", "ProbeSource", "bin_of", "fit_thresholds", "probe_signal",
           "probe_signal_of"]

#: Weight of the logprob tie-breaker in :func:`probe_signal`.
_LOGPROB_WEIGHT = 0.01


@dataclass(frozen=True)
class ProbeSettings(OracleSettings):
    """The ``difficulty:`` keys of a probe: its samples, and the oracle bins its report
    compares with (``probe_temperature`` and ``probe_max_tokens`` serve both)."""

    probe_k: int = 4
    """Samples of the probe; their tokens are part of the policy's cost."""


class ProbeSource(DifficultySource):
    """``probe_k`` samples of the policy's model pick the bin at serve time by thresholds on
    their agreement, fitted per prompt on dev; the bin's strategy reuses the samples."""

    name: ClassVar[str] = "probe"
    Settings: ClassVar[type] = ProbeSettings
    probes: ClassVar[bool] = True
    fit_generates: ClassVar[bool] = True
    needs_fit: ClassVar[bool] = True

    def _spec(self, thresholds: Sequence[float]) -> DifficultySpec:
        p = self.settings
        bins = numbered_bins(p.n_bins)
        return DifficultySpec(source=self.key, bins=bins, default_bin=bins[-1],
                              probe_k=int(p.probe_k),
                              probe_temperature=float(p.probe_temperature),
                              probe_max_tokens=int(p.probe_max_tokens),
                              thresholds=tuple(thresholds))

    def _fit_prompt(self, template: "PromptTemplate", task: "Task", backend: "Backend",
                    seed: int) -> tuple[DifficultySpec, dict[str, Any]]:
        """The spec for one prompt and its agreement with oracle bins. The probe samples
        are the first samples of the oracle pools, so with a sample store the report
        costs the oracle samples only once."""
        p = self.settings
        n_bins, k = int(p.n_bins), int(p.probe_k)
        contexts = sampling_contexts(template, task, p, seed)
        n = max(k, int(p.oracle_samples))
        results = backend.generate([c.request(n=n) for c in contexts])
        signals, pools = {}, {}
        for ctx, result in zip(contexts, results):
            probe = dataclasses.replace(result, completions=result.completions[:k])
            signals[ctx.example.id] = probe_signal_of(ctx, probe)
            pools[ctx.example.id] = pool_samples(ctx, result.completions)
        cuts = fit_thresholds(list(signals.values()), n_bins)
        spec = self._spec(cuts)
        predicted = {i: bin_of(s, cuts, spec.bins) for i, s in signals.items()}
        oracle = oracle_bins(pass_rates_from_pools(pools), n_bins)
        return spec, {"thresholds": list(cuts),
                      "agreement": agreement(predicted, oracle).to_dict()}

    def fit(self, task: "Task", backend: "Backend", *, prompt: "PromptTemplate",
            seed: int = 0) -> DifficultySpec:
        return self._fit_prompt(prompt, task, backend, seed)[0]

    def fit_study(self, task: "Task", backend: "Backend", *,
                  prompts: Sequence["PromptTemplate"], seed: int = 0,
                  test_task: "Task | None" = None) -> StudyFit:
        """Thresholds per prompt, and a report of each prompt's agreement with oracle bins
        from the pass rate over ``oracle_samples`` samples."""
        p = self.settings
        report: dict[str, Any] = {"probe_k": int(p.probe_k), "n_bins": int(p.n_bins),
                                  "oracle_samples": int(p.oracle_samples), "prompts": {}}
        specs = {}
        for template in prompts:
            specs[template.id], report["prompts"][template.id] = self._fit_prompt(
                template, task, backend, seed)
        return StudyFit(specs=specs, report=report, agreements={
            f"probe_{{}}.{prompt_id}": item["agreement"]
            for prompt_id, item in report["prompts"].items()})

    @classmethod
    def check_spec(cls, spec: DifficultySpec) -> None:
        if spec.probe_k < 1:
            raise ConfigError("a probe needs `probe_k` >= 1", where="difficulty.probe_k",
                              value=spec.probe_k, fix="use e.g. probe_k: 4")
        if len(spec.thresholds) != len(spec.bins) - 1 or list(spec.thresholds) != sorted(
                spec.thresholds, reverse=True):
            raise ConfigError(
                "`thresholds` must be descending and one fewer than `bins`",
                where="difficulty.thresholds", value=spec.thresholds,
                fix=f"give {max(len(spec.bins) - 1, 0)} descending cut points")

    @classmethod
    def spec_fields(cls, spec: DifficultySpec) -> dict[str, Any]:
        return {"probe_k": spec.probe_k, "probe_temperature": spec.probe_temperature,
                "probe_max_tokens": spec.probe_max_tokens, "thresholds": list(spec.thresholds)}

    @classmethod
    def run(cls, policy: "Policy", strategies: Mapping[str, "Strategy"],
            ctx: "StrategyContext") -> "Run":
        """Probe, pick the bin, then run its strategy, reusing the probe's samples.

        Requests of the strategy for the probe's prompt and sampling settings take the
        probe's samples at the positions they cover (``offset``) and ask the engine only
        for the rest, so no probe sample is thrown away and none is paid twice.
        """
        spec = policy.difficulty
        probe_ctx = dataclasses.replace(ctx, temperature=spec.probe_temperature,
                                        max_tokens=spec.probe_max_tokens, model=None)
        probe_request = probe_ctx.request(n=spec.probe_k)
        (probe,) = yield [probe_request]
        signal = probe_signal_of(probe_ctx, probe)
        bin_name = bin_of(signal, spec.thresholds, spec.bins)
        allocation = policy.bins[bin_name]
        inner_ctx = dataclasses.replace(ctx, temperature=allocation.temperature,
                                        max_tokens=allocation.max_tokens,
                                        model=policy.model_of(allocation))
        outcome = yield from _reusing(strategies[bin_name].run(inner_ctx), probe_request, probe)
        return dataclasses.replace(outcome, info={**dict(outcome.info), "bin": bin_name,
                                                  "probe_signal": signal})


def _reusing(inner: "Run", probe_request: GenerationRequest, probe: GenerationResult) -> "Run":
    """Drive ``inner``, answering its requests at the probe's sampling key from the probe's
    samples first (by ``offset``) and asking the engine only for the rest."""
    key, held = probe_request.sampling_key(), probe.completions
    try:
        requests = inner.send(None)
        while True:
            outgoing: list[GenerationRequest] = []
            plans: list[tuple[GenerationRequest, tuple, int | None]] = []
            for request in requests:
                start, stop = request.offset, request.offset + request.n
                reused = held[start:min(stop, len(held))] if request.sampling_key() == key else ()
                rest = request.n - len(reused)
                index = None
                if rest:
                    index = len(outgoing)
                    outgoing.append(dataclasses.replace(
                        request, n=rest, offset=request.offset + len(reused)))
                plans.append((request, tuple(reused), index))
            fresh = (yield outgoing) if outgoing else []
            merged = []
            for request, reused, index in plans:
                new = fresh[index] if index is not None else None
                merged.append(GenerationResult(
                    request=request,
                    prompt_tokens=new.prompt_tokens if new is not None else 0,
                    completions=reused + (new.completions if new is not None else ()),
                    wall_time=new.wall_time if new is not None else 0.0,
                    cached=len(reused) + (new.cached if new is not None else 0),
                ))
            requests = inner.send(merged)
    except StopIteration as stop:
        return stop.value


def probe_signal_of(ctx: "StrategyContext", result: GenerationResult) -> float:
    """The difficulty signal of a probe's samples (high = easy)."""
    comps = result.completions
    return probe_signal([ctx.extract(c.text) for c in comps], [c.mean_logprob for c in comps])


def probe_signal(answers: Sequence[str | None],
                 mean_logprobs: Sequence[float | None]) -> float:
    """Ease signal of ``k`` probe samples of one example; higher means easier.

    The signal is the share of the plurality answer among the ``k`` samples (``None``
    answers never form the plurality but count in ``k``; all ``None`` gives 0) plus
    ``0.01`` times the mean of ``exp(mean_logprob)`` over samples that have a logprob
    (capped at 1 per sample; 0 when none has one), a tie-breaker in ``[0, 0.01]``. The
    result lies in ``[0, 1.01]``.

    Args:
        answers: canonical answers of the ``k >= 1`` samples.
        mean_logprobs: mean token logprob of each sample (same length), or ``None``.

    Raises:
        ConfigError: no samples, lengths differ, or a logprob is NaN or ``+inf``.
    """
    answers = list(answers)
    mean_logprobs = list(mean_logprobs)
    if not answers:
        raise ConfigError("a probe needs at least one sample", where="answers", value=answers,
                          fix="draw k >= 1 probe samples")
    if len(mean_logprobs) != len(answers):
        raise ConfigError(f"`mean_logprobs` must have one entry per answer ({len(answers)})",
                          where="mean_logprobs", value=len(mean_logprobs),
                          fix="pass None for samples without a logprob")
    counts = Counter(a for a in answers if a is not None)
    share = max(counts.values()) / len(answers) if counts else 0.0
    conf = [min(1.0, math.exp(check_number(lp, f"mean_logprobs[{i}]", allow_neg_inf=True)))
            for i, lp in enumerate(mean_logprobs) if lp is not None]
    bonus = sum(conf) / len(conf) if conf else 0.0
    return share + _LOGPROB_WEIGHT * bonus


def fit_thresholds(signals: Sequence[float], n_bins: int) -> tuple[float, ...]:
    """``n_bins - 1`` descending cut points at the quantiles of the dev signals.

    Cut ``j`` (0-based) is the ``1 - (j + 1) / n_bins`` quantile (linear interpolation),
    so :func:`bin_of` splits the dev signals into ``n_bins`` bins of roughly equal size,
    ``"1"`` holding the highest (easiest) signals. Many equal signals give equal cut
    points; the bins between them stay empty.

    Raises:
        ConfigError: no signals, a non-finite signal, or ``n_bins < 2``.
    """
    n_bins = check_n_bins(n_bins)
    signals = list(signals)
    if not signals:
        raise ConfigError("`signals` must not be empty", where="signals", value=signals,
                          fix="probe at least one dev example")
    data = np.array([check_number(s, f"signals[{i}]") for i, s in enumerate(signals)])
    qs = [1.0 - (j + 1) / n_bins for j in range(n_bins - 1)]
    return tuple(float(x) for x in np.quantile(data, qs))


def bin_of(signal: float, thresholds: Sequence[float],
           bins: Sequence[str] | None = None) -> str:
    """The bin of a probe signal: the first bin if ``signal >= thresholds[0]``, the second
    if ``>= thresholds[1]``, ..., else the last (the hardest). Bins are ``bins`` (one more
    than ``thresholds``; a policy's ``difficulty.bins``) or ``"1"``, ``"2"``, ... This is
    the function a probe policy runs, in studies and at serve time.

    Raises:
        ConfigError: non-finite ``signal``, empty or not descending ``thresholds``, or
            ``bins`` of the wrong length.
    """
    s = check_number(signal, "signal")
    th = [check_number(t, f"thresholds[{i}]") for i, t in enumerate(thresholds)]
    labels = [str(j + 1) for j in range(len(th) + 1)] if bins is None else list(bins)
    if not th and bins is None:
        raise ConfigError("`thresholds` must not be empty", where="thresholds", value=th,
                          fix="use fit_thresholds(dev_signals, n_bins)")
    if any(a < b for a, b in zip(th, th[1:])):
        raise ConfigError("`thresholds` must be descending", where="thresholds", value=th,
                          fix="use fit_thresholds(dev_signals, n_bins)")
    if len(labels) != len(th) + 1:
        raise ConfigError("`bins` must have one more label than `thresholds`", where="bins",
                          value=labels, fix=f"give {len(th) + 1} bin labels")
    for j, t in enumerate(th):
        if s >= t:
            return labels[j]
    return labels[-1]
