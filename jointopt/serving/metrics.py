"""``GET /metrics``: the proxy's counters in Prometheus' text exposition format (0.0.4).

Series (label ``policy`` = the trial number of the policy, ``prompt`` its template id):

* ``jointopt_requests_total`` (counter): requests answered, per policy.
* ``jointopt_tokens_total`` (counter): tokens spent upstream, per policy and ``kind``
  (``prompt`` / ``completion``).
* ``jointopt_feedback_total`` (counter): labelled feedback, per policy and ``outcome``
  (``correct`` / ``wrong``).
* ``jointopt_accuracy_lower`` / ``jointopt_accuracy_upper`` (gauges): the anytime-valid
  confidence sequence of each policy's accuracy on the labelled traffic.
* ``jointopt_accuracy_target`` (gauge, when there is a target) and
  ``jointopt_confidence_sequence_risk`` (gauge).
* ``jointopt_active_policy`` (gauge): 1 for the policy answering now, 0 for the others.
* ``jointopt_policy_switches_total`` (counter) and ``jointopt_violation_alert`` (gauge,
  1 while the target is violated with confidence and no switch resolved it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["CONTENT_TYPE", "prometheus_text"]

#: The media type of the text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: Any) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def prometheus_text(snapshot: Mapping[str, Any]) -> str:
    """Render :meth:`jointopt.serving.monitor.PolicyMonitor.snapshot` as Prometheus text."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, Any], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{_labels(**labels)} {_number(value)}")

    policies = snapshot["policies"]

    def ids(p: Mapping[str, Any]) -> dict[str, Any]:
        return {"policy": p["name"], "prompt": p["prompt"]}

    family("jointopt_requests_total", "counter", "Requests answered by a policy.",
           [(ids(p), p["requests"]) for p in policies])
    family("jointopt_tokens_total", "counter", "Tokens spent upstream by a policy.",
           [({**ids(p), "kind": kind}, p[f"{kind}_tokens"]) for p in policies
            for kind in ("prompt", "completion")])
    family("jointopt_feedback_total", "counter", "Labelled feedback on a policy's answers.",
           [({**ids(p), "outcome": o}, p[o]) for p in policies for o in ("correct", "wrong")])
    family("jointopt_accuracy_lower", "gauge",
           "Lower end of the anytime-valid confidence sequence of a policy's accuracy.",
           [(ids(p), p["accuracy_lower"]) for p in policies])
    family("jointopt_accuracy_upper", "gauge",
           "Upper end of the anytime-valid confidence sequence of a policy's accuracy.",
           [(ids(p), p["accuracy_upper"]) for p in policies])
    if snapshot.get("target") is not None:
        family("jointopt_accuracy_target", "gauge", "The accuracy the policy must keep.",
               [({}, float(snapshot["target"]))])
    family("jointopt_confidence_sequence_risk", "gauge",
           "Probability that a confidence sequence ever misses the true accuracy.",
           [({}, float(snapshot["risk"]))])
    family("jointopt_active_policy", "gauge", "1 for the policy that answers now.",
           [(ids(p), 1 if i == snapshot["active_index"] else 0)
            for i, p in enumerate(policies)])
    family("jointopt_policy_switches_total", "counter",
           "Switches to a safer certified policy after a confident violation.",
           [({}, snapshot["switches"])])
    family("jointopt_violation_alert", "gauge",
           "1 while the target is violated with confidence and no switch resolved it.",
           [({}, 1 if snapshot["alert"] else 0)])
    return "\n".join(lines) + "\n"
