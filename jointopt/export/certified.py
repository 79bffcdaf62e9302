"""``jointopt export --pick certified``: the trial ``jointopt certify`` certified, and the
certificate the exported policy file carries (``metadata.certificate``).

The certificate section holds what was promised and the evidence: target, risk, p-value
method, calibration size and dataset hash, the tested sequence with each p-value, and
``fallbacks``: the other certified policies, from the next safer one (more accurate on
dev, more expensive) on, each complete (prompt, difficulty, bins), so the serving monitor
(:mod:`jointopt.serving.monitor`) can switch to one without another file. The section is
optional: files without it read as before (same ``schema_version``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jointopt.core.policy import Policy
from jointopt.core.task_spec import task_spec
from jointopt.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from jointopt.search.plan import StudyPlan

__all__ = ["certified_trial", "certificate_section", "with_certificate"]


def _certificate(plan: "StudyPlan", study: "optuna.Study") -> dict[str, Any]:
    from jointopt.search.certify import study_certificate
    from jointopt.search.plan import task_hash

    cert = study_certificate(study)
    if cert is None:
        raise ConfigError("the study has no certificate", where="--pick certified",
                          fix=f"certify it first: jointopt certify CONFIG --target 0.9 "
                              f"--risk 0.05 (study {plan.study_name!r})")
    if plan.calibration_task is None or cert.get("dataset_hash") != task_hash(
            plan.calibration_task):
        raise ConfigError("the calibration data changed since the study was certified "
                          "(dataset hash differs)", where="validation.calibration_fraction",
                          value=cert.get("dataset_hash"),
                          fix="certify again with this config: jointopt certify CONFIG ...")
    return cert


def certified_trial(plan: "StudyPlan", study: "optuna.Study",
                    complete: Sequence["optuna.trial.FrozenTrial"]
                    ) -> "optuna.trial.FrozenTrial":
    """The certified trial of the study's certificate.

    Raises:
        ConfigError: no certificate, a certificate that certifies nothing, calibration
            data that changed since, or a certified trial that is gone.
    """
    cert = _certificate(plan, study)
    chosen = cert.get("chosen_trial")
    if chosen is None:
        closest = max(cert.get("tested", ()), key=lambda t: t.get("lower_bound", 0.0),
                      default=None)
        near = (f"; the closest, trial {closest['trial']}, is certified down to "
                f"{closest['lower_bound']:.3f}" if closest else "")
        raise ConfigError(f"the certificate certifies no policy at accuracy >= "
                          f"{cert.get('target')} and risk {cert.get('risk')}{near}",
                          where="--pick certified",
                          fix="certify with a lower --target or a higher --risk, or pick "
                              "another rule")
    found = next((t for t in complete if t.number == chosen), None)
    if found is None:
        raise ConfigError("the certified trial is not a complete trial of the study",
                          where="--pick certified", value=chosen,
                          fix="certify again: jointopt certify CONFIG ...")
    return found


def certificate_section(plan: "StudyPlan", study: "optuna.Study") -> dict[str, Any]:
    """The ``metadata.certificate`` of the certified policy, with its fallbacks."""
    cert = _certificate(plan, study)
    certified = [t for t in cert.get("tested", ()) if t.get("certified")]
    safer = [t for t in certified if t["trial"] != cert.get("chosen_trial")]
    fallbacks = []
    for test in reversed(safer):  # the next safer first
        data = study.trials[int(test["trial"])].user_attrs.get("policy")
        if not data:
            continue
        policy = {k: data[k] for k in ("model", "prompt", "difficulty", "bins") if k in data}
        fallbacks.append({"trial": test["trial"], "mean_tokens": test["mean_tokens"],
                          "dev_accuracy": test["dev_accuracy"],
                          "p_value": test["p_value"], "policy": policy})
    keep = {k: v for k, v in cert.items() if k != "candidates"}
    return {**keep, "fallbacks": fallbacks}


def _shots(prompts: Sequence[Any]) -> Any:
    """What :func:`task_spec` needs to keep the demos of every prompt."""
    if any(getattr(p, "shot_selection", "first") != "first" for p in prompts):
        return next(p for p in prompts if getattr(p, "shot_selection", "first") != "first")
    return max(p.shots for p in prompts)


def with_certificate(policy: Policy, plan: "StudyPlan", section: Mapping[str, Any]) -> Policy:
    """``policy`` with ``metadata.certificate``, and a task section whose demos serve the
    fallbacks' prompts too."""
    from jointopt.core.prompts import PromptTemplate

    prompts = [policy.prompt] + [PromptTemplate.from_dict(f["policy"]["prompt"])
                                 for f in section.get("fallbacks", ())]
    metadata = dict(policy.metadata)
    metadata["task"] = task_spec(plan.task, _shots(prompts))
    metadata["certificate"] = dict(section)
    return Policy(model=policy.model, prompt=policy.prompt, bins=policy.bins,
                  difficulty=policy.difficulty, schema_version=policy.schema_version,
                  metadata=metadata)
