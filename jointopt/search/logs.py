"""Logging of a jointopt process (the CLI and the worker processes it starts)."""

from __future__ import annotations

import logging
import os

__all__ = ["setup_logging"]


def setup_logging(verbose: int) -> None:
    """Logging of a jointopt process (the CLI and its worker processes): levels, and the
    redaction of secrets in every log record, warning and traceback."""
    from jointopt.safety.secrets import install_log_redaction

    install_log_redaction()
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR" if verbose < 2 else "INFO")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for noisy in ("optuna", "mlflow", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # How the engine runs (dtype, threads) changes speed 5x: always say it.
    logging.getLogger("jointopt.engine").setLevel(min(level, logging.INFO))
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING if verbose < 2 else optuna.logging.INFO)
