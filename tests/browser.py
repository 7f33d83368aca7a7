"""A real headless Chromium for tests, driven through the DevTools protocol (CDP) over a
WebSocket (websocket-client). Debian's `chromium` package; scripts/system-deps.sh installs it."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise RuntimeError("chromium is not installed: run scripts/system-deps.sh (Debian package 'chromium')")
    return found


class CdpError(RuntimeError):
    pass


class Browser:
    """One headless Chromium process and a CDP session on its first page."""

    def __init__(self, width: int = 1000, height: int = 600, timeout: float = 30.0) -> None:
        self._profile = tempfile.mkdtemp(prefix="fpnstream-chromium-")
        self._stderr: list[str] = []
        self._next_id = 0
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--mute-audio", "--no-zygote", "--disable-crash-reporter", "--disable-breakpad", "--hide-scrollbars", f"--window-size={width},{height}",
             "--remote-debugging-port=0", f"--user-data-dir={self._profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True,  # its own process group: close() ends renderers and helpers too
        )
        self.ws: websocket.WebSocket | None = None
        self._browser_ws: str | None = None
        try:
            self._browser_ws = browser_ws = self._devtools_url(timeout)
            self._http = "http://" + browser_ws.split("://", 1)[1].split("/", 1)[0]
            self.ws = websocket.create_connection(self._page_ws(), timeout=timeout, suppress_origin=True)
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    def _devtools_url(self, timeout: float) -> str:
        found: list[str] = []
        ready = threading.Event()

        def drain() -> None:  # keep reading stderr so a chatty Chromium never blocks on a full pipe
            for line in self.proc.stderr:
                if not found and "DevTools listening on " in line:
                    found.append(line.split("DevTools listening on ", 1)[1].strip())
                    ready.set()
                self._stderr.append(line)
                del self._stderr[:-200]
            ready.set()

        threading.Thread(target=drain, name="chromium-stderr", daemon=True).start()
        if not ready.wait(timeout) or not found:
            raise RuntimeError("chromium did not start:\n" + "".join(self._stderr[-30:]))
        return found[0]

    def _page_ws(self) -> str:
        deadline = time.monotonic() + self.timeout
        while True:
            with urllib.request.urlopen(self._http + "/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            if time.monotonic() > deadline:
                raise RuntimeError("chromium has no page target")
            time.sleep(0.1)

    def send(self, method: str, params: dict | None = None) -> dict:
        """One CDP command; returns its result (events that arrive meanwhile are skipped)."""
        assert self.ws is not None
        self._next_id += 1
        msg_id = self._next_id
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise CdpError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})

    def navigate(self, url: str, timeout: float | None = None) -> None:
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"cannot open {url}: {result['errorText']}")
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'",
                      timeout or self.timeout, f"{url} to load")

    def evaluate(self, js: str) -> Any:
        """The value of a JS expression (promises are awaited); JS exceptions raise CdpError."""
        result = self.send("Runtime.evaluate", {"expression": js, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            d = result["exceptionDetails"]
            raise CdpError(f"JS error: {d.get('exception', {}).get('description') or d.get('text')}")
        return result["result"].get("value")

    def wait_for(self, js: str, timeout: float = 30.0, what: str | None = None) -> Any:
        """Poll `js` until it is truthy; return that value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(js)
            if value:
                return value
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited ({self.proc.returncode}):\n" + "".join(self._stderr[-30:]))
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or js}")
            time.sleep(0.1)

    def screenshot(self, path: str | Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Ask Chromium to quit (it reaps its helpers), then end the process group; no zombies."""
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None
        if self._browser_ws and self.proc.poll() is None:
            try:
                ws = websocket.create_connection(self._browser_ws, timeout=5, suppress_origin=True)
                ws.send(json.dumps({"id": 1, "method": "Browser.close"}))
                ws.close()
            except Exception:
                pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)  # helpers left in the group, if any
            except ProcessLookupError:
                break
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            self.proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
