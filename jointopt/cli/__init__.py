"""The command line: one module per command (``jointopt <command>``)."""

from jointopt.cli.app import main

__all__ = ["main"]
