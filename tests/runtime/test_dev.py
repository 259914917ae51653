"""`shmchannels dev`: protocol server and worker threads in one process, with autoreload."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from serving import children_of, wait_for
from shmchannels.bus import segments

pytestmark = pytest.mark.slow

APP = '''
VERSION = "{version}"

def http(message):
    message.reply_channel.send({{"status": 200, "headers": [[b"content-type", b"text/plain"]], "content": VERSION.encode()}})

routes = {{"http.request": http}}
'''


def get(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        return resp.read().decode()


def start_dev(prefix, tmp_path):
    """`shmchannels dev` on the test app (version "one"), logging to tmp_path/dev.log."""
    (tmp_path / "devapp.py").write_text(APP.format(version="one"))
    with open(tmp_path / "dev.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "shmchannels", "dev", "--routing", "devapp:routes", "--bind", "127.0.0.1:0",
             "--prefix", prefix],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)


def test_dev_serves_and_reloads_on_change(prefix, tmp_path):
    proc = start_dev(prefix, tmp_path)
    try:
        output = lambda: (tmp_path / "dev.log").read_text()  # noqa: E731
        port = int(wait_for(lambda: re.search(r"serving on \('127\.0\.0\.1', (\d+)\)", output()), what="dev to listen").group(1))
        assert get(port) == "one"
        time.sleep(1.1)  # a new mtime the reloader can tell apart
        (tmp_path / "devapp.py").write_text(APP.format(version="two"))
        wait_for(lambda: "source changed, restarting" in output(), timeout=15, what="the reload")
        # the parent kept the listening socket: the port is the same
        wait_for(lambda: _try_get(port) == "two", timeout=15, what="the new code")
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(20)
    assert rc == 0, output()
    assert segments.bus_files(segments.bus_stem(prefix)) == []


def _try_get(port):
    try:
        return get(port)
    except OSError:
        return None


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def _port_free(port):
    """Nothing listens on ``port``: a connect is refused, and a server could bind it."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT does not count
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_dev_child_dies_with_the_parent(prefix, tmp_path, sig):
    proc = start_dev(prefix, tmp_path)
    child = None
    try:
        output = lambda: (tmp_path / "dev.log").read_text()  # noqa: E731
        port = int(wait_for(lambda: re.search(r"serving on \('127\.0\.0\.1', (\d+)\)", output()), what="dev to listen").group(1))
        assert get(port) == "one"
        (child,) = children_of(proc.pid)
        proc.send_signal(sig)
        rc = proc.wait(15)
        wait_for(lambda: _gone(child), timeout=5, what="the dev child to exit with its parent")
        wait_for(lambda: _port_free(port), timeout=5, what="the port to be free")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child is not None and not _gone(child):
            os.kill(child, signal.SIGKILL)
    if sig == signal.SIGTERM:
        assert rc == 0, output()
    wait_for(lambda: segments.bus_files(segments.bus_stem(prefix)) == [], timeout=5, what="the bus to be removed")
