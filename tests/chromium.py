"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands on
file descriptor 3, replies and events on 4, NUL-separated JSON), standard library only.

    with Chromium() as browser:
        page = browser.open(path, width=1366)      # loads the file, collects problems while it loads
        page.problems                               # console errors, uncaught exceptions, failed or
                                                    # external requests
        page.evaluate("document.title")
        page.screenshot()                           # PNG bytes of the whole page
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def executable() -> str | None:
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class Chromium:
    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self._next_id = 0
        self._buffer = b""

    def __enter__(self) -> "Chromium":
        binary = executable()
        if binary is None:
            raise FileNotFoundError("no Chromium on PATH (apt-get install chromium)")
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_pipes() -> None:
            # in the child: the protocol's descriptors 3 and 4 (inheritable copies; moved above 10
            # first, so that neither end is overwritten when one of them already is 3 or 4)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
            for fd, target in zip(high, (3, 4)):
                os.dup2(fd, target)

        # close_fds off: the copies on 3 and 4 must survive exec; every other descriptor Python opened
        # is close-on-exec anyway
        self.process = subprocess.Popen(
            [binary, "--headless", "--disable-gpu", "--no-sandbox", "--remote-debugging-pipe",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire_pipes, close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.send("Browser.close")
        except Exception:  # noqa: BLE001 - the browser may be gone already; it is killed below
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()

    # -- the protocol -------------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ConnectionError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             events: list | None = None) -> dict:
        """One command; events that arrive meanwhile are appended to `events`."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if events is not None and "method" in reply:
                events.append(reply)

    def wait_for(self, method: str, events: list) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(e["method"] == method for e in events):
            events.append(self._read_message(deadline))

    def open(self, path: Path, width: int = 1366, height: int = 900) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        events: list[dict] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session, events=events)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": 1, "mobile": False},
                  session=session, events=events)
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session, events=events)
        self.wait_for("Page.loadEventFired", events)
        page = Page(self, session, events)
        page.evaluate("new Promise(r => setTimeout(r, 200))")  # late console messages
        return page


class Page:
    def __init__(self, browser: Chromium, session: str, events: list[dict]):
        self.browser = browser
        self.session = session
        self.events = events

    @property
    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, failed loads, and any request that is
        not for the file itself or a data: URI."""
        found = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                found.append(f"exception: {p['exceptionDetails'].get('exception', {}).get('description') or p['exceptionDetails'].get('text')}")
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                found.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                found.append(f"log {p['entry']['level']}: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif e["method"] == "Network.loadingFailed":
                found.append(f"failed request: {p.get('errorText')}")
            elif e["method"] == "Network.requestWillBeSent":
                url = p["request"]["url"]
                if not url.startswith(("file://", "data:")):
                    found.append(f"external request: {url}")
        return found

    def evaluate(self, expression: str):
        result = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True},
                                   session=self.session, events=self.events)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, top: int | None = None, height: int | None = None) -> bytes:
        """PNG of the whole page, or of `height` pixels from `top`."""
        params = {"format": "png", "captureBeyondViewport": True}
        if top is not None:
            width = self.evaluate("document.documentElement.scrollWidth")
            params["clip"] = {"x": 0, "y": top, "width": width, "height": height, "scale": 1}
        shot = self.browser.send("Page.captureScreenshot", params, session=self.session, events=self.events)
        return base64.b64decode(shot["data"])
