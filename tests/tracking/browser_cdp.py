"""A tiny headless-Chromium driver for the browser tests (no dependency beyond the
standard library): Chromium started with ``--remote-debugging-pipe`` reads DevTools
protocol commands on fd 3 and writes answers and events on fd 4, NUL-separated JSON.

Chromium comes from Debian's packages (``apt-get install chromium``; ``.ci/run``
installs it). :func:`find_chromium` returns None where there is none, and the tests skip
with that reason.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["find_chromium", "Browser"]


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium with one page; console messages and uncaught exceptions of
    the page are kept in :attr:`console` and :attr:`exceptions`."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1000) -> None:
        self._profile = tempfile.mkdtemp(prefix="jointopt-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self._reply: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._next = 0
        # The child sees our pipe ends as its fd 3 (commands in) and fd 4 (answers out).
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-dev-shm-usage",
             "--disable-background-networking", "--mute-audio", "--hide-scrollbars",
             # iframes in the page's own process, so child_frames() sees them
             "--disable-site-isolation-trials", "--disable-features=site-per-process",
             f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=_fds(to_child_r, from_child_w))
        os.close(to_child_r)
        os.close(from_child_w)
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width,
                  height=height, deviceScaleFactor=1, mobile=False)

    # ------------------------------------------------------------------ protocol

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._cond.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                with self._cond:
                    if "id" in message:
                        self._reply[message["id"]] = message
                    else:
                        self._events.append(message)
                    self._cond.notify_all()

    def call(self, method: str, session: bool = False, timeout: float = 30.0,
             **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer (``session``: to the page)."""
        with self._cond:
            self._next += 1
            ident = self._next
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while ident not in self._reply:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no answer to {method} within {timeout}s")
                self._cond.wait(left)
            reply = self._reply.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    # ------------------------------------------------------------------ page

    def open(self, url: str, ready: str = "document.readyState === 'complete'",
             timeout: float = 60.0) -> float:
        """Load ``url`` and wait until the JavaScript expression ``ready`` is true; return
        the seconds it took."""
        start = time.monotonic()
        self.call("Page.navigate", session=True, url=url)
        self.wait_for(ready, timeout)
        return time.monotonic() - start

    def child_frames(self) -> list[str]:
        """Ids of the page's child frames (iframes), in document order."""
        tree = self.call("Page.getFrameTree", session=True)["frameTree"]
        return [child["frame"]["id"] for child in tree.get("childFrames", [])]

    def evaluate(self, expression: str, frame: str | None = None) -> Any:
        """The value of a JavaScript expression in the page, or in one of its frames (an
        isolated world there: the frame's DOM, not its script globals)."""
        params: dict[str, Any] = {}
        if frame is not None:
            params["contextId"] = self.call("Page.createIsolatedWorld", session=True,
                                            frameId=frame)["executionContextId"]
        result = self.call("Runtime.evaluate", session=True, expression=expression,
                           returnByValue=True, awaitPromise=True, **params)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, frame: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.evaluate(f"Boolean({expression})", frame):
                    return
            except RuntimeError:
                pass  # the page is still navigating
            if time.monotonic() > deadline:
                raise TimeoutError(f"page not ready within {timeout}s: {expression}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """CPU time the page's renderer process has used so far (DevTools' ProcessTime)."""
        self.call("Performance.enable", session=True)
        metrics = self.call("Performance.getMetrics", session=True)["metrics"]
        return next(m["value"] for m in metrics if m["name"] == "ProcessTime")

    def mouse_move(self, x: float, y: float) -> None:
        self.call("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=x, y=y)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", session=True, format="png",
                         captureBeyondViewport=False)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    @property
    def console(self) -> list[str]:
        """Console messages and log entries: ``"<level>: <text>"``."""
        out = []
        with self._cond:
            events = list(self._events)
        for e in events:
            if e.get("method") == "Runtime.consoleAPICalled":
                args = " ".join(str(a.get("value", a.get("description", "")))
                                for a in e["params"].get("args", []))
                out.append(f"{e['params']['type']}: {args}")
            elif e.get("method") == "Log.entryAdded":
                entry = e["params"]["entry"]
                out.append(f"{entry['level']}: {entry['text']} ({entry.get('url', '')})")
        return out

    @property
    def exceptions(self) -> list[str]:
        with self._cond:
            return [json.dumps(e["params"]["exceptionDetails"])[:2000] for e in self._events
                    if e.get("method") == "Runtime.exceptionThrown"]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it may be gone already
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fds(command_in: int, answers_out: int):  # type: ignore[no-untyped-def]
    """In the child: the command pipe on fd 3 and the answer pipe on fd 4."""

    def arrange() -> None:
        a, b = os.dup(command_in), os.dup(answers_out)
        os.dup2(a, 3)
        os.dup2(b, 4)
        os.set_inheritable(3, True)
        os.set_inheritable(4, True)

    return arrange
