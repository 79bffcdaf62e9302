"""Export a tuned policy from a study to the serving stack.

:func:`export_policy` picks one trial of a study (by number, or by a rule on the
Pareto front, :mod:`jointopt.export.pick`), measures it honestly (bootstrap 95% confidence
intervals over the study's own per-example outcomes) and runs every registered exporter
(:data:`jointopt._registry.EXPORTERS`), which write, into one folder:

=========================  ==============================================================
``policy.yaml``            the versioned policy file (:mod:`jointopt.core.policy_file`): what
                           ``jointopt serve`` and :func:`jointopt.serving.runtime.load_policy` run
``vllm_serve.yaml``        a ``vllm serve --config`` file (:mod:`jointopt.export.vllm`)
``vllm_serve.env``         CPU only: the environment the CPU engine needs
``generation_config.json`` the JSON for ``--override-generation-config``
``openai_presets.json``    per difficulty bin: the OpenAI request and how its choices are
                           aggregated (:mod:`jointopt.export.openai_presets`)
``dspy_program.json``      a ``dspy.Predict`` state (:mod:`jointopt.export.dspy_program`)
``EXPORT.md``              what each file is, how to start the stack, and what does not
                           carry over to DSPy or plain OpenAI requests
=========================  ==============================================================

and registers the prompt in the MLflow prompt registry (:mod:`jointopt.export.mlflow_prompt`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jointopt._registry import EXPORTERS
from jointopt.core.policy import Policy
from jointopt.core.policy_file import jointopt_version
from jointopt.core.task_spec import task_spec
from jointopt.errors import ConfigError, JointoptError
from jointopt.export.base import ExportContext, ExportSkipped
from jointopt.export.certified import certificate_section, with_certificate
from jointopt.export.messages import served_name
from jointopt.export.mlflow_prompt import DEFAULT_ALIAS, register_prompt as _register_prompt
from jointopt.evaluation.stats import Interval
from jointopt.export.pick import Pick
from jointopt.export.readme import readme
from jointopt.export.trials import as_plan, choose_trial, load_study, measure, safe_storage

if TYPE_CHECKING:
    from jointopt.search.config import StudyConfig
    from jointopt.search.plan import StudyPlan

__all__ = ["ExportResult", "export_policy"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_policy` wrote.

    Attributes:
        out_dir: the export folder.
        trial_number: the exported trial.
        pick: the rule used (``trial`` when a number was given).
        policy: the exported policy (with its metadata).
        files: name -> path of every file written.
        accuracy, mean_tokens: measured values with bootstrap intervals (None when the
            trial has no per-example records).
        prompt_uri: ``prompts:/<name>/<version>`` in the MLflow registry, or None.
        prompt_alias: the alias set on that version, or None.
        warnings: things the user should know (e.g. a dataset that changed since).
    """

    out_dir: Path
    trial_number: int
    pick: str
    policy: Policy
    files: Mapping[str, Path]
    accuracy: Interval | None = None
    mean_tokens: Interval | None = None
    prompt_uri: str | None = None
    prompt_alias: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _serving_names(policy: Policy, device: str, warnings: list[str]) -> tuple[str, str, bool]:
    """The model folder, the served model name and whether the vLLM files are for CPU."""
    from jointopt.backends.models import resolve_model

    try:
        model_path = resolve_model(policy.model)
    except JointoptError as exc:
        warnings.append(f"the model could not be resolved here ({exc.message}); "
                        "vllm_serve.yaml names it as written")
        model_path = policy.model
    served = served_name(policy.model)
    if device == "auto":
        try:
            from jointopt.backends.vllm_env import is_cpu_platform

            on_cpu = is_cpu_platform()
        except Exception:  # noqa: BLE001 - helper optional
            on_cpu = True
    else:
        on_cpu = device == "cpu"
    return model_path, served, on_cpu


