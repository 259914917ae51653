"""A small synchronous Chrome DevTools Protocol client for the browser tests.

It drives the system's headless Chromium (Debian's ``chromium`` package) over
one DevTools WebSocket, with flattened target sessions: no browser download,
no Node, no Playwright.  Only what tests/test_e2e_browser.py needs::

    with Browser() as browser:
        page = browser.new_page(1280, 800)
        page.navigate("http://127.0.0.1:8000/")
        page.wait_for("document.readyState === 'complete'", what="the page")
        page.fill("#name", "alice")
        page.submit("#chat-form")
        page.screenshot("shot.png")

Every wait has a deadline; failures say what was awaited and show the page's
text, its console output and uncaught exceptions, and Chromium's stderr.
"""

import base64
import collections
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from websockets.sync.client import connect

CHROMIUM = "/usr/bin/chromium"

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--password-store=basic",
    "--use-mock-keychain",
    "--hide-scrollbars",
    "--window-size=1280,800",
    "--mute-audio",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


class CDPError(Exception):
    """An error answer to a DevTools command, or a browser that went away."""


def _connect(url, timeout):
    kwargs = dict(max_size=None, open_timeout=timeout, close_timeout=2)
    try:
        ws = connect(url, proxy=None, **kwargs)  # websockets >= 15 reads *_proxy from the environment
    except TypeError:
        ws = connect(url, **kwargs)
    return ws.__enter__()  # websockets >= 17.1 warns when a connection is used outside a with block


