"""``jointopt bank``: bring recorded generations in, and look at a bank.

    jointopt bank import TABLE --out my.bank.npz [--column ROLE=NAME ...]
    jointopt bank convert FORMAT FILE --out my.bank.npz   (lm-eval, openai-batch, v1)
    jointopt bank info my.bank.npz

``import`` writes the bank plus ``<stem>.examples.jsonl``, ``<stem>.space.yaml`` and
``<stem>.study.yaml`` next to it; then ``jointopt validate <stem>.study.yaml`` and
``jointopt run <stem>.study.yaml`` optimise over it offline.

Wiring (in :mod:`jointopt.cli.app`): ``add_bank_parser(sub)`` in ``_parser()``, and
``run_bank(args)`` for ``args.command == "bank"``.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_bank_parser", "run_bank"]


def _role(text: str) -> tuple[str, str]:
    from jointopt.banks.rows import ROLES

    role, sep, name = text.partition("=")
    if not sep or not name or role not in ROLES:
        raise argparse.ArgumentTypeError(
            f"expected ROLE=COLUMN with ROLE one of {', '.join(ROLES)}, got {text!r}")
    return role, name


def _table_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="bank file to write (.npz); the study files go next to it")
    parser.add_argument("--column", type=_role, action="append", default=[],
                        metavar="ROLE=NAME", help="the table's column for a role (repeat)")
    parser.add_argument("--dataset", metavar="FILE", help="examples file (JSONL/CSV)")
    parser.add_argument("--dataset-id-field", default="id")
    parser.add_argument("--dataset-target-field", default="answer")
    parser.add_argument("--dataset-input-field", action="append", dest="dataset_input_fields",
                        metavar="NAME", help="input field of the dataset (repeat; default all)")
    parser.add_argument("--dataset-difficulty-field", default="difficulty")
    parser.add_argument("--input-column", action="append", default=[], dest="input_columns",
                        metavar="NAME", help="an example input held in the table (repeat)")
    parser.add_argument("--target-column", metavar="NAME",
                        help="the examples' reference answer in the table")
    parser.add_argument("--difficulty-column", metavar="NAME",
                        help="the examples' difficulty label in the table")
    parser.add_argument("--prompts", metavar="FILE",
                        help="YAML/JSON list of prompt templates ({id, user, system})")
    parser.add_argument("--model", help="model name (default: the model column)")
    parser.add_argument("--task", default="imported", help="task name")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="temperature of rows without one (default 1.0)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="max_tokens of rows without one (default: largest "
                             "completion_tokens seen)")
    parser.add_argument("--extractor", default="first_line",
                        help="how answers are read from `text` (first_line, last_number, "
                             "choice_letter, exact)")
    parser.add_argument("--matcher", default="normalized",
                        help="how answers are compared with targets (normalized, exact, "
                             "numeric, words)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="held-out share of the study (stratified by difficulty label)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    parser.add_argument("--n-trials", type=int, default=50, help="trials of the study")
    parser.add_argument("--max-n", type=int, default=16,
                        help="largest n of the study's voting strategies")


def add_bank_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bank import`` / ``bank convert`` / ``bank info`` to the sub-command parsers."""
    bank = subparsers.add_parser("bank", help="import recorded generations; inspect a bank",
                                 description=__doc__.split("\n")[0])
    sub = bank.add_subparsers(dest="bank_command", required=True)
    imp = sub.add_parser("import", help="a JSONL/CSV/Parquet table -> bank + study",
                         description="One row per sample (example_id, prompt_id, answer or "
                                     "text, correct, completion_tokens, ...) or per pool "
                                     "(counts, correct, completion_tokens). See "
                                     "docs/bank_format.md.")
    imp.add_argument("table", help="the table file")
    imp.add_argument("--format", choices=["jsonl", "csv", "parquet"], default=None)
    _table_options(imp)
    conv = sub.add_parser("convert", help="another tool's log -> bank + study",
                          description="lm-eval: lm-evaluation-harness --log_samples JSONL; "
                                      "openai-batch: Batch API output file (with --input); "
                                      "v1: a jointopt JSONL bank.")
    conv.add_argument("kind", choices=["lm-eval", "openai-batch", "v1"])
    conv.add_argument("file", help="the file to convert")
    conv.add_argument("--input", dest="batch_input", metavar="FILE",
                      help="openai-batch: the batch input file (custom ids -> requests)")
    _table_options(conv)
    info = sub.add_parser("info", help="what a bank holds")
    info.add_argument("bank", help="bank file (.npz or v1 .jsonl)")
    return bank


def _options(args: argparse.Namespace) -> Any:
    from jointopt.banks.importer import ImportOptions

    return ImportOptions(
        columns=dict(args.column), format=getattr(args, "format", None), dataset=args.dataset,
        dataset_id_field=args.dataset_id_field, dataset_target_field=args.dataset_target_field,
        dataset_input_fields=args.dataset_input_fields,
        dataset_difficulty_field=args.dataset_difficulty_field,
        input_columns=tuple(args.input_columns), target_column=args.target_column,
        difficulty_column=args.difficulty_column, prompts=args.prompts, model=args.model,
        task=args.task, temperature=args.temperature, max_tokens=args.max_tokens,
        extractor=args.extractor, matcher=args.matcher, test_fraction=args.test_fraction,
        seed=args.seed, n_trials=args.n_trials, max_n=args.max_n)


def run_bank(args: argparse.Namespace) -> int:
    """Run ``jointopt bank ...``; returns the exit code (errors propagate)."""
    import time

    from rich.console import Console

    console = Console()
    if args.bank_command == "info":
        return _info(console, args.bank)
    from jointopt.banks.importer import import_bank

    start = time.perf_counter()
    if args.bank_command == "import":
        result = import_bank(args.table, args.out, _options(args))
    else:
        from jointopt.banks.convert import convert

        result = convert(args.kind, args.file, args.out, _options(args),
                         batch_input=args.batch_input)
        if args.kind == "v1":
            console.print(f"wrote {result.bank}: {result.pools} pools, {result.samples} "
                          "samples, as recorded; point the study's model.bank at it")
            return 0
    size = result.bank.stat().st_size
    console.print(
        f"wrote {result.bank} ({size / 1e6:.2f} MB) in {time.perf_counter() - start:.1f}s: "
        f"{result.pools} pools ({len(result.prompts)} prompts x {result.examples} examples x "
        f"{len(result.settings)} settings), {result.samples} samples"
        f"{' as answer histograms' if result.histogram else ''}")
    for note in result.notes:
        console.print(f"[yellow]note[/yellow]: {note}")
    console.print(f"study: {result.study} (space {result.space.name}, examples "
                  f"{result.examples_file.name}); the held-out split is drawn when the study "
                  "runs: validation.test_fraction of the examples, stratified by difficulty "
                  "label, seeded by validation.seed")
    console.print(f"next: jointopt validate {result.study} && jointopt run {result.study}")
    return 0


def _info(console: Any, path: str) -> int:
    from jointopt.backends.bank_loader import load_bank

    bank = load_bank(path)
    h = bank.header
    console.print(f"{path}: version {h.get('version')}, model {h.get('model')!r}, task "
                  f"{h.get('task')!r}, {h.get('examples')} examples, {len(bank.pools)} pools")
    console.print(f"prompts {sorted(bank.prompt_ids)}, temperatures "
                  f"{sorted(bank.temperatures)}, max_tokens {sorted(bank.max_tokens)}, "
                  f"samples per pool up to {getattr(bank, 'samples', h.get('samples'))}")
    return 0
