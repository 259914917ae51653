"""The access log of a real `shmchannels serve`: lines are written in
batches off the request path, and none is lost on a clean stop; gunicorn's
``--access-logfile`` and ``--access-logformat`` work as they do in gunicorn."""

import os
import signal
import time

import httpx
import pytest

from serving import serving, wait_for

pytestmark = pytest.mark.slow

ROUTING = ["--routing", "faultapp:routes"]


def test_access_logfile_and_format_and_no_line_lost_on_a_clean_stop(prefix, tmp_path):
    path = tmp_path / "access.log"
    fmt = '%(h)s %(m)s %(U)s q=%(q)s %(s)s %(b)s trace=%({X-Trace}i)s missing=%({x-none}i)s %(p)s'
    n = 40
    with serving(prefix, [*ROUTING, "--access-logfile", str(path), "--access-logformat", fmt], workers=1) as s:
        with httpx.Client(base_url=f"http://127.0.0.1:{s.port}", timeout=5) as client:
            sizes = []
            for i in range(n):
                r = client.get(f"/?i={i}", headers={"X-Trace": f"t{i}"})
                assert r.status_code == 200
                sizes.append(len(r.content))
        protocol = s.pids("protocol")[0]
        # the last requests' lines are still in their batch here: the stop writes them
    lines = [line for line in path.read_text().splitlines() if "trace=t" in line]
    assert lines == [f"127.0.0.1 GET / q=i={i} 200 {sizes[i]} trace=t{i} missing=- <{protocol}>" for i in range(n)]
    # a file was asked for: the lines go there, not to the error log
    assert "trace=t" not in s.output() and '"GET /?i=0 HTTP/1.1" 200' not in s.output()


def test_the_default_access_log_goes_to_the_error_log_in_gunicorns_format(prefix):
    with serving(prefix, ROUTING, workers=1) as s:
        size = len(httpx.get(f"http://127.0.0.1:{s.port}/?x=1", headers={"User-Agent": "ua/9", "Referer": "http://r/"},
                             timeout=5).content)
    lines = [line for line in s.output().splitlines() if '"GET /?x=1 HTTP/1.1"' in line]
    assert len(lines) == 1, s.output()[-2000:]
    assert lines[0].endswith(f'"GET /?x=1 HTTP/1.1" 200 {size} "http://r/" "ua/9"')
    assert "[INFO] 127.0.0.1 - - [" in lines[0]  # the error log's prefix, as each line had before


def exited(pid):
    """Gone, or a zombie its parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("signame", ["SIGQUIT", "SIGINT"])
def test_a_quick_stop_still_writes_the_last_batch(prefix, tmp_path, signame):
    """SIGQUIT/SIGINT stop a protocol server at once (gunicorn's quick stop);
    the lines of its last batch (up to 50 ms old) are written first."""
    path = tmp_path / "access.log"
    with serving(prefix, [*ROUTING, "--access-logfile", str(path)], workers=1) as s:
        protocol = s.pids("protocol")[0]
        with httpx.Client(base_url=f"http://127.0.0.1:{s.port}", timeout=5) as client:
            for i in range(5):
                assert client.get(f"/?quick={i}").status_code == 200
        os.kill(protocol, getattr(signal, signame))
        wait_for(lambda: exited(protocol), what="the protocol server's exit")
    written = [line for line in path.read_text().splitlines() if "quick=" in line]
    assert len(written) == 5, written


def test_a_bad_access_log_format_falls_back_to_the_default_with_one_error(prefix, tmp_path):
    path = tmp_path / "access.log"
    with serving(prefix, [*ROUTING, "--access-logfile", str(path), "--access-logformat", "%(h)s %"], workers=1) as s:
        with httpx.Client(base_url=f"http://127.0.0.1:{s.port}", timeout=5) as client:
            for i in range(3):
                assert client.get(f"/?bad={i}").status_code == 200
                time.sleep(0.1)  # each in its own batch
    lines = [line for line in path.read_text().splitlines() if "bad=" in line]
    assert len(lines) == 3 and all('"GET /?bad=' in line for line in lines), lines
    assert s.output().count("cannot format a line") == 1, s.output()[-3000:]
    assert "Traceback" not in s.output()
