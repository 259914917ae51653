"""Every entry point runs with the same options for the same settings.

`shmchannels serve` (its protocol-server and worker children, and the master),
`shmchannels worker`, `shmchannels dev` and `python -m shmchannels.server`
each turn their settings into a ProtocolConfig and LayerOptions through the
one translation in ``shmchannels.server.config``.  These tests feed each
of them the same settings, each one away from its default, and compare what
comes out field by field: an entry point that drops or re-derives a setting
fails here.
"""

import dataclasses
import os
import types

import pytest

from shmchannels.options import LayerOptions
from shmchannels.runtime import cli, config as config_mod, processes
from shmchannels.runtime.application import ShmApplication
from shmchannels.runtime.protocol_process import ProtocolServerProcess
from shmchannels.server import __main__ as standalone
from shmchannels.server.config import ProtocolConfig, channel_capacity

#: a value away from the default for every setting the translation reads
#: that `serve` has; (TOML literal, standalone flag arguments)
SETTINGS = {
    "bind": ('["127.0.0.1:9876"]', ["--bind", "127.0.0.1:9876"]),
    "backlog": ("512", ["--backlog", "512"]),
    "expiry": ("45.5", ["--expiry", "45.5"]),
    "group_expiry": ("3600", ["--group-expiry", "3600"]),
    "capacity": ("250", ["--capacity", "250"]),
    "reply_capacity": ("777", ["--reply-capacity", "777"]),
    "ring_size": ("4194304", ["--ring-size", "4194304"]),
    "max_message_size": ("600000", ["--max-message-size", "600000"]),
    "root_path": ('"/mounted"', ["--root-path", "/mounted"]),
    "proxy_headers": ("true", ["--proxy-headers"]),
    "forwarded_allow_ips": ('"10.1.2.3,192.168.0.0/16"', ["--forwarded-allow-ips", "10.1.2.3,192.168.0.0/16"]),
    "keepalive": ("7", ["--keepalive", "7"]),
    "limit_request_line": ("2000", ["--limit-request-line", "2000"]),
    "limit_request_fields": ("50", ["--limit-request-fields", "50"]),
    "limit_request_field_size": ("4000", ["--limit-request-field-size", "4000"]),
    "limit_request_body": ("123456", ["--limit-request-body", "123456"]),
    "http_timeout": ("12.5", ["--http-timeout", "12.5"]),
    "http_write_limit": ("300000", ["--http-write-limit", "300000"]),
    "http_write_timeout": ("33.5", ["--http-write-timeout", "33.5"]),
    "header_timeout": ("9.5", ["--header-timeout", "9.5"]),
    "body_timeout": ("8.5", ["--body-timeout", "8.5"]),
    "body_min_bytes": ("100", ["--body-min-bytes", "100"]),
    "limit_concurrency": ("900", ["--limit-concurrency", "900"]),
    "ws_max_size": ("500000", ["--ws-max-size", "500000"]),
    "ws_write_limit": ("2000000", ["--ws-write-limit", "2000000"]),
    "ws_ping_interval": ("3.5", ["--ws-ping-interval", "3.5"]),
    "ws_ping_timeout": ("4.5", ["--ws-ping-timeout", "4.5"]),
    "websocket_connect_timeout": ("6.5", ["--websocket-connect-timeout", "6.5"]),
    "ws_per_message_deflate": ("false", ["--no-ws-per-message-deflate"]),
    "ws_deflate_server_max_window_bits": ("10", ["--ws-deflate-server-max-window-bits", "10"]),
    "ws_deflate_client_max_window_bits": ("9", ["--ws-deflate-client-max-window-bits", "9"]),
    "ws_deflate_server_no_context_takeover": ("true", ["--ws-deflate-server-no-context-takeover"]),
    "ws_deflate_client_no_context_takeover": ("true", ["--ws-deflate-client-no-context-takeover"]),
    "timeout": ("40", ["--ack-timeout", "45"]),  # a worker's timeout: protocol servers wait 5 s more for its ack
    "graceful_timeout": ("17", ["--graceful-timeout", "17"]),
}

#: fields that `serve` has no setting for: every entry point keeps their default
DEFAULTED = {
    LayerOptions: {"slots", "spin_us", "park_timeout"},
    ProtocolConfig: {"server_header", "date_header", "body_inline", "max_pipelined", "ws_max_queue",
                     "ws_close_timeout", "access_log"},
}


@pytest.fixture(autouse=True)
def no_outside_settings(tmp_path, monkeypatch):
    """Only the settings a test gives: no SHMCHANNELS_* variables, no
    ./shmchannels.toml of the checkout."""
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("SHMCHANNELS_")]:
        monkeypatch.delenv(key)