def _provenance(plan: "StudyPlan", trial_number: int, dataset_hash: str | None,
                matches: bool | None, pick_used: str, budget: float | None) -> dict[str, Any]:
    """Where the exported policy comes from (the policy file's ``metadata.provenance``)."""
    return {
        "study_name": plan.study_name,
        "storage": safe_storage(plan.storage),
        "trial_number": trial_number,
        "dataset_hash": dataset_hash,
        "dataset_hash_matches": matches,
        "jointopt_version": jointopt_version(),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pick": pick_used,
        "budget": float(budget) if pick_used == "budget" and budget is not None else None,
    }


def _with_metadata(policy: Policy, plan: "StudyPlan", metrics: dict[str, Any], provenance:
                   dict[str, Any], served: str, model_path: str, study: Any) -> Policy:
    """The policy with the export's metadata (task, metrics, provenance, serving, notes;
    and the study's certificate with its fallbacks for ``pick="certified"``)."""
    notes = {k: v for k, v in policy.metadata.items()
             if k not in ("task", "metrics", "provenance", "serving", "certificate")}
    metadata = {
        "task": task_spec(plan.task, policy.prompt),
        "metrics": metrics,
        "provenance": provenance,
        "serving": {"served_model_name": served, "model_path": model_path,
                    "max_input_chars": plan.config.optimizer.max_input_chars},
    }
    if notes:
        metadata["notes"] = {**notes.get("notes", {}), **{k: v for k, v in notes.items()
                                                         if k != "notes"}}
    exported = Policy(model=policy.model, prompt=policy.prompt, bins=policy.bins,
                      difficulty=policy.difficulty, schema_version=policy.schema_version,
                      metadata=metadata)
    if provenance.get("pick") != "certified":
        return exported
    return with_certificate(exported, plan, certificate_section(plan, study))


def _targets(targets: Sequence[str] | None) -> list[str]:
    """The export targets to run: every registered one by default, else the policy file
    and the given names or ``package.module:Class`` paths (each checked now, before any
    work)."""
    names = EXPORTERS.names() if targets is None else \
        ["policy", *(t for t in dict.fromkeys(targets) if t != "policy")]
    for name in names:
        EXPORTERS.load(name, where="targets")
    return names


def _write_targets(context: ExportContext, names: list[str], warnings: list[str]
                   ) -> dict[str, Path]:
    """Run the exporters in order; a skipped one adds a warning."""
    files: dict[str, Path] = {}
    for name in names:
        try:
            files.update(EXPORTERS.create(name, where="targets").write(context))
        except ExportSkipped as skipped:
            warnings.append(str(skipped))
    return files


def _register(context: ExportContext, trial_number: int, pick_used: str, alias: str,
              prompt_name: str | None, acc_ci: Interval | None,
              tok_ci: Interval | None) -> str:
    """Register the prompt in MLflow; its ``prompts:/<name>/<version>`` URI."""
    policy, plan = context.policy, context.plan
    summary = (f"jointopt export of study {plan.study_name} trial {trial_number} "
               f"({pick_used}): {policy.describe()}"
               + (f"; accuracy {acc_ci}, mean tokens {tok_ci}" if acc_ci else ""))
    try:
        prompt_uri, _ = _register_prompt(policy, context.task, plan, context.served_model_name,
                                         trial_number, alias, prompt_name, summary)
    except JointoptError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds
        raise ConfigError(f"registering the prompt in MLflow failed: "
                          f"{type(exc).__name__}: {exc}", where="tracking",
                          fix="check tracking.tracking_uri, or pass register_prompt=False"
                          ) from exc
    return prompt_uri


def with_prompt_text(policy: Policy, plan: "StudyPlan") -> Policy:
    """The policy with its prompt's text: a bank imported without prompt texts leaves
    only the id; the text then comes from the search space, once written there."""
    import dataclasses

    from jointopt.core.prompts import UNRECORDED_PROMPT

    if policy.prompt.user != UNRECORDED_PROMPT:
        return policy
    for template in plan.space.prompts:
        if template.id == policy.prompt.id and template.user != UNRECORDED_PROMPT:
            return dataclasses.replace(policy, prompt=template)
    raise ConfigError(
        f"prompt {policy.prompt.id!r} has no text: the bank was imported without prompt "
        "texts, and a policy cannot be served without its prompt",
        where=f"{plan.config.search_space}: prompts.{policy.prompt.id}",
        value=policy.prompt.id,
        fix=f"write the text of prompt {policy.prompt.id!r} into the search space (its "
            "`user` field, and `system` if any), then export again")


