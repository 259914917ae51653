"""The built-in demo in a real browser: headless Chromium against `shmchannels serve`.

A real master (one protocol server, two workers, the demo's routing) serves
the page; Debian's ``chromium`` loads it and is driven over the Chrome
DevTools Protocol (tests/cdp.py, no Node, no browser download).  The page's
own JavaScript opens the WebSockets and submits the forms, so this covers
what a user sees: HTTP through a worker, the echo consumer, and a chat
message fanned out through a group to every socket in the room.

The last test also refreshes docs/demo.png (set SHMCHANNELS_DEMO_PNG to
write it elsewhere); it is written only when its pixels changed.
"""

import http.client
import io
import json
import os
import re
import time

import pytest

import serving

from cdp import CHROMIUM, Browser
from serving import Served

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"needs Chromium at {CHROMIUM}: apt-get install -y chromium (Debian; .ci/run installs it)"),
]

DOCS_PNG = os.path.join(serving.ROOT, "docs", "demo.png")
WIDTH, HEIGHT = 1280, 800

# [who, text] for each line of a log (#echo-log, #chat-log); who is "" for system lines
LOG_JS = """Array.from(document.querySelectorAll(%s), li => {
  const who = li.querySelector('.who');
  return [who ? who.textContent : '', who ? li.textContent.slice(who.textContent.length) : li.textContent];
})"""


def log_of(page, selector):
    return page.evaluate(LOG_JS % json.dumps(selector + " li"))


def wait_log_has(page, selector, entry, what, timeout=10.0):
    who, text = entry
    page.wait_for(f"{LOG_JS % json.dumps(selector + ' li')}.some(e => e[0] === {json.dumps(who)} && e[1] === {json.dumps(text)})",
                  timeout=timeout, what=what)


@pytest.fixture
def served(prefix):
    """`shmchannels serve` with the built-in demo on a free loopback port: (Served, base URL)."""
    s = Served(prefix, ["--bind", "127.0.0.1:0", "--protocol-servers", "1", "--workers", "2"])
    try:
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline and s.proc.poll() is None:
            m = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", s.output())
            port = m and int(m.group(1))
            time.sleep(0.02)
        assert port, f"shmchannels serve did not listen (exit status {s.proc.poll()}):\n{s.output()}"
        status = None
        while status != 200 and time.monotonic() < deadline:  # a worker answered through the protocol server
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/healthz")
                status = conn.getresponse().status
            except OSError:
                pass
            finally:
                conn.close()
            if status != 200:
                time.sleep(0.05)
        assert status == 200, f"/healthz answered {status}:\n{s.output()}"
        yield s, f"http://127.0.0.1:{port}/"
    finally:
        rc = s.stop()  # removes its log file unless the exit code says something went wrong
        output = s.output()
    # the prefix fixture then checks that the master removed the bus from /dev/shm
    assert rc == 0, f"shmchannels serve exited with {rc}:\n{output}"
    assert "Traceback" not in output, output


@pytest.fixture
def demo(served):
    """(browser, url): a headless Chromium, closed before the server stops."""
    _, url = served
    browser = Browser()
    try:
        yield browser, url
    finally:
        browser.close()


def open_demo(browser, url):
    """A page of the demo, its echo socket and its chat socket (room "lobby") open."""
    page = browser.new_page(WIDTH, HEIGHT)
    page.navigate(url)
    assert page.evaluate("document.title") == "shmchannels demo", page.diagnostics()
    page.wait_for("document.getElementById('echo-state').textContent === 'open'", what="the echo WebSocket to open")
    # room_connect adds the socket to the group before it accepts: "open" means a member of the room
    page.wait_for("document.getElementById('chat-state').textContent === 'open'", what="the chat WebSocket to open")
    return page


def echo(page, text):
    page.fill("#echo-input", text)
    page.submit("#echo-form")
    wait_log_has(page, "#echo-log", ["echo", text], what=f"the echo of {text!r}")


def chat(page, name, text):
    page.fill("#name", name)
    page.fill("#chat-input", text)
    page.submit("#chat-form")


def test_page_loads_and_the_echo_socket_echoes(demo):
    browser, url = demo
    page = open_demo(browser, url)
    assert page.text("h1") == "shmchannels demo"
    echo(page, "hello through shared memory")
    assert log_of(page, "#echo-log") == [["you", "hello through shared memory"], ["echo", "hello through shared memory"]]
    assert page.evaluate("document.getElementById('echo-input').value") == ""
    assert page.console() == [], page.diagnostics()


def test_a_chat_message_reaches_every_page_in_the_room(demo):
    browser, url = demo
    alice, bob = open_demo(browser, url), open_demo(browser, url)
    chat(alice, "alice", "hi everyone")
    for page, who in ((alice, "alice's page"), (bob, "bob's page")):
        wait_log_has(page, "#chat-log", ["alice", "hi everyone"], what=f"alice's message on {who}")
    chat(bob, "bob", "hi alice")
    for page, who in ((alice, "alice's page"), (bob, "bob's page")):
        wait_log_has(page, "#chat-log", ["bob", "hi alice"], what=f"bob's message on {who}")
    for page in (alice, bob):
        said = [e for e in log_of(page, "#chat-log") if e[0]]
        assert said == [["alice", "hi everyone"], ["bob", "hi alice"]], page.diagnostics()
        assert page.console() == [], page.diagnostics()
    bob.close()
    # bob's socket left the group: alice still chats on her own
    chat(alice, "alice", "anyone there?")
    wait_log_has(alice, "#chat-log", ["alice", "anyone there?"], what="alice's message after bob left")


def test_screenshot_of_the_demo_at_work(demo):
    from PIL import Image, ImageChops, ImageStat

    browser, url = demo
    alice, bob = open_demo(browser, url), open_demo(browser, url)
    echo(alice, "Hello from headless Chromium")
    echo(alice, "Each message: socket \u2192 protocol server \u2192 ring \u2192 worker \u2192 back")
    lines = [(alice, "alice", "Hi Bob! This went through a worker and the room's group."),
             (bob, "bob", "Got it in my tab too \u2014 no broker involved."),
             (alice, "alice", "Same protocol server, two sockets, one group send.")]
    for page, name, text in lines:
        chat(page, name, text)
        for other in (alice, bob):
            wait_log_has(other, "#chat-log", [name, text], what=f"{name}'s message {text!r}")
    alice.fill("#chat-input", "")
    alice.blur()
    png = alice.screenshot()

    image = Image.open(io.BytesIO(png))
    assert image.size == (WIDTH, HEIGHT)
    assert max(hi - lo for lo, hi in ImageStat.Stat(image.convert("L")).extrema) > 100, "a blank screenshot"
    target = os.environ.get("SHMCHANNELS_DEMO_PNG") or DOCS_PNG
    try:
        with Image.open(target) as old:
            same = old.size == image.size and ImageChops.difference(old.convert("RGB"), image.convert("RGB")).getbbox() is None
    except OSError:
        same = False
    if not same:
        with open(target, "wb") as f:
            f.write(png)
