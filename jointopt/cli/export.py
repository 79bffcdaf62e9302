"""``jointopt export`` and ``jointopt serve``: parsers and handlers for the main CLI.

The main CLI (:mod:`jointopt.cli.app`) wires them in::

    from .cli_export import add_export_parser, add_serve_parser, run_export, run_serve
    add_export_parser(sub); add_serve_parser(sub)
    ...
    if args.command == "export": return run_export(args)
    if args.command == "serve": return run_serve(args)

Handlers raise :class:`~jointopt.errors.JointoptError` for bad input (the main CLI
prints it and exits 2) and return the exit code otherwise.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_export_parser", "add_serve_parser", "run_export", "run_serve"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"a port is 1..65535 (0: any free port), got {text}; e.g. --port 8100")
    return value


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export CONFIG (--trial N | --pick RULE [--budget T]) --out DIR``."""
    from jointopt.export.pick import PICKS

    parser = subparsers.add_parser(
        "export", help="export a tuned policy and serving configs from a study",
        description="Write policy.yaml, vllm_serve.yaml, generation_config.json, "
                    "openai_presets.json, dspy_program.json and EXPORT.md for one trial of "
                    "a study, and register its prompt in MLflow.")
    parser.add_argument("config", help="study YAML file")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="export this trial number")
    which.add_argument("--pick", choices=PICKS, default=None,
                       help="rule on the Pareto front (default: knee)")
    parser.add_argument("--budget", type=_positive_float,
                        help="mean tokens per input for --pick budget (the mean cost under "
                             "optimizer.cost: flops | price)")
    parser.add_argument("--out", required=True, help="folder to write into")
    parser.add_argument("--mlflow-alias", help="alias of the registered prompt version "
                                               "(default: champion)")
    parser.add_argument("--no-mlflow", action="store_true",
                        help="do not register the prompt in MLflow")
    parser.add_argument("--storage", help="Optuna storage URL (default: the config's)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="device the vLLM files are written for (default: this machine)")
    parser.add_argument("--target", action="append", dest="targets", metavar="NAME",
                        help="export only these targets besides policy.yaml (repeatable; a "
                             "registry name or package.module:Class; default: all registered)")
    return parser


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve --policy P --upstream URL [--host --port --timeout ...]``."""
    parser = subparsers.add_parser(
        "serve", help="serve a policy as an OpenAI-compatible API in front of an engine",
        description="Answer /v1/chat/completions with a tuned policy, making its "
                    "generations on an OpenAI-compatible upstream (e.g. vLLM).")
    parser.add_argument("--policy", required=True, help="policy file (policy.yaml)")
    parser.add_argument("--upstream", required=True, action="append",
                        help="upstream API root, e.g. http://127.0.0.1:8000/v1 (repeat to "
                             "spread requests over several servers); MODEL=URL for a "
                             "policy calling several models (one upstream per model)")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8100,
                        help="port, 1..65535 or 0 for any free one (default 8100)")
    parser.add_argument("--timeout", type=_positive_float, default=60.0,
                        help="seconds per request before a 504 (default 60)")
    parser.add_argument("--max-concurrency", type=_positive_int, default=8,
                        help="requests answered at once (default 8)")
    parser.add_argument("--queue-timeout", type=_positive_float, default=30.0,
                        help="seconds a request may wait for a slot before a 503 (default 30)")
    parser.add_argument("--max-waiting", type=_int_at_least(0), default=64,
                        help="requests that may wait for a slot; more get a 503 at once "
                             "(default 64)")
    parser.add_argument("--api-key-file", metavar="FILE",
                        help="client API keys the proxy accepts, one per line (clients send "
                             "'Authorization: Bearer KEY'); $JOINTOPT_API_KEYS adds more")
    parser.add_argument("--allow-unauthenticated", action="store_true",
                        help="listen on a non-loopback --host without client keys (only "
                             "behind a gateway that authenticates)")
    parser.add_argument("--rate-limit", type=_int_at_least(0), default=600,
                        help="requests per minute per client key, 0 for none (default 600)")
    parser.add_argument("--max-body-bytes", type=_positive_int, default=1_048_576,
                        help="largest request body (default 1048576)")
    parser.add_argument("--max-input-chars", type=_positive_int,
                        help="largest input in characters (default: the policy file's "
                             "metadata.serving.max_input_chars, else 100000)")
    parser.add_argument("--allow-verifier", action="append", default=[], metavar="MODULE",
                        help="trust the policy's serve-time verifier from MODULE (and its "
                             "submodules); only jointopt's own are imported otherwise")
    parser.add_argument("--api-key-env", "--upstream-api-key-env", dest="api_key_env",
                        help="environment variable holding the UPSTREAM's API key")
    parser.add_argument("--upstream-model", help="model name on the upstream (default: the "
                                                 "first of its /v1/models)")
    parser.add_argument("--model-name", help="model id the proxy shows its clients")
    parser.add_argument("--max-retries", type=int, default=2,
                        help="upstream retries on connection errors, 429 and 5xx (default 2)")
    parser.add_argument("--no-seed", action="store_true",
                        help="do not send per-request seeds upstream")
    parser.add_argument("--token-ids", action="store_true",
                        help="ask the upstream for token ids (vLLM's return_token_ids)")
    parser.add_argument("--on-violation", choices=("switch", "alert"), default="switch",
                        help="when feedback shows a certified policy's accuracy target "
                             "violated with confidence: switch to the next safer certified "
                             "policy (default) or only alert")
    parser.add_argument("--log-level", default="info",
                        choices=("critical", "error", "warning", "info", "debug"))
    return parser


def run_export(args: argparse.Namespace) -> int:
    """Handle ``jointopt export``."""
    from rich.console import Console

    from jointopt.search.config import load_config
    from jointopt.errors import ConfigError
    from jointopt.export.policy import export_policy

    pick = args.pick or "knee"
    if args.budget is not None and pick != "budget":
        raise ConfigError("--budget only applies to --pick budget", where="--budget",
                          value=args.budget, fix="add --pick budget, or drop --budget")
    if pick == "budget" and args.budget is None:
        raise ConfigError("--pick budget needs --budget T", where="--budget",
                          fix="e.g. --pick budget --budget 60 (mean tokens per input)")
    from jointopt.search.preflight import check_folder

    check_folder(args.out, "--out", "export folder")  # an existing file there: refused, untouched
    overrides = {"optimizer": {"storage": args.storage}} if args.storage else None
    config = load_config(args.config, overrides)
    result = export_policy(
        config, trial=args.trial, pick=pick, budget=args.budget, out_dir=args.out,
        mlflow_alias=args.mlflow_alias, register_prompt=False if args.no_mlflow else None,
        device=args.device, targets=args.targets,
    )
    console = Console()
    how = "--trial" if result.pick == "trial" else f"pick {result.pick}"
    console.print(f"[green]exported[/green] trial {result.trial_number} ({how}): "
                  f"{result.policy.prompt.id}, {result.policy.describe()}")
    if result.accuracy is not None and result.mean_tokens is not None:
        console.print(f"  accuracy {result.accuracy} | mean tokens {result.mean_tokens} "
                      "(95% bootstrap CI)")
    cert = result.policy.metadata.get("certificate")
    if cert:
        console.print(f"  certified: accuracy >= {cert.get('target')} at risk {cert['risk']} "
                      f"({cert['n_calibration']} calibration examples; "
                      f"{len(cert.get('fallbacks', ()))} safer certified fallback(s))")
    for path in result.files.values():
        console.print(f"  {path}")
    if result.prompt_uri:
        console.print(f"  MLflow prompt {result.prompt_uri} (alias {result.prompt_alias})")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    return 0


def upstream_arg(values: list[str]) -> "str | list[str] | dict[str, list[str]]":
    """``--upstream`` values: URL(s), or ``MODEL=URL`` entries (a model's URLs grouped)."""
    named = [v.partition("=") for v in values]
    if not any(sep and "/" not in name and ":" not in name for name, sep, _ in named):
        return values if len(values) > 1 else values[0]
    out: dict[str, list[str]] = {}
    for value, (name, sep, url) in zip(values, named):
        if not sep or not name or "/" in name or ":" in name:
            from jointopt.errors import ConfigError

            raise ConfigError("give every --upstream as MODEL=URL when one is",
                              where="--upstream", value=value,
                              fix="write e.g. --upstream small=http://127.0.0.1:8000/v1")
        out.setdefault(name, []).append(url)
    return out


def run_serve(args: argparse.Namespace) -> int:
    """Handle ``jointopt serve`` (blocks until interrupted)."""
    from jointopt.serving.proxy import serve

    upstream = upstream_arg(args.upstream)
    serve(
        args.policy, upstream, host=args.host, port=args.port, timeout=args.timeout,
        max_concurrency=args.max_concurrency, queue_timeout=args.queue_timeout,
        api_key_env=args.api_key_env, upstream_model=args.upstream_model,
        model_name=args.model_name, max_retries=args.max_retries, send_seed=not args.no_seed,
        token_ids=args.token_ids, log_level=args.log_level, max_waiting=args.max_waiting,
        api_key_file=args.api_key_file, allow_unauthenticated=args.allow_unauthenticated,
        allow_verifiers=tuple(args.allow_verifier), max_body_bytes=args.max_body_bytes,
        max_input_chars=args.max_input_chars, rate_limit=args.rate_limit,
        on_violation=args.on_violation,
    )
    return 0
