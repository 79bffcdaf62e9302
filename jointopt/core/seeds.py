"""Seeds derived from names: the same parts give the same seed on every machine and run."""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["stable_seed"]


def stable_seed(*parts: Any, sep: str = "/") -> int:
    """A seed in ``[0, 2**31)`` from the first 4 bytes of the SHA-256 of the parts joined
    by ``sep`` (``str()`` of each part)."""
    digest = hashlib.sha256(sep.join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31)
