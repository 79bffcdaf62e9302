"""The instruction candidates of every predictor of a DSPy program: its own
instruction, the search space's texts and LM-proposed ones."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jointopt.backends.base import Backend
from jointopt.integrations.token_meter import TokenMeter
from jointopt.errors import ConfigError, JointoptError, relocate
from jointopt.integrations.proposals import propose_instructions
from jointopt.search.dspy_program.program import InstructionCandidate
from jointopt.search.dspy_program.space import _Space
from jointopt.tasks import AnswerExtractor, AnswerMatcher, Example, Task

log = logging.getLogger(__name__)

_SAMPLING_CONFIG = ("temperature", "max_tokens", "n", "num_generations", "rollout_id", "seed",
                    "top_p")
_ORIGINAL = "original"

def _check_predictors(named: Sequence[tuple[str, Any]]) -> None:
    if not named:
        raise ConfigError("the program has no predictors to tune", where="program",
                          fix="pass a dspy.Module built from dspy.Predict / ChainOfThought ...")
    for name, predictor in named:
        if predictor.lm is not None:
            raise ConfigError(
                "a predictor has its own LM, which would bypass the backend being tuned",
                where=f"program.{name}.lm", value=getattr(predictor.lm, "model", "?"),
                fix="remove the predictor's LM (predictor.lm = None) before optimizing")
        clash = sorted(set(predictor.config) & set(_SAMPLING_CONFIG))
        if clash:
            raise ConfigError(
                "a predictor fixes sampling settings that the search sets per trial",
                where=f"program.{name}.config", value={k: predictor.config[k] for k in clash},
                fix="drop these keys from the predictor's config (the search chooses them)")


def _predictor_task(name: str, predictor: Any, trainset: Sequence[Any]) -> Task:
    """A jointopt Task describing one predictor, for the instruction proposer."""
    sig = predictor.signature
    inputs, outputs = list(sig.input_fields), list(sig.output_fields)

    def describe(fields: Mapping[str, Any]) -> str:
        out = []
        for fname, info in fields.items():
            desc = (info.json_schema_extra or {}).get("desc", "")
            shown = "" if not desc or desc.startswith("${") else f" ({desc})"
            out.append(f"`{fname}`{shown}")
        return ", ".join(out)

    description = (f"{sig.instructions.strip()}\nInputs: {describe(sig.input_fields)}. "
                   f"Outputs: {describe(sig.output_fields)}.")
    demos, seen = [], set()
    for i, ex in enumerate(trainset):
        labels = [o for o in outputs if o in ex and ex[o] is not None]
        if not labels or any(f not in ex for f in inputs):
            continue
        values = {f: str(ex[f]) for f in inputs}
        key = tuple(sorted(values.items()))
        if key in seen:
            continue
        seen.add(key)
        target = str(ex[labels[0]]) if len(labels) == 1 else "; ".join(
            f"{o}: {ex[o]}" for o in labels)
        demos.append(Example(id=f"train-{i:04d}", inputs=values, target=target))
    return Task(name=f"dspy_{re.sub(r'[^A-Za-z0-9_]', '_', name)}", description=description,
                fields=tuple(inputs), examples=(), demos=tuple(demos),
                extractor=AnswerExtractor("first_line"), matcher=AnswerMatcher("normalized"))


def _candidates(named: Sequence[tuple[str, Any]], space: _Space, trainset: Sequence[Any],
                proposer: Backend, cache_path: Path, meter: TokenMeter,
                ) -> dict[str, tuple[InstructionCandidate, ...]]:
    out: dict[str, tuple[InstructionCandidate, ...]] = {}
    for name, predictor in named:
        found: list[InstructionCandidate] = [
            InstructionCandidate(_ORIGINAL, predictor.signature.instructions, "program")]
        for cid, text in space.literal:
            found.append(InstructionCandidate(cid, text, "space"))
        for spec in space.proposals:
            task = _predictor_task(name, predictor, trainset)
            try:
                proposals = propose_instructions(
                    task, proposer, spec.k, n_examples=spec.n_examples, seed=spec.seed,
                    cache_path=cache_path, meter=meter, temperature=spec.temperature,
                    max_tokens=spec.max_tokens, id_prefix=spec.id_prefix)
            except JointoptError as exc:
                raise relocate(exc, f"instructions of predictor {name!r}: propose.") from None
            found += [InstructionCandidate(t.id, text, "proposed")
                      for t, text in zip(proposals.templates, proposals.instructions)]
        unique: dict[str, InstructionCandidate] = {}
        texts: set[str] = set()
        for cand in found:
            if cand.id in unique:
                raise ConfigError("duplicate instruction candidate id", where=f"predictor {name!r}",
                                  value=cand.id, fix="set propose.id_prefix or rename the prompt")
            if cand.text.strip() in texts:
                log.info("predictor %s: candidate %s repeats an earlier text; skipped", name, cand.id)
                continue
            texts.add(cand.text.strip())
            unique[cand.id] = cand
        out[name] = tuple(unique.values())
    return out

