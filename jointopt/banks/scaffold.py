"""The files next to an imported bank that make it a study: examples, search space, config."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from jointopt.core.prompts import UNRECORDED_PROMPT
from jointopt.tasks import Example
from jointopt.tasks.loaders import load_examples

if TYPE_CHECKING:
    from jointopt.banks.importer import ImportOptions

__all__ = ["StudyFiles", "write_study"]


@dataclass(frozen=True)
class StudyFiles:
    """Paths written, and the examples as the study loads them back."""

    study: Path
    space: Path
    examples_file: Path
    examples: tuple[Example, ...]


def _strategies(pool_size: int, max_n: int, has_logprobs: bool) -> dict[str, Any]:
    high = max(1, min(pool_size, max_n))
    n = {"low": 1, "high": high} if high > 1 else {"choices": [1]}
    out: dict[str, Any] = {"single": {}, "majority": {"n": n},
                           "best_of_n": {"n": n, "scorer": {"choices": ["logprob"]}}}
    if has_logprobs:
        out["weighted_vote"] = {"n": n}
    return out


def write_study(out: Path, options: "ImportOptions", examples: Mapping[str, Example],
                prompt_ids: Sequence[str], prompts: Mapping[str, Mapping] | None,
                settings: Sequence[tuple[float, int]], pool_size: int, *,
                has_logprobs: bool) -> StudyFiles:
    """Write ``<stem>.examples.jsonl``, ``<stem>.space.yaml`` and ``<stem>.study.yaml``."""
    stem = out.name.split(".")[0] or "bank"
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    examples_file = folder / f"{stem}.examples.jsonl"
    space_file = folder / f"{stem}.space.yaml"
    study_file = folder / f"{stem}.study.yaml"
    fields = list(next(iter(examples.values())).inputs) if examples else ["input"]
    labelled = any(e.difficulty is not None for e in examples.values())
    with examples_file.open("w", encoding="utf-8") as fh:
        for e in examples.values():
            row = {"id": e.id, **dict(e.inputs), "target": e.target}
            if labelled:
                row["difficulty"] = e.difficulty
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    loaded = load_examples(examples_file, input_fields=fields, target_field="target",
                           id_field="id", difficulty_field="difficulty" if labelled else None)
    templates = [dict(prompts[p]) if prompts else
                 {"id": p, "user": UNRECORDED_PROMPT,
                  "description": "imported without its text; write it here before export"}
                 for p in prompt_ids]
    space = {"prompts": templates,
             "strategies": _strategies(pool_size, options.max_n, has_logprobs),
             "temperature": {"choices": sorted({t for t, _ in settings})},
             "max_tokens": {"choices": sorted({m for _, m in settings})}}
    space_file.write_text(yaml.safe_dump(space, sort_keys=False), encoding="utf-8")
    dataset: dict[str, Any] = {
        "path": examples_file.name, "name": options.task, "id_field": "id",
        "target_field": "target", "input_fields": fields,
        "difficulty_field": "difficulty" if labelled else None,
        "extractor": {"kind": options.extractor}, "matcher": {"kind": options.matcher}}
    study = {
        "name": re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "imported",
        "description": f"replays the bank {out.name} (written by jointopt bank import)",
        "model": {"backend": "replay", "bank": out.name},
        "task": {"dataset": dataset},
        "search_space": space_file.name,
        "optimizer": {"n_trials": options.n_trials},
        "validation": {"test_fraction": options.test_fraction, "seed": options.seed},
        "tracking": {"enabled": False},
    }
    study_file.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    return StudyFiles(study=study_file, space=space_file, examples_file=examples_file,
                      examples=tuple(loaded))
