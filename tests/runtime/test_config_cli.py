"""Configuration precedence and the one-shot commands."""

import re
import json
import subprocess
import sys

import pytest
from gunicorn.errors import ConfigError

import shmchannels
from shmchannels.runtime.config import ShmConfig


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
    assert "workers" in out.stdout and "(config file" in out.stdout
    # the name column is as wide as the longest setting name
    assert re.search(r"^threads +\= 3  \(command line\)$", out.stdout, re.M), out.stdout
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


@pytest.mark.parametrize("setting, message", [
    ("capacity = 0", "capacity must be at least 1 (got 0)"),
    ("ring_size = 1000", "ring_size must be a power of two between 64 KiB and 1 GiB (got 1000)"),
    ('prefix = "bad prefix!"', "prefix must be 1-64 ASCII letters, digits, '_', '-' or '.', not starting with '-' or '.' (got 'bad prefix!')"),
    ("expiry = 0", "expiry must be a positive number of seconds (got 0.0)"),
    ("threads = 0", "threads must be at least 1 (got 0)"),
    ('uvloop = "yes"', "uvloop must be auto, on or off (got 'yes')"),
    ('bind = ["127.0.0.1:http"]', "bind must be HOST:PORT"),
    ('metrics = "127.0.0.1:http"', "metrics must be HOST:PORT with a port from 0 to 65535 (got '127.0.0.1:http')"),
    ('metrics = "example.com:9191"', "metrics must name an IP address or localhost, not 'example.com'"),
    ("max_message_size = 1048576\nws_max_size = 2097152", "ws_max_size 2097152 (config file"),
    ("protocol_servers = 0\nworkers = 0", "there would be nothing to run"),
])
def test_invalid_settings_fail_check_config_and_serve_with_the_rule(tmp_path, prefix, setting, message):
    conf = tmp_path / "shmchannels.toml"
    conf.write_text(f'{setting}\nbind = ["127.0.0.1:0"]\n' if not setting.startswith("bind") else setting + "\n")
    for args in (["--check-config"], ["--prefix", prefix] if "prefix" not in setting else []):
        out = run_cli("serve", "-c", str(conf), *args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], out.stderr
        assert "Booting" not in out.stderr and "Traceback" not in out.stderr
    from shmchannels.bus import segments

    assert segments.bus_files(segments.bus_stem(prefix)) == []


def test_rules_apply_to_environment_and_flags_and_name_the_source():
    with pytest.raises(ConfigError, match=r"^environment SHMCHANNELS_RING_SIZE: ring_size must be a power of two"):
        ShmConfig().load(None, environ={"SHMCHANNELS_RING_SIZE": "1000"})
    with pytest.raises(ConfigError, match=r"^command line --capacity: capacity must be at least 1 \(got 0\)"):
        ShmConfig().load(None, environ={}, cli={"capacity": "0"})
    # max_message_size is the user's limit, whatever ring_size is (large
    # messages travel in blobs); unset, it follows ws_max_size
    cfg = ShmConfig().load(None, environ={}, cli={"ring_size": str(1 << 16), "max_message_size": "300000",
                                                  "ws_max_size": "200000"}).cfg
    assert (cfg.ring_size, cfg.max_message_size) == (1 << 16, 300000)
    loaded = ShmConfig().load(None, environ={}, cli={"ring_size": str(1 << 16), "ws_max_size": str(16 << 20)})
    assert loaded.cfg.max_message_size == (16 << 20) + (64 << 10)
    loaded = ShmConfig().load(None, environ={}, cli={"ws_max_size": str(32 << 20)})
    assert loaded.cfg.max_message_size == (32 << 20) + (64 << 10)
    assert loaded.source("max_message_size") == "derived from ws_max_size"
    with pytest.raises(ConfigError, match=r"^ws_max_size 33554432 \(command line\) needs max_message_size of at "
                                          r"least 33619968 .* got 1048576 \(environment SHMCHANNELS_MAX_MESSAGE_SIZE\)"):
        ShmConfig().load(None, environ={"SHMCHANNELS_MAX_MESSAGE_SIZE": str(1 << 20)},
                         cli={"ws_max_size": str(32 << 20)})


def test_a_standalone_worker_is_not_held_to_protocol_server_limits(tmp_path, monkeypatch):
    # A worker runs no protocol server: ws_max_size (which it has no flag
    # for) must not stop it from taking a smaller max_message_size; serve
    # and dev, which run protocol servers, still refuse it.
    from shmchannels.runtime import cli

    monkeypatch.chdir(tmp_path)
    flags = ["--max-message-size", "60000", "--ring-size", "1048576"]
    _pconfig, options = cli.command_options(cli.build_parser().parse_args(["worker", *flags]))
    assert options.max_message_size == 60000
    with pytest.raises(ConfigError, match="ws_max_size 1048576 .* needs max_message_size of at least"):
        cli.command_options(cli.build_parser().parse_args(["dev", *flags]))
