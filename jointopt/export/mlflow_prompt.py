"""Registering the exported prompt in the MLflow prompt registry: the chat template in
MLflow's ``{{var}}`` format, sampling parameters as ``model_config``, the policy JSON as a
tag, and an alias pointing at the new version."""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING

from jointopt.core.policy import Policy
from jointopt.core.policy_file import jointopt_version
from jointopt.errors import ConfigError, JointoptError
from jointopt.export.messages import base_allocation, per_input_demos, placeholder_messages

if TYPE_CHECKING:
    from jointopt.search.plan import StudyPlan
    from jointopt.tasks import Task

__all__ = ["DEFAULT_ALIAS", "register_prompt"]

#: Alias set on the registered MLflow prompt version unless another is given.
DEFAULT_ALIAS = "champion"


def _prompt_name(study_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{study_name}-policy")


def register_prompt(policy: Policy, task: "Task", plan: "StudyPlan", served: str,
                    trial_number: int, alias: str, name: str | None,
                    summary: str) -> tuple[str, str]:
    """Register the policy's prompt and point ``alias`` at the new version; returns the
    ``prompts:/<name>/<version>`` URI and the tracking URI."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("MLflow is not installed", where="tracking",
                          fix="pip install 'jointopt[tracking]', or export without the "
                              "prompt registry") from None
    config = plan.config
    out = plan.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = config.tracking.tracking_uri or f"sqlite:///{(out / 'mlflow.db').as_posix()}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    messages, exact = placeholder_messages(policy, task)
    base = base_allocation(policy)
    policy_json = json.dumps(policy.to_dict(), ensure_ascii=False, sort_keys=True)
    metrics = policy.metadata.get("metrics", {})
    tags = {
        "jointopt.search.study": plan.study_name,
        "jointopt.trial": str(trial_number),
        "jointopt.strategy": policy.strategy_label,
        "jointopt.allocation": policy.describe()[:4000],
        "jointopt.template_exact": str(exact and not per_input_demos(policy)).lower(),
        "jointopt.dataset_hash": str(policy.metadata.get("provenance", {})
                                     .get("dataset_hash", "")),
        "jointopt.version": jointopt_version(),
    }
    for key in ("accuracy", "mean_tokens"):
        if metrics.get(key):
            m = metrics[key]
            tags[f"jointopt.{key}"] = f"{m['estimate']:.6g}"
            tags[f"jointopt.{key}_ci95"] = f"[{m['low']:.6g}, {m['high']:.6g}]"
    if len(policy_json) <= 90_000:
        tags["jointopt.core.policy"] = policy_json
    else:
        tags["jointopt.core.policy"] = "(too long for a tag; see the policy.yaml of the export)"
    k = None
    try:
        from jointopt.strategies import make_strategy

        k = make_strategy(base.strategy, dict(base.params)).pool_k()
    except JointoptError:
        pass
    model_config = {
        "provider": "openai-compatible",
        "model_name": served,
        "temperature": base.temperature,
        "max_tokens": base.max_tokens,
        "top_p": 1.0,
        "extra_params": {
            "n": k or 1,
            "strategy": base.strategy,
            "strategy_params": dict(base.params),
            "bins": {b: a.to_dict() for b, a in policy.bins.items()},
            "difficulty": policy.difficulty.to_dict(),
            "answer_regex": policy.prompt.answer_regex,
        },
    }
    prompt_name = name or _prompt_name(plan.study_name)
    version = client.register_prompt(name=prompt_name, template=messages,
                                      commit_message=summary, tags=tags,
                                      model_config=model_config)
    client.set_prompt_alias(prompt_name, alias, int(version.version))
    return f"prompts:/{prompt_name}/{version.version}", uri