def export_policy(
    config_or_plan: "StudyConfig | StudyPlan | str | Path",
    *,
    trial: int | None = None,
    pick: Pick | str = "knee",
    budget: float | None = None,
    out_dir: str | Path,
    mlflow_alias: str | None = None,
    register_prompt: bool | None = None,
    prompt_name: str | None = None,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    device: Literal["auto", "cpu", "gpu"] = "auto",
    targets: Sequence[str] | None = None,
) -> ExportResult:
    """Export one trial of a study as a policy file plus serving-stack configs.

    Args:
        config_or_plan: the study config (path or :class:`StudyConfig`) or its plan.
        trial: export this trial number (overrides ``pick``).
        pick: ``knee``, ``max_accuracy``, ``min_tokens``, ``budget`` or ``certified``.
        budget: mean-token budget per input for ``pick="budget"``.
        out_dir: folder to write into (created).
        mlflow_alias: alias for the registered prompt version (default ``champion``).
        register_prompt: register in MLflow; default: when the config's tracking is on or
            an alias is given.
        prompt_name: registry name (default ``<study>-policy``).
        n_bootstrap, confidence, seed: the bootstrap of the confidence intervals.
        device: the serving device the vLLM files are for (``auto``: this machine's).
        targets: targets besides the policy file (names or ``module:Class``); default all.

    Raises:
        ConfigError: no study or no complete trial, an unknown trial number, a bad pick
            rule or budget, or a policy that fails validation.
    """
    from jointopt.search.preflight import check_folder

    check_folder(out_dir, "out_dir", "export folder")
    names = _targets(targets)
    plan = as_plan(config_or_plan)
    study = load_study(plan)
    warnings: list[str] = []
    chosen, pick_used = choose_trial(plan, study, trial, pick, budget, warnings)
    policy = with_prompt_text(Policy.from_dict(chosen.user_attrs["policy"]), plan)

    dataset_hash = chosen.user_attrs.get("dataset_hash")
    matches = None if dataset_hash is None else dataset_hash == plan.task_hash
    if matches is False:
        warnings.append("the study's data changed since this trial ran (dataset hash differs); "
                        "the measured numbers refer to the data of the trial")
    metrics, acc_ci, tok_ci = measure(plan, study, chosen, policy, matches, warnings,
                                      n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    model_path, served, on_cpu = _serving_names(policy, device, warnings)
    provenance = _provenance(plan, chosen.number, dataset_hash, matches, pick_used, budget)
    policy = _with_metadata(policy, plan, metrics, provenance, served, model_path, study)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    context = ExportContext(policy=policy, plan=plan, task=plan.task, out_dir=out,
                            served_model_name=served, model_path=model_path, on_cpu=on_cpu)
    files = _write_targets(context, names, warnings)

    prompt_uri = alias = None
    wanted = register_prompt if register_prompt is not None else (
        plan.config.tracking.enabled or mlflow_alias is not None)
    if wanted:
        alias = mlflow_alias or DEFAULT_ALIAS
        prompt_uri = _register(context, chosen.number, pick_used, alias, prompt_name,
                               acc_ci, tok_ci)

    files["readme"] = out / "EXPORT.md"
    files["readme"].write_text(readme(policy, plan, files, served, on_cpu, metrics,
                                      chosen.number, pick_used, prompt_uri, alias), "utf-8")
    for warning in warnings:
        log.warning("export: %s", warning)
    log.info("exported trial %d of %s to %s", chosen.number, plan.study_name, out)
    return ExportResult(out_dir=out, trial_number=chosen.number, pick=pick_used, policy=policy,
                        files=files, accuracy=acc_ci, mean_tokens=tok_ci, prompt_uri=prompt_uri,
                        prompt_alias=alias if prompt_uri else None, warnings=tuple(warnings))
