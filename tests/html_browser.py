"""Open a page in headless chromium and report what its scripts did: every JavaScript dialog (alert, confirm,
prompt) the page opened while it loaded. Chromium is driven over the DevTools protocol on a pipe
(--remote-debugging-pipe: JSON messages, NUL-terminated, we write fd 3 and read fd 4), so no websocket client or
browser driver is needed. For the pages medscale writes (report, compare, judge): tests/test_html.py."""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
from pathlib import Path

import pytest

HANG = 180  # seconds without a message from the browser: it hung (a guard, not a performance limit)


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        if os.environ.get("CI"):  # .ci/run installs it: under CI a missing browser fails, never skips
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    return path


class _Pipe:
    def __init__(self, to_browser: int, from_browser: int):
        self.w, self.r, self.buf, self.next_id, self.events = to_browser, from_browser, b"", 0, []

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Send a command and return its result; events that arrive meanwhile are kept in self.events."""
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self.read()
            if m.get("id") == self.next_id:
                assert "error" not in m, m
                return m["result"]
            self.events.append(m)

    def read(self) -> dict:
        while b"\0" not in self.buf:
            ready, _, _ = select.select([self.r], [], [], HANG)
            assert ready, "chromium sent nothing"
            chunk = os.read(self.r, 1 << 16)
            assert chunk, "chromium closed the pipe"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\0", 1)
        return json.loads(line)


def dialogs(page: Path, profile: Path) -> tuple[list[str], str]:
    """(the message of every dialog `page` opened before its load event, images and their onerror included; the
    page's text as the browser shows it). Each dialog is accepted so that the page goes on loading."""
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    # the child's fd 3 / 4: dup2 after fork (which also makes them inheritable); pass_fds keeps them open at exec
    proc = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--no-first-run", f"--user-data-dir={profile}"],
                            pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: (os.dup2(to_r, 3), os.dup2(from_w, 4)))
    os.close(to_r)
    os.close(from_w)
    pipe, seen = _Pipe(to_w, from_r), []
    try:
        target = pipe.send("Target.createTarget", url="about:blank")["targetId"]
        session = pipe.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        pipe.send("Page.enable", session)
        pipe.send("Page.navigate", session, url=page.resolve().as_uri())
        while True:
            m = pipe.events.pop(0) if pipe.events else pipe.read()
            if m.get("method") == "Page.javascriptDialogOpening":
                seen.append(m["params"]["message"])
                pipe.send("Page.handleJavaScriptDialog", session, accept=True)
            elif m.get("method") == "Page.loadEventFired":
                text = pipe.send("Runtime.evaluate", session, expression="document.body.innerText")
                return seen, text["result"]["value"]
    finally:
        try:
            os.write(to_w, json.dumps({"id": 0, "method": "Browser.close", "params": {}}).encode() + b"\0")
        except OSError:
            pass
        os.close(to_w)
        os.close(from_r)
        proc.wait(timeout=HANG)
