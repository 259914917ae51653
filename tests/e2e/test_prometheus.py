"""A real Prometheus server (Debian's ``prometheus``) scrapes `shmchannels
serve --metrics` on loopback, and its HTTP API returns shmchannels series."""

import re
import shutil
import signal
import socket
import subprocess
import time

import httpx
import pytest

from serving import serving, wait_for

pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_scrapes_serve_and_answers_queries(prefix, tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus (Debian package prometheus) is not installed")
    with serving(prefix, ["--routing", "faultapp:routes", "--metrics", "127.0.0.1:0"]) as s:
        m = wait_for(lambda: re.search(r"Metrics on http://127\.0\.0\.1:(\d+)/metrics", s.output()), what="metrics")
        target = f"127.0.0.1:{m.group(1)}"
        for _ in range(10):
            assert httpx.get(f"http://127.0.0.1:{s.port}/", timeout=5).status_code == 200
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            f"scrape_configs:\n  - job_name: shmchannels\n    static_configs:\n      - targets: ['{target}']\n"
        )
        web = f"127.0.0.1:{_free_port()}"
        proc = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address={web}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"),
        )
        try:
            def query(q):
                try:
                    r = httpx.get(f"http://{web}/api/v1/query", params={"query": q}, timeout=2)
                    return r.json()["data"]["result"] if r.status_code == 200 else []
                except (httpx.HTTPError, ValueError, KeyError):
                    return []

            started = time.monotonic()
            workers = wait_for(lambda: query('shmchannels_processes{kind="worker"}'), timeout=60,
                               what="shmchannels series in Prometheus")
            assert workers[0]["value"][1] == "2", workers
            assert query('up{job="shmchannels"}')[0]["value"][1] == "1"
            served = query('shmchannels_http_responses_total{status_class="2xx"}')
            assert float(served[0]["value"][1]) >= 10, served
            assert time.monotonic() - started < 60
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
