"""The 2016 talk's examples under examples/, run for real.

echo (WebSocket echo), liveblog (a Django model's save() broadcasting to a
group, from a view in a worker and from a script outside the server),
thumbnail (a view offloading work to a separate worker pool).
"""

import asyncio
import http.client
import io
import json
import os
import re
import subprocess
import sys
import time

import pytest

import serving
import websockets

from serving import Served, wait_for

pytestmark = pytest.mark.slow

EXAMPLES = os.path.join(serving.ROOT, "examples")


def started(prefix, args, cwd, env=None):
    s = Served(prefix, ["--bind", "127.0.0.1:0", "--chdir", cwd, *args], env=env, cwd=cwd)
    s.attach()
    s.port = int(wait_for(lambda: re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", s.output()), what="the port").group(1))
    wait_for(lambda: s.pids("worker") and s.pids("protocol"), what="children")
    return s


def finish(s):
    rc = s.stop()
    s.layer.core.bus.detach()
    assert rc == 0, s.output()


def test_echo(prefix):
    s = started(prefix, ["--routing", "routing:routes"], os.path.join(EXAMPLES, "echo"))
    try:
        async def talk():
            async with websockets.connect(f"ws://127.0.0.1:{s.port}/") as ws:
                for text in ("hello", "ünïcode ✓"):
                    await ws.send(text)
                    assert await asyncio.wait_for(ws.recv(), 10) == text

        asyncio.run(talk())
    finally:
        finish(s)


def test_liveblog_model_save_reaches_every_websocket(prefix, tmp_path):
    site = os.path.join(EXAMPLES, "liveblog")
    env = {"LIVEBLOG_DB": str(tmp_path / "db.sqlite3"), "SHMCHANNELS_PREFIX": prefix, "PYTHONPATH": site}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=site, env={**os.environ, **env}, check=True, timeout=120)
    # the example's own shmchannels.toml (wsgi + routing) is used: cwd=site
    s = started(prefix, [], site, env=env)
    try:
        async def scenario():
            a = await websockets.connect(f"ws://127.0.0.1:{s.port}/liveblog")
            b = await websockets.connect(f"ws://127.0.0.1:{s.port}/liveblog")
            try:
                # 1. a view running in a worker saves a post
                loop = asyncio.get_running_loop()
                body = "title=From+a+view&body=posted"
                status = await loop.run_in_executor(None, post, s.port, "/posts", body)
                assert status == 201
                for ws in (a, b):
                    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["title"] == "From a view"
                # 2. a script outside the server saves one (the talk's "send from a model save")
                await loop.run_in_executor(None, lambda: subprocess.run(
                    [sys.executable, "manage.py", "shell", "-c",
                     "from posts.models import Post; Post.objects.create(title='From a script')"],
                    cwd=site, env={**os.environ, **env}, check=True, timeout=60))
                for ws in (a, b):
                    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["title"] == "From a script"
            finally:
                await a.close()
                await b.close()

        asyncio.run(scenario())
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        conn.request("GET", "/")
        titles = [p["title"] for p in json.loads(conn.getresponse().read())["posts"]]
        conn.close()
        assert titles == ["From a script", "From a view"]
    finally:
        finish(s)


def post(port, path, body, content_type="application/x-www-form-urlencoded"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status


def test_thumbnail_job_runs_in_a_separate_worker_pool(prefix, tmp_path):
    from PIL import Image

    app_dir = os.path.join(EXAMPLES, "thumbnail")
    env = {"THUMBNAIL_MEDIA": str(tmp_path / "media")}
    # the web workers do not make thumbnails...
    s = started(prefix, ["--wsgi", "app:application", "--routing", "app:routes", "--exclude-channels", "thumbnail"],
                app_dir, env=env)
    pool = None
    try:
        buf = io.BytesIO()
        Image.new("RGB", (1024, 768), (200, 80, 40)).save(buf, "PNG")
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        conn.request("POST", "/images", body=buf.getvalue(), headers={"Content-Type": "image/png"})
        resp = conn.getresponse()
        assert resp.status == 202
        image_id = json.loads(resp.read())["id"]
        time.sleep(0.5)
        assert not os.path.exists(tmp_path / "media" / f"{image_id}.thumb.png")  # nobody listens on thumbnail yet
        # ...a separate pool does, and picks up the job that waited in its channel
        pool = subprocess.Popen(
            [sys.executable, "-m", "shmchannels", "worker", "--prefix", prefix, "--routing", "app:routes",
             "--only-channels", "thumbnail", "--pythonpath", app_dir],
            cwd=app_dir, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(tmp_path / "media" / f"{image_id}.thumb.png"), timeout=30, what="the thumbnail")
        with Image.open(tmp_path / "media" / f"{image_id}.thumb.png") as thumb:
            assert max(thumb.size) == 128 and thumb.size == (128, 96)
        conn.request("GET", f"/images/{image_id}")
        assert json.loads(conn.getresponse().read()) == {"id": image_id, "ready": True}
        conn.close()
    finally:
        if pool is not None:
            pool.terminate()
            out = pool.communicate(timeout=30)[0].decode()
            assert pool.returncode == 0, out
        finish(s)
