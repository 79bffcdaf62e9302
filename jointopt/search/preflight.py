"""Pre-flight: what ``jointopt run`` needs beyond a valid config, checked before it writes
anything or starts an engine (``jointopt validate`` makes the same checks).

* the output folder can be created or written to;
* the Optuna storage URL has a scheme Optuna/SQLAlchemy knows and its driver is
  installed; a SQLite file or journal file can be created; a database server answers on
  its port (short timeout);
* the MLflow tracking URI can be written (SQLite file or folder creatable, server
  reachable);
* the model can be loaded: for ``backend: vllm`` a hub id must be in the local Hugging
  Face cache when the engine runs offline (``HF_HUB_OFFLINE``, set by the CPU engine);
  for ``backend: openai`` at least one server answers.

Nothing is created: writability is probed with an anonymous temporary file that vanishes
when closed. Each problem is one :class:`~jointopt.errors.JointoptError` naming the field,
the value and the fix.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from jointopt.errors import BackendError, ConfigError, ModelError

if TYPE_CHECKING:
    from jointopt.search.config import StudyConfig
    from jointopt.search.plan import StudyPlan

__all__ = ["preflight", "check_folder", "check_new_file", "check_storage_url",
           "check_tracking_uri", "check_model_available", "check_upstreams", "REACH_TIMEOUT"]

log = logging.getLogger(__name__)

#: Seconds a server (database, MLflow, OpenAI-compatible upstream) gets to accept a
#: TCP connection during pre-flight.
REACH_TIMEOUT = 3.0
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433,
                  "oracle": 1521, "http": 80, "https": 443}
_STORAGE_EXAMPLES = ("sqlite:///abs/path/optuna.db, postgresql+psycopg2://user@host/db or "
                     "journal:///abs/path/study.log")
_KNOWN_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql",
                  "journal")


def _safe(url: str) -> str:
    from jointopt.safety.secrets import safe_url

    return safe_url(url)


# ----------------------------------------------------------------------------- files


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_folder(folder: str | Path, where: str, what: str = "output folder", *,
                 value: str | None = None) -> None:
    """``folder`` is a writable folder, or can be created (its nearest existing ancestor is
    a writable folder). Creates nothing.

    Args:
        what: how the folder is named in errors ("output folder").
        value: the value shown in errors (default: the folder).

    Raises:
        ConfigError: naming ``where``, the value and the reason.
    """
    folder = Path(folder)
    shown = value if value is not None else str(folder)
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise ConfigError(f"the {what} cannot be created: {base} is a file, not a folder",
                          where=where, value=shown,
                          fix="choose another path, or move that file away")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise ConfigError(f"the {what} is not writable ({exc.strerror} in {base})",
                          where=where, value=shown,
                          fix="choose a path you can write to, or fix the permissions") from None


def check_new_file(path: str | Path, where: str, what: str, *, value: str | None = None) -> None:
    """``path`` is a writable file, or a file that can be created. Creates nothing."""
    path = Path(path)
    shown = value if value is not None else str(path)
    if path.is_dir():
        raise ConfigError(f"the {what} path is a folder, not a file", where=where,
                          value=shown, fix="name a file inside that folder")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"the {what} is not writable", where=where, value=shown,
                              fix="fix its permissions, or name another file")
        return
    check_folder(path.parent, where, f"folder of the {what} ({path.parent})", value=shown)


# ----------------------------------------------------------------------------- servers


def _reach(host: str, port: int, where: str, value: str, what: str, error: type) -> None:
    try:
        with socket.create_connection((host, port), timeout=REACH_TIMEOUT):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise error(f"cannot reach the {what} at {host}:{port} ({reason}, "
                    f"{REACH_TIMEOUT:g} s timeout)", where=where, value=value,
                    fix=f"start the {what}, or fix the host and port in the URL") from None


def _check_db_url(url: str, where: str, what: str, examples: str = _STORAGE_EXAMPLES) -> None:
    """A SQLAlchemy URL: known dialect, driver installed, file creatable or server up."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = _safe(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"not a {what} URL", where=where, value=shown,
                          fix=f"use {examples}") from None
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        close = difflib.get_close_matches(parsed.drivername, _KNOWN_SCHEMES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown {what} URL scheme {parsed.drivername!r} (no database "
                          "driver of SQLAlchemy has that name)", where=where, value=shown,
                          fix=f"{hint}use {examples}") from None
    try:
        (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()
    except ImportError as exc:
        driver = exc.name or parsed.drivername
        raise ConfigError(f"the database driver {driver!r} that {parsed.drivername!r} URLs use "
                          "is not installed", where=where, value=shown,
                          fix=f"install it (pip install {driver}), or name an installed driver "
                              "in the URL, e.g. postgresql+psycopg2://user@host/db (pip install "
                              "'jointopt[postgres]')") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            check_new_file(Path(database), where, f"{what} database", value=shown)
        return
    port = parsed.port or _DEFAULT_PORTS.get(backend)
    if parsed.host and not parsed.host.startswith("/") and port:  # not a Unix socket
        _reach(parsed.host, port, where, shown, f"{what} server", ConfigError)


def check_storage_url(url: str, where: str = "optimizer.storage") -> None:
    """The Optuna storage URL can be opened (see the module docstring). Creates nothing."""
    from jointopt.search.storage import JOURNAL_SCHEME, journal_path

    if url.startswith(JOURNAL_SCHEME):
        check_new_file(journal_path(url), where, "journal file", value=url)
        return
    if "://" not in url:
        raise ConfigError("not a storage URL", where=where, value=_safe(url),
                          fix=f"use {_STORAGE_EXAMPLES}")
    _check_db_url(url, where, "storage")


def check_tracking_uri(uri: str, where: str = "tracking.tracking_uri") -> None:
    """The MLflow tracking URI can be written: a SQLite file or folder that can be created,
    a database or tracking server that answers. Creates nothing."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme or len(scheme) == 1:  # a plain path (or a Windows drive letter)
        check_folder(Path(uri), where, "MLflow tracking folder")
    elif scheme == "file":
        check_folder(Path(url2pathname(parts.path)), where, "MLflow tracking folder",
                     value=uri)
    elif scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError("the MLflow tracking URL has no host", where=where,
                              value=_safe(uri), fix="e.g. http://127.0.0.1:5000")
        _reach(parts.hostname, parts.port or _DEFAULT_PORTS[scheme], where, _safe(uri),
               "MLflow tracking server", ConfigError)
    elif scheme.startswith("databricks") or scheme == "uc":
        return  # hosted: credentials and reachability are MLflow's business
    else:
        _check_db_url(uri, where, "MLflow tracking", "sqlite:///abs/path/mlflow.db, "
                      "http://host:5000 (an MLflow server) or a folder path")


# ----------------------------------------------------------------------------- model


def _hub_offline() -> bool:
    """Whether the engine loads models without reaching the Hugging Face hub."""
    flag = os.environ.get("HF_HUB_OFFLINE")
    if flag is not None:
        return flag.strip().lower() in ("1", "true", "yes", "on")
    from jointopt.backends.vllm_env import is_cpu_platform

    return is_cpu_platform()  # the CPU engine sets HF_HUB_OFFLINE=1 (backends/vllm.py)


def _in_hub_cache(repo_id: str, revision: Any) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json",
                                   revision=revision if isinstance(revision, str) else None)
    return isinstance(found, str)


def check_model_available(config: "StudyConfig") -> None:
    """Backends that load the model here (``vllm``): a hub id can be loaded (in the local Hugging Face cache, or the
    hub is reachable). Aliases and folders are checked by :func:`jointopt.plan_study`."""
    from jointopt.backends import backend_class
    from jointopt.backends.models import resolve_model

    if not backend_class(config.model.backend).loads_model:
        return

    name = config.model.model
    try:
        resolved = resolve_model(name)
    except ModelError:
        return  # plan_study reports it, relocated to the config field
    if Path(resolved).is_dir() or not _hub_offline():
        return
    if _in_hub_cache(resolved, config.model.engine.get("revision")):
        return
    raise ModelError(
        "the model is neither an embedded alias nor a local folder, and as a hub id it is "
        "not in the local Hugging Face cache; the engine runs offline (HF_HUB_OFFLINE), so it "
        "cannot be downloaded", where="model.model", value=name,
        fix="download it once where the hub is reachable (huggingface-cli download "
            f"{resolved}), point model.model to a local folder holding config.json, or use "
            "the embedded alias smollm2-135m-instruct")


def check_upstreams(urls: list[str], where: str = "model.base_urls") -> None:
    """``backend: openai``: at least one of the servers accepts connections (the others
    are logged; requests move to a live server)."""
    from jointopt.backends.openai import normalize_base_url

    down: list[str] = []
    for url in urls:
        root = normalize_base_url(url)
        parts = urlsplit(root)
        scheme = parts.scheme.lower()
        try:
            _reach(parts.hostname or "", parts.port or _DEFAULT_PORTS.get(scheme, 80), where,
                   _safe(root), "OpenAI-compatible server", BackendError)
            return
        except BackendError as exc:
            down.append(f"{_safe(root)}: {exc.message}")
    if down:
        raise BackendError("none of the OpenAI-compatible servers can be reached: "
                           + "; ".join(down), where=where, value=[_safe(u) for u in urls],
                           fix="start the server (e.g. vllm serve MODEL --port 8000), or fix "
                               "the URLs; curl URL/models should answer")


# ----------------------------------------------------------------------------- all


def preflight(plan: "StudyPlan", *, sources: Mapping[str, str] | None = None,
              model: bool = True, storage: bool = True) -> None:
    """Every check ``jointopt run`` needs before it writes a file or starts an engine.

    Args:
        plan: a plan from :func:`jointopt.search.plan.plan_study` (input already validated).
        sources: how a field was given when not by the config file, e.g.
            ``{"optimizer.storage": "--storage"}``; errors then name the flag.
        model: also check that the model can be loaded (skip it when a Backend object is
            given instead).
        storage: also check the Optuna storage (``jointopt compare`` uses none).

    Raises:
        JointoptError: the first problem, naming the field, the value and the fix.
    """
    src = dict(sources or {})

    def where(field: str) -> str:
        return f"{src[field]} ({field})" if field in src else field

    config = plan.config
    check_folder(plan.out_dir, where("output_dir"), "output folder")
    if storage:
        check_storage_url(plan.storage, where("optimizer.storage"))
    if config.tracking.enabled and config.tracking.tracking_uri:
        check_tracking_uri(config.tracking.tracking_uri, where("tracking.tracking_uri"))
    if not model:
        return
    from jointopt.search.multi_model import entry_config

    for entry in config.model_entries():  # every model of models:, or the one model:
        _check_one_model(entry_config(config, entry))


def _check_one_model(config: "StudyConfig") -> None:
    """The model can be loaded and the backend's servers answer."""
    check_model_available(config)
    from jointopt.backends import backend_class

    urls, field = backend_class(config.model.backend).servers(config.backend_settings())
    if urls:
        check_upstreams(urls, field)
