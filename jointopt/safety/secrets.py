"""Secrets: where API keys come from, and how they are kept out of logs, MLflow and exports.

* API keys are read from the environment (``model.api_key_env``) or a file
  (``model.api_key_file``), never from the study config itself: a config whose
  ``model.engine`` or ``model.base_urls`` holds something that looks like a key or a
  password is refused (:func:`check_config_for_secrets`).
* Every secret read here (and the password of any storage or tracking URL) is
  registered; :func:`redact` masks registered values, ``sk-...``-like tokens,
  ``Bearer`` tokens and URL passwords. The tracker passes every parameter, tag and text
  artifact through it, and :func:`install_log_redaction` (called by the CLI) redacts every
  log record, captured warning and uncaught traceback of the process.

(The module name shadows nothing: inside the package, ``import secrets`` still means the
standard library.)
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jointopt.errors import ConfigError

__all__ = [
    "MASK",
    "register",
    "redact",
    "safe_url",
    "read_api_key",
    "check_config_for_secrets",
    "install_log_redaction",
    "mask_record",
]

log = logging.getLogger(__name__)

MASK = "***"
_known: set[str] = set()
_lock = threading.Lock()

#: OpenAI-style keys (``sk-...``, ``sk-proj-...``), bearer tokens, ``Authorization:`` header
#: values, ``key=value`` secrets and the password part of ``scheme://user:password@host``
#: URLs.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), MASK),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]{8,}"), r"\g<1>" + MASK),
    # an echoed header: ``Authorization: Basic <base64 of user:password>``, or any scheme
    (re.compile(r"(?i)\b(authorization[\"']?\s*[=:]\s*[\"']?(?:(?:basic|bearer|token|digest)\s+)?)"
                r"(?!(?:basic|bearer|token|digest)\b)[^\s\"',;}]{6,}"), r"\g<1>" + MASK),
    # ``api_key=<value>``: the value is masked when it looks like a secret (a digit, an
    # upper-case letter or a symbol, or 16+ characters), so that a message such as
    # "model.engine.api_key: unknown key 'api_key'" keeps its words.
    (re.compile(r"(?i)\b((?:api[_-]?key|secret|token|password|passwd)[\"']?\s*[=:]\s*[\"']?)"
                r"(?-i:(?=[^\s\"',;&}]*[^a-z\s\"',;&}])[^\s\"',;&}]{6,}|[^\s\"',;&}]{16,})"),
     r"\g<1>" + MASK),
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]+:)[^@/\s]+@"), r"\g<1>" + MASK + "@"),
)
#: Config keys whose (string) value is a secret: ``api_key``, ``hf_token``, ``password``,
#: ``Authorization``... but not ``tokenizer`` nor ``api_key_env`` (a variable's name).
_SECRET_KEY = re.compile(
    r"(?i)(^|[_\-.])(api[_\-]?key|secret|token|passw(or)?d|authorization|bearer|"
    r"credentials?|cookie)s?($|[_\-.])")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def register(value: str | None) -> None:
    """Remember a secret value so that :func:`redact` masks it wherever it shows up."""
    if value and isinstance(value, str) and len(value.strip()) >= 4:
        with _lock:
            _known.add(value.strip())


def register_url(url: str | None) -> None:
    """Register the password of ``scheme://user:password@host/...`` (if any)."""
    if not url or "://" not in url:
        return
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    register(password)


def redact(text: Any) -> str:
    """``text`` with registered secrets, key-like tokens and URL passwords masked."""
    out = text if isinstance(text, str) else str(text)
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in out:
            out = out.replace(value, MASK)
    for pattern, repl in _PATTERNS:
        out = pattern.sub(repl, out)
    return out


def safe_url(url: str) -> str:
    """A URL with its password masked (``postgresql://u:***@host/db``)."""
    return re.sub(r"(//[^:/@\s]+):[^@/\s]*@", r"\1:" + MASK + "@", url)


