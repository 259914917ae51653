"""Configuration precedence and the one-shot commands."""

import json
import subprocess
import sys

import pytest
from gunicorn.errors import ConfigError

import shmchannels
from shmchannels.config import ShmConfig


def test_precedence_is_defaults_then_file_then_env_then_cli(tmp_path):
    conf = tmp_path / "shmchannels.toml"
    conf.write_text('workers = 3\nthreads = 2\nprotocol-servers = 2\nbind = ["127.0.0.1:9001", "[::1]:9002"]\n')
    shm = ShmConfig().load(str(conf), environ={"SHMCHANNELS_THREADS": "5", "SHMCHANNELS_UNRELATED": "x"},
                           cli={"protocol_servers": "4"})
    cfg = shm.cfg
    assert (cfg.workers, cfg.threads, cfg.protocol_servers) == (3, 5, 4)
    assert cfg.bind == ["127.0.0.1:9001", "[::1]:9002"]
    assert shm.sources["workers"].startswith("config file")
    assert shm.sources["threads"] == "environment SHMCHANNELS_THREADS"
    assert shm.sources["protocol_servers"] == "command line"
    assert cfg.keepalive == 5  # shmchannels' default, not gunicorn's 2


def test_pyproject_table_is_found(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[tool.shmchannels]\nrouting = "app.routing:routes"\n')
    monkeypatch.chdir(tmp_path)
    assert ShmConfig().load().cfg.routing == "app.routing:routes"


def test_bad_settings_are_errors_naming_the_setting(tmp_path):
    conf = tmp_path / "shmchannels.toml"
    conf.write_text("wokers = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'wokers'"):
        ShmConfig().load(str(conf))
    with pytest.raises(ConfigError, match="threads"):
        ShmConfig().load(None, environ={"SHMCHANNELS_THREADS": "many"})


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "shmchannels", *args], capture_output=True, text=True, env=env, timeout=60)


def test_print_config_and_check_config(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('routing = "shmchannels.demo.routing:routes"\nworkers = 2\n')
    out = run_cli("serve", "-c", str(conf), "--print-config", "--threads", "3")
    assert out.returncode == 0
    assert "workers" in out.stdout and "(config file" in out.stdout and "threads                   = 3  (command line)" in out.stdout
    ok = run_cli("serve", "-c", str(conf), "--check-config")
    assert ok.returncode == 0 and "application loaded" in ok.stdout
    conf.write_text('routing = "nowhere.routing:routes"\n')
    bad = run_cli("serve", "-c", str(conf), "--check-config")
    assert bad.returncode == 1 and "nowhere" in bad.stderr


def test_send_group_send_and_status(prefix):
    layer = shmchannels.ChannelLayer(prefix=prefix)
    layer.group_add("room", "room.member")
    assert run_cli("send", "--prefix", prefix, "jobs", '{"id": 7, "name": "x"}').returncode == 0
    assert run_cli("group-send", "--prefix", prefix, "room", '{"text": "hi"}').returncode == 0
    assert layer.receive(["jobs"]) == ("jobs", {"id": 7, "name": "x"})
    assert layer.receive(["room.member"]) == ("room.member", {"text": "hi"})
    layer.send("jobs", {"pending": True})
    status = run_cli("status", "--prefix", prefix, "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    jobs = [c for c in data["channels"] if c["channel"] == "jobs"]
    assert jobs and jobs[0]["pending"] == 1 and jobs[0]["oldest_age"] is not None
    assert data["groups"] == {"room": 1}
    assert any(p["pid"] for p in data["processes"])  # this test process
    text = run_cli("status", "--prefix", prefix)
    assert "PROCESSES" in text.stdout and "jobs" in text.stdout
    bad = run_cli("send", "--prefix", prefix, "jobs", "[1, 2]")
    assert bad.returncode == 1 and "JSON object" in bad.stderr
    bad = run_cli("send", "--prefix", prefix, "bad name", "{}")
    assert bad.returncode == 1 and "Invalid channel name" in bad.stderr
    layer.flush()


def test_status_of_a_missing_bus(prefix):
    out = run_cli("status", "--prefix", prefix + "none")
    assert out.returncode == 1 and "No bus" in out.stderr
