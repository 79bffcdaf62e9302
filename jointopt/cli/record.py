"""``jointopt record``: write a sample bank for offline (replayed) studies.

    jointopt record CONFIG --samples N --out bank.npz

Loads and validates the study config, builds the configured engine behind the study's
sample store (``<output_dir>/samples.sqlite``, as ``jointopt run`` does, so samples the
study already generated are reused, not drawn again) and records every pool of the
search space: N samples per prompt x example x temperature x max_tokens. The bank is
then replayed with ``model: {backend: replay, bank: bank.npz}``; the file format is in
``docs/bank_format.md``.

Wiring (in :mod:`jointopt.cli.app`)::

    from .cli_record import add_record_parser, run_record
    add_record_parser(sub)                 # in _parser()
    if args.command == "record":           # in main()
        return run_record(args)
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jointopt.backends import Backend
    from jointopt.search.config import StudyConfig

__all__ = ["add_record_parser", "run_record", "build_backend"]


def add_record_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``record`` command to the ``jointopt`` sub-command parsers."""
    record = subparsers.add_parser(
        "record", help="record a sample bank (N samples per prompt x example x setting)",
        description="Record every sample pool of a study's search space to a bank "
                    "that `model: {backend: replay, bank: FILE}` replays offline.")
    record.add_argument("config", help="study YAML file")
    record.add_argument("--samples", type=int, default=None, metavar="N",
                        help="samples per pool at temperature > 0 (greedy pools hold one); "
                             "default: what the study draws at most, max(bank.pool_size, "
                             "largest n)")
    record.add_argument("--out", required=True, metavar="FILE",
                        help="bank file to write (columnar .npz; version-1 JSONL when it ends "
                             "in .jsonl; replaced atomically when complete)")
    record.add_argument("--output-dir",
                        help="the study's output dir, whose samples.sqlite is reused "
                             "(default: the config's output_dir or runs/<name>)")
    record.add_argument("--model", metavar="NAME",
                        help="with `models:` in the config, the model to record (one bank per "
                             "model; replay them with one `backend: replay` entry each)")
    record.add_argument("--batch-samples", type=int, default=None, metavar="M",
                        help="samples per engine call, at most (whole settings are batched)")
    return record


def build_backend(config: "StudyConfig") -> "Backend":
    """The config's engine, built exactly as a study builds it
    (:func:`jointopt.search.objective.build_backend`; no sample store in front)."""
    from jointopt.search.objective import build_backend as study_backend

    return study_backend(config)


def _one_model(config: "StudyConfig", name: str | None) -> "StudyConfig":
    """The config reduced to the model a bank is recorded for (``--model`` among
    ``models:``)."""
    from jointopt.errors import ConfigError
    from jointopt.search.multi_model import entry_config

    labels = [m.label for m in config.models]
    if name is None:
        if len(labels) > 1:
            raise ConfigError("the study has several models; a bank holds one",
                              where="--model", value=labels,
                              fix=f"record one bank per model: --model {labels[0]} ...")
        return config
    if name not in labels:
        from jointopt._registry import did_you_mean

        raise ConfigError("no such model in the study's `models:`", where="--model", value=name,
                          fix=f"{did_you_mean(name, labels)}choose one of: "
                              f"{', '.join(labels) or '(the config has no models: list)'}")
    return entry_config(config, config.models[labels.index(name)])


def run_record(args: argparse.Namespace) -> int:
    """Run ``jointopt record``; returns the exit code (errors propagate as JointoptError)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from jointopt.backends import CachedBackend, SampleStore
    from jointopt.search.config import load_config
    from jointopt.search.record import DEFAULT_BATCH_SAMPLES, check_recording, record_bank, samples_needed
    from jointopt.search.plan_checks import check_credentials
    from jointopt.search.plan import plan_study

    overrides: dict[str, Any] = {"tracking": {"enabled": False}}
    if getattr(args, "output_dir", None):
        overrides["output_dir"] = args.output_dir
    console = Console()
    config = _one_model(load_config(args.config, overrides), getattr(args, "model", None))
    plan = plan_study(config)  # every check before the engine loads
    needed = samples_needed(plan)
    samples = args.samples if args.samples is not None else needed
    batch_samples = args.batch_samples if args.batch_samples is not None else DEFAULT_BATCH_SAMPLES
    check_recording(plan, samples, batch_samples)  # bad --samples / ranges: before the engine
    check_credentials(config)
    from jointopt.search.preflight import check_folder, check_model_available, check_new_file

    check_folder(plan.out_dir, "--output-dir (output_dir)" if getattr(args, "output_dir", None)
                 else "output_dir", "output folder")
    check_new_file(args.out, "--out", "bank file")
    check_model_available(config)  # before the engine loads
    examples = len(plan.task.examples) + len(plan.test_task.examples if plan.test_task else ())
    console.print(f"recording [bold]{plan.study_name}[/bold]: {len(plan.space.prompts)} "
                  f"prompts x {examples} examples of {plan.task.name}, "
                  f"{samples} samples per pool, model {plan.model}")
    if samples < needed:
        console.print(f"[yellow]warning[/yellow]: the study draws up to {needed} samples per "
                      f"pool; trials needing more than {samples} cannot be replayed "
                      f"(use --samples {needed})")
    engine = build_backend(config)
    backend = engine
    store = None
    try:
        if config.cache:
            store = SampleStore(plan.out_dir / "samples.sqlite")
            backend = CachedBackend(engine, store)
        progress = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), console=console)
        with progress:
            bar = progress.add_task("pools", total=None)

            def on_progress(done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total)

            summary = record_bank(
                plan, backend, samples=samples, out=args.out, progress=on_progress,
                batch_samples=batch_samples)
    finally:
        engine.close()
        if store is not None:
            store.close()
    size = summary.path.stat().st_size
    console.print(
        f"wrote {summary.path} ({size / 1e6:.1f} MB): {summary.pools} pools "
        f"({summary.settings} settings x {summary.examples} examples), "
        f"{summary.samples} samples ({summary.generated} generated, {summary.cached} reused"
        f"{f' from {store.path}' if store is not None else ''}), "
        f"{summary.engine_calls} engine call(s), {summary.wall_time:.1f}s")
    console.print(f"replay it with: model: {{backend: replay, bank: {summary.path}}} "
                  "(search only the parallel strategies: single, majority, best_of_n, "
                  "weighted_vote)")
    return 0
