"""`shmchannels dev`: protocol server and worker threads in one process, with autoreload."""

import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from serving import wait_for
from shmchannels import segments

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


def test_dev_serves_and_reloads_on_change(prefix, tmp_path):
    (tmp_path / "devapp.py").write_text(APP.format(version="one"))
    log = open(tmp_path / "dev.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmchannels", "dev", "--routing", "devapp:routes", "--bind", "127.0.0.1:0",
         "--prefix", prefix],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
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
        log.close()
    assert rc == 0, output()
    assert segments.bus_files(segments.bus_stem(prefix)) == []


def _try_get(port):
    try:
        return get(port)
    except OSError:
        return None