class Browser:
    """A headless Chromium started for the test, and its DevTools connection."""

    def __init__(self, executable=CHROMIUM, timeout=20.0, extra_flags=()):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="shmchannels-cdp-")
        self.stderr_path = os.path.join(self.profile, "chromium.stderr")
        self.proc = None
        self.ws = None
        self._ids = itertools.count(1)
        self._events = collections.defaultdict(lambda: collections.deque(maxlen=500))
        try:
            with open(self.stderr_path, "wb") as err:
                self.proc = subprocess.Popen(
                    [executable, *FLAGS, *extra_flags, f"--user-data-dir={self.profile}", "about:blank"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    start_new_session=True,  # its own process group: close() ends all of Chromium's processes
                )
            url = self._devtools_url(timeout)
            self.ws = _connect(url, timeout)
        except BaseException:
            self.close()
            raise

    # -- the process -------------------------------------------------------

    def stderr(self, tail=4000, noise=("dbus", "Fontconfig")):
        """The end of Chromium's stderr, without the lines about D-Bus (no bus in a container)."""
        try:
            with open(self.stderr_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(line for line in text.splitlines() if not any(n in line for n in noise))[-tail:]

    def _devtools_url(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"DevTools listening on (ws://\S+)", self.stderr(tail=100_000, noise=()))
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                raise CDPError(f"chromium exited with {self.proc.returncode} before DevTools listened:\n{self.stderr()}")
            time.sleep(0.02)
        raise CDPError(f"chromium's DevTools did not listen within {timeout}s:\n{self.stderr()}")

    def close(self):
        """Close the browser (politely, then by signals), remove its profile."""
        if self.ws is not None:
            try:
                self.ws.send(json.dumps({"id": next(self._ids), "method": "Browser.close"}))
            except Exception:
                pass
            try:
                self.ws.__exit__(None, None, None)
            except Exception:
                pass
            self.ws = None
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            # then the rest of the process group we created (renderers, GPU and utility processes)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if self.proc.poll() is not None and not _group_alive(self.proc.pid):
                    break
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and (self.proc.poll() is None or _group_alive(self.proc.pid)):
                    time.sleep(0.05)
            self.proc = None
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the protocol ------------------------------------------------------

    def send(self, method, params=None, session_id=None, timeout=None):
        """Send one command and return its result; events met on the way are kept."""
        if self.ws is None:
            raise CDPError("the browser is closed")
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            msg["sessionId"] = session_id
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"no answer to {method} within {timeout or self.timeout}s\n{self.stderr()}")
            try:
                raw = self.ws.recv(timeout=left)
            except TimeoutError:
                continue
            except Exception as e:
                raise CDPError(f"DevTools connection lost during {method}: {e!r}\n{self.stderr()}") from e
            reply = json.loads(raw)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise CDPError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events[reply.get("sessionId")].append(reply)

    def events(self, session_id, method=None):
        return [e for e in self._events[session_id] if method is None or e["method"] == method]

    def new_page(self, width=1280, height=800):
        """A new tab, attached (flattened session), sized ``width`` x ``height`` CSS pixels."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        page.call("Page.enable")
        page.call("Runtime.enable")
        page.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return page


def _group_alive(pgid):
    """Whether a process of group ``pgid`` still runs (zombies waiting for a reaper do not count)."""
    from serving import live_processes

    return any(pgrp == pgid for _, _, pgrp in live_processes())


class Page:
    """One tab, through its flattened DevTools session."""

    def __init__(self, browser, target_id, session_id):
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id

    def call(self, method, params=None, timeout=None):
        return self.browser.send(method, params, session_id=self.session_id, timeout=timeout)

    def navigate(self, url, timeout=15.0):
        """Load ``url`` and wait until the document is complete."""
        result = self.call("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise AssertionError(f"navigating to {url} failed: {result['errorText']}")
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'",
                      timeout=timeout, what=f"{url} to load")

    def evaluate(self, expression, timeout=None):
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                           timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"JavaScript error in {expression!r}: {text}")
        return result["result"].get("value")

    def wait_for(self, expression, timeout=10.0, interval=0.05, what=None):
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        error = None
        while True:
            try:
                value = self.evaluate(expression)
            except CDPError as e:  # e.g. no execution context while a navigation replaces the document
                value, error = None, e
            if value:
                return value
            if time.monotonic() >= deadline:
                last = f"\nlast error: {error}" if error else ""
                raise AssertionError(f"timed out after {timeout}s waiting for {what or expression}{last}\n{self.diagnostics()}")
            time.sleep(interval)

    def text(self, selector):
        return self.evaluate(f"document.querySelector({json.dumps(selector)}).innerText")

    def texts(self, selector):
        """innerText of every element matching ``selector``."""
        return self.evaluate(f"Array.from(document.querySelectorAll({json.dumps(selector)}), e => e.innerText)")

    def fill(self, selector, value):
        """Set an input's value as typing would (with an ``input`` event)."""
        ok = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false;"
            f" e.focus(); e.value = {json.dumps(value)};"
            f" e.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()")
        if not ok:
            raise AssertionError(f"no element {selector} to fill\n{self.diagnostics()}")

    def submit(self, selector):
        """Submit a form as pressing Enter or its button would (its submit handler runs)."""
        ok = self.evaluate(
            f"(() => {{ const f = document.querySelector({json.dumps(selector)}); if (!f) return false;"
            f" f.requestSubmit(); return true; }})()")
        if not ok:
            raise AssertionError(f"no form {selector} to submit\n{self.diagnostics()}")

    def blur(self):
        """Take the focus off any input (no caret or focus ring in a screenshot)."""
        self.evaluate("document.activeElement && document.activeElement.blur(), true")

    def screenshot(self, path=None):
        """A PNG of the viewport, as bytes; written to ``path`` when given."""
        data = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png", "fromSurface": True})["data"])
        if path:
            with open(path, "wb") as f:
                f.write(data)
        return data

    def console(self):
        """The page's console messages and uncaught exceptions so far, as text lines."""
        lines = []
        for e in self.browser.events(self.session_id):
            if e["method"] == "Runtime.consoleAPICalled":
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in e["params"].get("args", []))
                lines.append(f"console.{e['params'].get('type')}: {args}")
            elif e["method"] == "Runtime.exceptionThrown":
                d = e["params"].get("exceptionDetails", {})
                lines.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        return lines

    def diagnostics(self):
        try:
            body = self.evaluate("document.body ? document.body.innerText : document.documentElement.outerHTML", timeout=5)
        except Exception as e:  # the failure message must not hide the original failure
            body = f"<could not read the page: {e!r}>"
        console = "\n".join(self.console()) or "(none)"
        return (f"--- page text ---\n{body}\n--- console ---\n{console}\n"
                f"--- chromium stderr (tail) ---\n{self.browser.stderr(1500)}")

    def close(self):
        try:
            self.browser.send("Target.closeTarget", {"targetId": self.target_id}, timeout=5)
        except CDPError:
            pass
