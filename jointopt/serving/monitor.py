"""Keeping a certified promise at serve time: labelled feedback, an anytime-valid
accuracy bound per policy, and a switch to the next safer certified policy.

A certified policy file (``jointopt export --pick certified``) carries its certificate:
the accuracy target, the risk, and the other certified policies, safer (more accurate,
more expensive) ones first (:mod:`jointopt.export.certified`). The proxy answers with the
cheapest; clients report, per response id, whether the answer was correct (or the
reference answer, matched with the policy's own matcher). Each policy's outcomes feed a
:class:`~jointopt.evaluation.risk.BernoulliConfidenceSequence`: its interval holds the
policy's accuracy on the traffic at every moment with probability >= 1 - risk, however
often it is read. When the active policy's upper bound falls below the target, the
target is violated with confidence (the traffic is not exchangeable with the
calibration data any more, e.g. harder inputs), and the monitor switches to the next
safer certified policy (``action="switch"``) or only raises the alert (``"alert"``;
also when no safer policy is left). The decisions and bounds are logged and exposed at
``GET /metrics`` in Prometheus' text format (:func:`PolicyMonitor.metrics_text`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from jointopt.core.policy import Policy
from jointopt.errors import ConfigError, DataError
from jointopt.evaluation.risk import BernoulliConfidenceSequence
from jointopt.tasks import Example

if TYPE_CHECKING:
    from jointopt.serving.runtime import Answer, PolicyRunner

__all__ = ["MonitorSettings", "PolicyMonitor", "monitor_for"]

log = logging.getLogger("jointopt.serving.monitor")


@dataclass(frozen=True)
class MonitorSettings:
    """How the serving monitor acts.

    Attributes:
        action: ``switch`` to the next safer certified policy when the target is
            violated with confidence, or ``alert`` only (log and ``/metrics``).
        target: accuracy to keep; default: the certificate's target (None without one:
            feedback is tracked, nothing is enforced).
        risk: the confidence sequence's risk; default: the certificate's risk, else 0.05.
        max_responses: response ids remembered for feedback (the oldest are forgotten).
    """

    action: Literal["switch", "alert"] = "switch"
    target: float | None = None
    risk: float | None = None
    max_responses: int = 100_000

    def __post_init__(self) -> None:
        if self.action not in ("switch", "alert"):
            raise ConfigError("unknown violation action", where="on_violation",
                              value=self.action, fix="use 'switch' or 'alert'")
        for name in ("target", "risk"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not 0 < value < 1):
                raise ConfigError(f"`{name}` must be strictly between 0 and 1", where=name,
                                  value=value, fix="e.g. 0.9 for a target, 0.05 for a risk")
        if self.max_responses < 1:
            raise ConfigError("`max_responses` must be >= 1", where="max_responses",
                              value=self.max_responses, fix="e.g. 100000")


@dataclass
class _Tally:
    """Counters of one policy (mutated under the monitor's lock only)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    correct: int = 0
    wrong: int = 0


class PolicyMonitor:
    """The active policy, its feedback and the switch (see the module docstring).

    Args:
        runners: the certified policies' runners, the first active, each next one safer.
        names: a label per runner (its trial number), for logs and metrics.
        settings: action, target, risk.
    """

    def __init__(self, runners: Sequence["PolicyRunner"], names: Sequence[str],
                 settings: MonitorSettings, *, risk: float = 0.05) -> None:
        if not runners or len(runners) != len(names):
            raise ConfigError("the monitor needs one name per runner", where="runners",
                              value=len(runners), fix="pass at least one runner")
        self._runners = tuple(runners)
        self._names = tuple(names)
        self.settings = settings
        self.target = settings.target
        self.cs = BernoulliConfidenceSequence(risk=settings.risk or risk)
        self._tallies = [_Tally() for _ in runners]
        self._active = 0
        self._switches = 0
        self._alert = False
        self._responses: OrderedDict[str, tuple[int, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- serving

    @property
    def active_runner(self) -> "PolicyRunner":
        """The runner of the policy that answers now."""
        return self._runners[self._active]

    @property
    def active_name(self) -> str:
        """The name (trial number) of the policy that answers now."""
        return self._names[self._active]

    def record(self, response_id: str, runner: "PolicyRunner", answer: "Answer") -> None:
        """Remember a response for feedback, and count its request and tokens."""
        index = next((i for i, r in enumerate(self._runners) if r is runner), self._active)
        with self._lock:
            tally = self._tallies[index]
            tally.requests += 1
            tally.prompt_tokens += answer.usage.prompt_tokens
            tally.completion_tokens += answer.usage.completion_tokens
            self._responses[response_id] = (index, answer.answer)
            while len(self._responses) > self.settings.max_responses:
                self._responses.popitem(last=False)

    def feedback(self, response_id: str, correct: bool | None = None,
                 reference: str | None = None) -> dict[str, Any]:
        """Count one labelled outcome for the policy that gave ``response_id``.

        Raises:
            DataError: an unknown (or forgotten) id, neither or both of ``correct`` and
                ``reference``, or feedback on a response already labelled.
        """
        if (correct is None) == (reference is None):
            raise DataError("feedback needs exactly one of `correct` and `reference`",
                            where="feedback", fix='send {"id": ..., "correct": true} or '
                                                  '{"id": ..., "reference": "42"}')
        with self._lock:
            entry = self._responses.pop(response_id, None)
        if entry is None:
            raise DataError("unknown response id (never served, already labelled, or "
                            "forgotten)", where="feedback.id", value=response_id,
                            fix="send the `id` of a response of this proxy, once")
        index, answer = entry
        if reference is not None:
            runner = self._runners[index]
            example = Example(id=response_id, inputs={}, target=str(reference))
            correct = runner.task.is_correct(example, answer)
        return self._count(index, bool(correct))

    def _count(self, index: int, correct: bool) -> dict[str, Any]:
        with self._lock:
            tally = self._tallies[index]
            tally.correct += int(correct)
            tally.wrong += int(not correct)
            low, high = self.cs.interval(tally.correct, tally.correct + tally.wrong)
            event = self._check(index, high)
            return {"policy": self._names[index], "correct": correct,
                    "accuracy_bounds": [round(low, 6), round(high, 6)],
                    "active_policy": self._names[self._active], "event": event}

    def _check(self, index: int, high: float) -> str | None:
        """Act on a violation of the active policy (called under the lock)."""
        if self.target is None or index != self._active or high >= self.target:
            return None
        name = self._names[index]
        if self.settings.action == "switch" and self._active + 1 < len(self._runners):
            self._active += 1
            self._switches += 1
            self._alert = False
            log.warning("policy %s violates accuracy >= %g with confidence (upper bound "
                        "%.3f); switched to the next safer certified policy %s", name,
                        self.target, high, self._names[self._active])
            return "switched"
        if not self._alert:
            log.warning("policy %s violates accuracy >= %g with confidence (upper bound "
                        "%.3f); %s", name, self.target, high,
                        "alert only" if self.settings.action == "alert"
                        else "no safer certified policy is left")
        self._alert = True
        return "alert"

    # ---------------------------------------------------------------- metrics

    def snapshot(self) -> dict[str, Any]:
        """Counters and bounds of every policy, the active one and the alert state."""
        with self._lock:
            policies = []
            for name, runner, t in zip(self._names, self._runners, self._tallies):
                low, high = self.cs.interval(t.correct, t.correct + t.wrong)
                policies.append({"name": name, "prompt": runner.policy.prompt.id,
                                 "requests": t.requests, "prompt_tokens": t.prompt_tokens,
                                 "completion_tokens": t.completion_tokens,
                                 "correct": t.correct, "wrong": t.wrong,
                                 "accuracy_lower": low, "accuracy_upper": high})
            return {"active": self._names[self._active], "active_index": self._active,
                    "switches": self._switches, "alert": self._alert,
                    "target": self.target, "risk": self.cs.risk, "policies": policies}

    def metrics_text(self) -> str:
        """The monitor's state in Prometheus' text exposition format (version 0.0.4)."""
        from jointopt.serving.metrics import prometheus_text

        return prometheus_text(self.snapshot())


def _fallback_policy(data: Mapping[str, Any], base: Policy) -> Policy:
    return Policy.from_dict({"schema_version": base.schema_version, **data["policy"],
                             "metadata": {"task": base.metadata.get("task")}})


def monitor_for(runner: "PolicyRunner", settings: MonitorSettings | None = None
                ) -> PolicyMonitor:
    """The monitor of a runner's policy: with its certificate's fallbacks (each a runner
    on the same backend and task) and target, or a plain feedback tracker without one."""
    from jointopt.serving.runtime import PolicyRunner

    settings = settings or MonitorSettings()
    policy = runner.policy
    cert = policy.metadata.get("certificate") or {}
    provenance = policy.metadata.get("provenance") or {}
    runners = [runner]
    names = [str(cert.get("chosen_trial", provenance.get("trial_number", "policy")))]
    for fallback in cert.get("fallbacks", ()):
        runners.append(PolicyRunner(_fallback_policy(fallback, policy), runner.backend,
                                    runner.task))
        names.append(str(fallback["trial"]))
    target = settings.target
    if target is None and cert and cert.get("target"):
        target = float(cert["target"])
    import dataclasses

    settings = dataclasses.replace(settings, target=target)
    return PolicyMonitor(runners, names, settings, risk=float(cert.get("risk", 0.05)))
