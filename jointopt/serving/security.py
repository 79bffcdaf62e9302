"""The policy proxy's gate: client API keys, per-client rate limit, request-body cap, and
the bind check. Used by :mod:`jointopt.serving.proxy`.

* Client keys come from a file (one per line; blank lines and ``# comments`` skipped)
  and/or the environment variable ``JOINTOPT_API_KEYS`` (keys separated by commas or
  whitespace). Clients send ``Authorization: Bearer <key>``; keys are compared in
  constant time (:func:`hmac.compare_digest` of SHA-256 digests), registered with
  :mod:`jointopt.safety.secrets` so they are masked wherever they might show up, and never logged.
* :class:`GuardMiddleware` answers before the app sees the request: 401 without or with a
  wrong key (every path but ``/health``), 429 over the rate limit, 413 for a body above
  the cap (by ``Content-Length`` or while reading a chunked body).
* :func:`check_bind` refuses to listen on a non-loopback interface without keys unless
  the operator explicitly allows it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jointopt.safety import secrets as _secrets
from jointopt.errors import ConfigError

__all__ = [
    "API_KEYS_ENV",
    "ApiKeys",
    "GuardMiddleware",
    "RateLimiter",
    "check_bind",
    "check_port",
    "is_loopback",
    "load_api_keys",
]

log = logging.getLogger(__name__)

#: Environment variable that may hold the proxy's client keys (comma/space separated).
API_KEYS_ENV = "JOINTOPT_API_KEYS"
#: Shortest client key accepted (a short key is guessable).
MIN_KEY_LENGTH = 16
_KEY_FIX = ("generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
#: Paths anyone may call (load-balancer probes); they reveal no upstream detail.
PUBLIC_PATHS = frozenset({"/health"})


# ------------------------------------------------------------------------------ keys


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class ApiKeys:
    """The client keys the proxy accepts, kept as SHA-256 digests (never shown).

    Build with :meth:`of` (or :func:`load_api_keys`); empty means no authentication.
    """

    digests: tuple[bytes, ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, keys: Iterable[str], where: str = "api_keys") -> "ApiKeys":
        """Check and register ``keys`` (each >= ``MIN_KEY_LENGTH`` characters, no spaces).

        Raises:
            ConfigError: a key that is too short or holds whitespace (not shown).
        """
        digests = []
        for i, key in enumerate(keys):
            if not isinstance(key, str) or len(key) < MIN_KEY_LENGTH or re.search(r"\s", key):
                if isinstance(key, str):
                    _secrets.register(key)
                raise ConfigError(
                    f"client API key #{i + 1} must be at least {MIN_KEY_LENGTH} characters "
                    "without spaces (the key is not shown)", where=where, fix=_KEY_FIX)
            _secrets.register(key)
            digests.append(_digest(key))
        return cls(tuple(digests))

    def __bool__(self) -> bool:
        return bool(self.digests)

    def __len__(self) -> int:
        return len(self.digests)

    def match(self, presented: str) -> int | None:
        """The index of the key ``presented`` equals, or None; constant time over the keys."""
        digest = _digest(presented)
        found = None
        for i, known in enumerate(self.digests):
            if hmac.compare_digest(known, digest) and found is None:
                found = i
        return found


def load_api_keys(file: str | Path | None = None, *, env: str | None = API_KEYS_ENV
                  ) -> ApiKeys:
    """Client keys from ``file`` (one per line) and the environment variable ``env``.

    Raises:
        ConfigError: a missing or empty file, or a bad key.
    """
    keys: list[str] = []
    if file is not None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise ConfigError("API key file not found", where="--api-key-file",
                              value=str(path), fix="write one client key per line")
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
        if not keys:
            raise ConfigError("the API key file holds no key", where="--api-key-file",
                              value=str(path), fix=f"write one key per line; {_KEY_FIX}")
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the API key file %s is readable by other users; chmod 600 it", path)
    if env and os.environ.get(env, "").strip():
        keys += [k for k in re.split(r"[\s,]+", os.environ[env].strip()) if k]
    return ApiKeys.of(keys, where=env if file is None else "--api-key-file")


# ------------------------------------------------------------------------------ binding


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, authenticated: bool, allow_unauthenticated: bool = False) -> None:
    """Refuse a non-loopback ``host`` without client keys, unless explicitly allowed.

    Raises:
        ConfigError: naming the host and the three ways out.
    """
    if authenticated or allow_unauthenticated or is_loopback(host):
        return
    raise ConfigError(
        "refusing to listen on a non-loopback interface without client API keys: anyone "
        "who reaches the port would use the upstream at your cost", where="--host",
        value=host,
        fix=f"give client keys (--api-key-file FILE or ${API_KEYS_ENV}), or listen on "
            "127.0.0.1, or pass --allow-unauthenticated if a gateway in front "
            "authenticates")


def check_port(port: Any) -> int:
    """``port`` as an int in 0..65535 (0: any free port).

    Raises:
        ConfigError: not an integer in range.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError("the port must be an integer from 1 to 65535 (0: any free port)",
                          where="--port", value=port, fix="e.g. --port 8100")
    return port