@pytest.fixture
def config_file(tmp_path, prefix):
    path = tmp_path / "shmchannels.toml"
    lines = [f'prefix = "{prefix}"'] + [f"{name} = {toml}" for name, (toml, _) in SETTINGS.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def standalone_argv(prefix):
    argv = ["--prefix", prefix]
    for _, flags in SETTINGS.values():
        argv += flags
    return argv


def serve_children(config_file):
    """What `serve`'s master and children build (without forking them)."""
    cfg = ShmApplication(config_file=config_file, environ={}).cfg
    protocol = ProtocolServerProcess.protocol_config(types.SimpleNamespace(cfg=cfg))
    protocol_layer = processes.layer(cfg).options  # ProtocolServerProcess.load_wsgi
    worker_layer = processes.layer(cfg, block_timeout=1.0).options  # ChannelWorkerProcess.load_wsgi
    assert protocol_layer == worker_layer == config_mod.options(cfg)[1]  # the master's bus attach
    return protocol, protocol_layer


def command(argv):
    return cli.command_options(cli.build_parser().parse_args(argv))


def all_entry_points(config_file, prefix):
    return {
        "serve": serve_children(config_file),
        "worker": command(["worker", "-c", config_file]),
        "dev": command(["dev", "-c", config_file]),
        "python -m shmchannels.server": standalone.options_from_args(standalone.build_parser().parse_args(standalone_argv(prefix))),
    }


def fields(obj):
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def test_every_entry_point_builds_the_same_options_field_by_field(config_file, prefix):
    built = all_entry_points(config_file, prefix)
    serve_protocol, serve_layer = built["serve"]
    for where, (protocol, layer) in built.items():
        for ours, theirs in ((serve_protocol, protocol), (serve_layer, layer)):
            for name, value in fields(ours).items():
                assert getattr(theirs, name) == value, f"{where}: {type(ours).__name__}.{name}"
            assert theirs == ours, where
    # Each setting really was away from its default, so a dropped one shows.
    for obj, default in ((serve_protocol, ProtocolConfig()), (serve_layer, LayerOptions())):
        same = {name for name, value in fields(obj).items() if value == getattr(default, name)}
        assert same == DEFAULTED[type(obj)], f"{type(obj).__name__}: fields left at their default"
    assert serve_protocol.prefix == serve_layer.prefix == prefix
    assert serve_protocol.ack_timeout == 45
    assert serve_layer.channel_capacity == LayerOptions(channel_capacity=channel_capacity(777)).channel_capacity


def test_dev_and_worker_flags_mean_what_the_config_file_says(config_file, prefix):
    from_file = command(["dev", "-c", config_file])
    argv = ["dev", "--prefix", prefix]
    for name, (toml, _) in SETTINGS.items():
        if name in cli.LAYER_FLAGS + cli.PROTOCOL_FLAGS + ["timeout", "graceful_timeout"]:
            setting = config_mod.ShmConfig().cfg.settings[name]
            flag = setting.cli[-1]  # gunicorn's spelling (--keep-alive ...)
            if toml in ("true", "false"):  # a flag of its own: --proxy-headers, --no-ws-per-message-deflate
                argv += [flag] if toml == "true" else setting.cli_negated
            else:
                argv += [flag, toml.strip('"[]')]
    assert set(SETTINGS) <= set(cli.LAYER_FLAGS + cli.PROTOCOL_FLAGS + ["timeout", "graceful_timeout"])
    assert command(argv) == from_file
    worker_argv = ["worker", "-c", config_file, "--capacity", "99"]
    protocol, layer = command(worker_argv)
    assert layer == from_file[1].replace(capacity=99) and protocol == from_file[0]


def test_limits_of_zero_mean_no_limit_everywhere(tmp_path, prefix):
    conf = tmp_path / "zero.toml"
    conf.write_text(f'prefix = "{prefix}"\nlimit_request_line = 0\nlimit_request_fields = 0\n'
                    "limit_request_field_size = 0\nlimit_request_body = 0\n")
    serve, _ = serve_children(str(conf))
    args = standalone.build_parser().parse_args(["--prefix", prefix, "--limit-request-line", "0", "--limit-request-fields",
                                                 "0", "--limit-request-field-size", "0", "--limit-request-body", "0"])
    alone, _ = standalone.options_from_args(args)
    dev, _ = command(["dev", "-c", str(conf)])
    for config in (serve, alone, dev):
        assert (config.limit_request_line, config.limit_request_fields, config.limit_request_field_size,
                config.limit_request_body) == (1 << 20, 32768, 1 << 20, 0)


def test_the_translation_from_a_plain_mapping():
    from shmchannels.server.config import SETTING_NAMES, layer_options, protocol_config

    assert protocol_config({}) == ProtocolConfig(prefix="asgi")  # the layer's prefix, so the two agree
    assert layer_options({}) == LayerOptions(channel_capacity=channel_capacity())
    settings = {"prefix": "p", "timeout": 10, "bind": "a:1", "forwarded_allow_ips": "*", "unrelated": object()}
    config = protocol_config(settings)
    assert (config.prefix, config.ack_timeout, config.bind, config.forwarded_allow_ips) == ("p", 15, ["a:1"], ["*"])
    assert protocol_config({**settings, "ack_timeout": 3}).ack_timeout == 3
    assert layer_options({"body_capacity": 3, "spin_us": 0}).channel_capacity == \
        LayerOptions(channel_capacity=channel_capacity(body_capacity=3)).channel_capacity
    # every setting `serve` exposes that the translation reads is one it knows
    assert set(SETTINGS) | {"prefix"} <= SETTING_NAMES
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        layer_options({"capacity": 0})
    with pytest.raises(ValueError, match="ws_max_size must be >= 1"):
        protocol_config({"ws_max_size": 0})


def test_the_standalone_server_checks_the_layer_options_it_is_given():
    args = standalone.build_parser().parse_args(["--capacity", "0"])
    with pytest.raises(ValueError, match=r"capacity must be at least 1"):
        standalone.options_from_args(args)