def read_api_key(*, env: str | None, file: str | None, base_dir: str | Path = ".",
                 where: str = "model") -> str | None:
    """The API key named by ``env`` (a variable name) or ``file`` (a path), registered as a
    secret; None when neither is given.

    Raises:
        ConfigError: both given, a variable that is unset or empty, a value of ``env`` that
            is not a variable name (a key pasted in its place; the value is not shown), or a
            missing or empty file.
    """
    if env and file:
        raise ConfigError("give the API key by api_key_env or by api_key_file, not both",
                          where=f"{where}.api_key_file", value=file,
                          fix="remove one of the two")
    if env:
        if not _ENV_NAME.match(env):
            register(env)
            raise ConfigError(
                "api_key_env must be the NAME of an environment variable, not the key itself "
                "(the value is not shown)", where=f"{where}.api_key_env",
                fix="export OPENAI_API_KEY=... and write api_key_env: OPENAI_API_KEY; if a "
                    "real key was written into the config, revoke it")
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"the environment variable {env} is not set (or empty)",
                              where=f"{where}.api_key_env", value=env,
                              fix=f"export {env}=... before starting, or drop api_key_env "
                                  "for a server without keys")
        register(value)
        return value
    if file:
        path = Path(file).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
        if not path.is_file():
            raise ConfigError("API key file not found", where=f"{where}.api_key_file",
                              value=str(path), fix="relative paths start at the config file's "
                                                   "folder; write the key on the first line")
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        value = lines[0].strip() if lines else ""
        if not value:
            raise ConfigError("the API key file is empty", where=f"{where}.api_key_file",
                              value=str(path), fix="write the key on its first line")
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the API key file %s is readable by other users; chmod 600 it", path)
        register(value)
        return value
    return None


def _walk(value: Any, path: str):
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}")
            name = str(k)
            if isinstance(v, str) and v.strip() and not v.strip().isdigit() \
                    and _SECRET_KEY.search(name) and not name.endswith(("_env", "_file")):
                yield f"{path}.{k}"
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")
    elif isinstance(value, str) and redact(value) != value:
        yield path


def check_config_for_secrets(config: Any) -> None:
    """Refuse a study config that carries a secret in ``model.engine`` or ``model.base_urls``
    (such values would reach logs, MLflow parameters or exported serving files).

    Raises:
        ConfigError: naming the field, never the value.
    """
    model = config.model
    fields = {"engine": dict(model.engine), "base_urls": list(model.base_urls)}
    for path in _walk(fields, "model"):
        # the value itself is registered so that it is masked if it shows up anywhere
        _register_path(fields, path)
        raise ConfigError(
            "this looks like a secret (API key, token or password) written into the study "
            "config; it is not shown here", where=path,
            fix="remove it from the config: give the API key with model.api_key_env (an "
                "environment variable) or model.api_key_file; server URLs must not hold "
                "credentials")


def _register_path(fields: Mapping[str, Any], path: str) -> None:
    value: Any = {"model": fields}
    for part in re.findall(r"[^.\[\]]+", path):
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return
    if isinstance(value, str):
        register(value)
        register_url(value)


# ------------------------------------------------------------------------------ logging

_installed = False


def _mask_arg(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else str(value)
    masked = redact(text)
    if isinstance(value, str) or masked != text:
        return masked
    return value  # an object without a secret keeps its own %r / %d formatting


def mask_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask secrets in a log record, in place, keeping it formattable.

    The message template and each argument are masked separately, so formatters that read
    ``record.args`` themselves (uvicorn's access log unpacks its five arguments) still
    work. When that is not enough (a secret split across arguments, a broken format
    string), the record becomes the masked message with no arguments. A traceback is
    rendered, masked into ``exc_text`` and dropped from ``exc_info`` (so no handler can
    render the unmasked original); ``stack_info`` is masked too.
    """
    try:
        message = record.getMessage()
        broken = False
    except Exception:  # noqa: BLE001 - a broken format string: keep the raw message
        message, broken = str(record.msg), True
    masked = redact(message)
    if masked != message or broken:
        done = False
        if not broken and isinstance(record.msg, str) and record.args:
            raw = record.args
            args: Any = ({k: _mask_arg(v) for k, v in raw.items()} if isinstance(raw, Mapping)
                         else tuple(_mask_arg(v) for v in raw) if isinstance(raw, tuple)
                         else _mask_arg(raw))
            template = redact(record.msg)
            try:
                again = template % args
            except Exception:  # noqa: BLE001 - masking changed a placeholder
                again = None
            if again is not None and redact(again) == again:
                record.msg, record.args, done = template, args, True
        if not done:
            record.msg, record.args = masked, ()
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def install_log_redaction() -> None:
    """Redact every log record of this process (all loggers and handlers, including ones
    created later), captured warnings, and uncaught tracebacks. Idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return mask_record(previous(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    logging.captureWarnings(True)
    hook = sys.excepthook

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        import traceback

        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write(redact(text))

    if hook is sys.__excepthook__:
        sys.excepthook = excepthook