# ------------------------------------------------------------------------------ rate limit


class RateLimiter:
    """At most ``limit`` requests per client in any ``window`` seconds (sliding window).

    Args:
        limit: requests per window; 0 turns the limiter off.
        window: seconds.
        max_clients: clients remembered at once (the least recently seen are dropped).
    """

    def __init__(self, limit: int, window: float = 60.0, max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self._max_clients = max_clients
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, client: str, now: float | None = None) -> float:
        """Count one request of ``client``: 0.0 when allowed, else seconds to wait."""
        if self.limit <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._seen.pop(client, None) or deque()
            self._seen[client] = times
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= self.limit:
                return max(times[0] + self.window - now, 0.001)
            times.append(now)
            while len(self._seen) > self._max_clients:
                self._seen.popitem(last=False)
            return 0.0


# ------------------------------------------------------------------------------ middleware


async def send_error(send: Any, status: int, message: str, kind: str, code: str | int,
                     headers: Mapping[str, str] | None = None) -> None:
    """Send an OpenAI-style error body (``{"error": {message, type, code}}``) over ASGI."""
    body = json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()
    raw = [(b"content-type", b"application/json"),
           (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope: Mapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class GuardMiddleware:
    """ASGI middleware: authentication, rate limit and body cap (see the module docstring).

    Args:
        app: the ASGI app it guards.
        keys: accepted client keys (empty: no authentication).
        limiter: per-client rate limiter (clients are keys, or addresses without keys).
        max_body_bytes: largest request body read.
    """

    def __init__(self, app: Any, *, keys: ApiKeys, limiter: RateLimiter,
                 max_body_bytes: int) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        client = self._client(scope)
        if client is None:
            await self._unauthorized(scope, send)
            return
        wait = self.limiter.hit(client)
        if wait:
            await send_error(
                send, 429, f"rate limit: at most {self.limiter.limit} requests per "
                           f"{self.limiter.window:g}s per client; retry in {math.ceil(wait)}s",
                "rate_limit_error", "rate_limit_exceeded",
                {"Retry-After": str(math.ceil(wait))})
            return
        length = _header(scope, b"content-length")
        if length is not None and (not length.strip().isdigit()
                                   or int(length) > self.max_body_bytes):
            await self._too_large(send, length.strip()[:20])
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(send, f"over {self.max_body_bytes}")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _client(self, scope: Any) -> str | None:
        """The rate-limit identity: ``key-<n>`` for a valid key, the address without keys,
        None for a missing or wrong key."""
        if not self.keys:
            address = scope.get("client") or ("unknown", 0)
            return f"address-{address[0]}"
        auth = _header(scope, b"authorization") or ""
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        index = self.keys.match(token.strip())
        return None if index is None else f"key-{index + 1}"

    async def _unauthorized(self, scope: Any, send: Any) -> None:
        auth = _header(scope, b"authorization")
        message = ("missing API key: send the header 'Authorization: Bearer <key>'" if not auth
                   else "invalid API key")
        log.debug("refused %s %s: %s", scope.get("method"), scope.get("path"),
                 "no API key" if not auth else "wrong API key")
        await send_error(send, 401, message, "invalid_request_error", "invalid_api_key",
                         {"WWW-Authenticate": "Bearer"})

    async def _too_large(self, send: Any, size: str) -> None:
        await send_error(
            send, 413, f"request body too large ({size} bytes): this proxy reads at most "
                       f"{self.max_body_bytes} bytes; send a shorter input",
            "invalid_request_error", "request_too_large")
