"""Headless Chromium over the DevTools protocol: open a page, record its requests, screenshot it.

Only what the tests need: :func:`open_page` starts ``/usr/bin/chromium`` (Debian's package)
with a fresh profile and no background networking, opens ``url`` in a new tab with the
Network domain on, waits for the load event, and returns every request the page made, the
values of some JavaScript expressions and a full-page PNG screenshot.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-port=0", "--remote-allow-origins=*",
]  # fmt: skip


@dataclass
class PageVisit:
    requests: list[str]
    values: dict[str, Any]
    screenshot: bytes


class _Session:
    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id, self.events = ws, 0, []

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(method)
            self.events.append(json.loads(self.ws.recv(timeout=remaining)))


def _devtools_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if found := re.search(r"DevTools listening on (ws://\S+)", line):
            return found.group(1)
        if not line and proc.poll() is not None:
            break
    raise RuntimeError("chromium did not start its DevTools endpoint")


def open_page(url: str, *, expressions: dict[str, str], width: int = 1280, height: int = 900) -> PageVisit:
    """Load ``url`` in headless Chromium; its requests, ``expressions`` evaluated, a screenshot."""
    from websockets.sync.client import connect

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            with connect(_devtools_url(proc), max_size=None, open_timeout=60) as ws:
                return _visit(_Session(ws), url, expressions, width, height)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _visit(cdp: _Session, url: str, expressions: dict[str, str], width: int, height: int) -> PageVisit:
    target = cdp.send("Target.createTarget", url="about:blank")["targetId"]
    sid = cdp.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Network.enable", "Page.enable", "Runtime.enable"):
        cdp.send(domain, sid)
    cdp.send(
        "Emulation.setDeviceMetricsOverride",
        sid,
        width=width,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    cdp.send("Page.navigate", sid, url=url)
    cdp.wait_for("Page.loadEventFired")
    time.sleep(0.5)  # let the zoom script fit the crop
    values = {
        name: cdp.send("Runtime.evaluate", sid, expression=expr, returnByValue=True)["result"].get("value")
        for name, expr in expressions.items()
    }
    shot = cdp.send("Page.captureScreenshot", sid, format="png", captureBeyondViewport=True)
    requests = [
        e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"
    ]
    return PageVisit(requests=requests, values=values, screenshot=base64.b64decode(shot["data"]))
