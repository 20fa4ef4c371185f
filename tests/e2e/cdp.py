"""A real headless Chromium, driven over the Chrome DevTools Protocol.

No driver binary and no extra package: Chromium's own debugging websocket, spoken
with tornado's websocket client on the e2e loop thread.  Clicks and typing are
dispatched as input events (``Input.dispatchMouseEvent`` / ``Input.insertText``),
so forms submit exactly as they do for a person: the browser's own cookies,
SameSite rules, redirects and Content-Security-Policy apply.

    browser = Browser.launch(harness)         # None (with the reason) if there is no chromium
    page = browser.new_page()
    page.goto(url); page.type("#token", "..."); page.click("#login")
    page.wait_for("document.querySelector('tr[data-account]') !== null")
"""
from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.e2e.harness import LoopThread

CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000", "--remote-debugging-port=0")


def find_chromium() -> str | None:
    for name in CHROMIUM:
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(Exception):
    pass


class Browser:
    def __init__(self, lt: LoopThread, proc: subprocess.Popen[bytes], profile: str, ws: WebSocketClientConnection) -> None:
        self.lt = lt
        self.proc = proc
        self.profile = profile
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.events: list[dict[str, Any]] = []
        lt.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._reader()))

    @classmethod
    def launch(cls, lt: LoopThread, timeout: float = 30.0) -> "Browser":
        exe = find_chromium()
        if exe is None:
            raise FileNotFoundError("no chromium on PATH (deploy/ci-browser.sh installs Debian's)")
        profile = tempfile.mkdtemp(prefix="tp-chromium-")
        proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return cls(lt, proc, profile, cls._connect(lt, proc, Path(profile), timeout))
        except BaseException:
            proc.kill()  # never leave a browser behind a failed start
            proc.wait(10)
            shutil.rmtree(profile, ignore_errors=True)
            raise

    @staticmethod
    def _connect(lt: LoopThread, proc: subprocess.Popen[bytes], profile: Path,
                 timeout: float) -> WebSocketClientConnection:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited at start with status {proc.returncode}")
            if port_file.exists():
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    break
            time.sleep(0.05)
        if len(lines) < 2:
            raise RuntimeError("chromium did not open its debugging port in time")
        url = f"ws://127.0.0.1:{lines[0]}{lines[1]}"

        async def connect() -> WebSocketClientConnection:
            return await websocket_connect(url, max_message_size=64 << 20)

        ws: WebSocketClientConnection = lt.run(connect())
        return ws

    async def _reader(self) -> None:
        while True:
            msg = await self.ws.read_message()
            if msg is None:
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_exception(CDPError("the browser closed its debugging connection"))
                return
            data = json.loads(msg)
            waiting: asyncio.Future[Any] | None = self._pending.pop(data["id"], None) if "id" in data else None
            if waiting is not None and not waiting.done():
                if "error" in data:
                    err = data["error"]
                    waiting.set_exception(CDPError(f"{err.get('message')}: {err.get('data', '')}"))
                else:
                    waiting.set_result(data.get("result", {}))
            elif "method" in data:
                self.events.append(data)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 20.0) -> Any:
        async def send() -> Any:
            i = next(self._ids)
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending[i] = fut
            msg: dict[str, Any] = {"id": i, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            await self.ws.write_message(json.dumps(msg))
            return await asyncio.wait_for(fut, timeout)

        return self.lt.run(send(), timeout=timeout + 5)

    def new_page(self) -> "Page":
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.call("Page.enable")
        page.call("Network.enable")
        return page

    def cookies(self) -> list[dict[str, Any]]:
        return list(self.call("Storage.getCookies")["cookies"])

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.b = browser
        self.session = session

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self.b.call(method, params, session=self.session)

    def eval(self, expr: str) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True})
        if "exceptionDetails" in res:
            raise CDPError(f"{expr}: {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 15.0) -> Any:
        """Evaluate ``expr`` until it is truthy (a navigation in between is retried)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                v = self.eval(expr)
                if v:
                    return v
            except CDPError as e:  # the page navigated away mid-evaluation
                last = e
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expr!r} on {self.url()}" + (f" (last error: {last})" if last else ""))

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def url(self) -> str:
        try:
            return str(self.eval("location.href"))
        except CDPError:
            return "?"

    def _center(self, selector: str) -> tuple[float, float]:
        sel = json.dumps(selector)
        box = self.wait_for(
            f"(() => {{ const e = document.querySelector({sel}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        return float(box[0]), float(box[1])

    def click(self, selector: str) -> None:
        """A left click in the middle of the element, as mouse events."""
        x, y = self._center(selector)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                   "clickCount": 0 if kind == "mouseMoved" else 1})

    def type(self, selector: str, text: str) -> None:
        """Click into a field and type ``text`` into it."""
        self.click(selector)
        self.call("Input.insertText", {"text": text})

    def text(self, selector: str = "body") -> str:
        return str(self.eval(f"document.querySelector({json.dumps(selector)}).innerText"))

    def last_status(self, url_part: str) -> int | None:
        """The HTTP status of the last response whose URL contains ``url_part``."""
        for ev in reversed(self.b.events):
            if ev.get("method") == "Network.responseReceived" and ev.get("sessionId") == self.session:
                resp = ev["params"]["response"]
                if url_part in resp["url"]:
                    return int(resp["status"])
        return None


def launch_or_skip(lt: LoopThread) -> Browser:
    import pytest

    if find_chromium() is None:
        msg = "no chromium found (apt-get install chromium chromium-driver, or deploy/ci-browser.sh)"
        print(f"SKIP browser test: {msg}")
        pytest.skip(msg)
    return Browser.launch(lt)
