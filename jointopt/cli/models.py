"""``jointopt models``: prepare and list the embedded models.

    jointopt models list
    jointopt models prepare qwen2.5-coder-0.5b-instruct [--force] [--wheels DIR]

The same commands as ``python -m jointopt.backends.models``; a study whose config names an
embedded model that is not prepared yet prepares it when its engine starts.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_models_parser", "run_models"]


def add_models_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``models`` command to the ``jointopt`` sub-command parsers."""
    from jointopt.backends.model_commands import add_model_commands

    models = subparsers.add_parser(
        "models", help="prepare or list the embedded models (GGUF from PyPI -> vLLM folder)",
        description="Embedded models come from PyPI packages as GGUF files; `prepare` "
                    "converts one once into a folder vLLM loads (idempotent).")
    add_model_commands(models)
    return models


def run_models(args: argparse.Namespace) -> int:
    """Run ``jointopt models ...``; errors propagate as JointoptError (exit code 2)."""
    from jointopt.backends.model_commands import run_model_command

    return run_model_command(args)
