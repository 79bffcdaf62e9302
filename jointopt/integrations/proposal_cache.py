"""The on-disk proposal cache: one JSON file of entries keyed by a content hash, read and
written under an inter-process lock."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from jointopt.errors import ConfigError
from jointopt.integrations.proposer import PROPOSER_VERSION


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock next to ``path`` (no-op without fcntl)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(f"{path}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    from jointopt.safety.safe_load import data_limits, parse_json, read_text

    try:
        data = parse_json(read_text(path, "proposal cache", limits=data_limits()), str(path),
                          limits=data_limits())
    except ConfigError as exc:
        raise ConfigError(f"the proposal cache is unreadable: {exc.message}",
                          where=exc.where or str(path),
                          fix="delete the file (proposals are made again) or point "
                              "cache_path elsewhere") from None
    entries = data.get("entries") if isinstance(data, dict) else None
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"version": PROPOSER_VERSION, "entries": dict(entries)}, fh, indent=1,
                      sort_keys=True, ensure_ascii=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _store(path: Path, key: str, entry: Mapping[str, Any]) -> None:
    """Add one entry to the cache file (under the lock; other entries are kept)."""
    with _locked(path):
        entries = _read_cache(path)
        entries[key] = entry
        _write_cache(path, entries)
