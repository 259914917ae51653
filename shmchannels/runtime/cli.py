"""The `shmchannels` command.

    shmchannels serve      master + protocol servers + workers (gunicorn-style)
    shmchannels worker     one standalone worker against a running bus
    shmchannels dev        one process: protocol server + worker threads + autoreload
    shmchannels send       send a JSON message to a channel
    shmchannels group-send send a JSON message to a group
    shmchannels status     processes, channels and groups of a bus (--watch: like top)
    shmchannels metrics    Prometheus /metrics, /healthz, /readyz of any bus, by prefix
    shmchannels reload     HUP (workers) or roll protocol servers of a running master
"""

import argparse
import os
import signal
import sys

import orjson
from gunicorn.errors import AppImportError, ConfigError

from shmchannels import __version__, objects
from shmchannels.runtime import config as config_mod
from shmchannels.bus import control, segments

#: the settings `worker` and `dev` take as flags (a config file and the
#: environment set every setting; the layer and the protocol server get their
#: options from all of them, as `serve`'s children do)
LAYER_FLAGS = ["prefix", "capacity", "reply_capacity", "expiry", "group_expiry", "ring_size", "max_message_size"]
PROTOCOL_FLAGS = [
    "bind", "backlog", "root_path", "http_timeout", "keepalive", "limit_request_line", "limit_request_fields",
    "limit_request_field_size", "limit_request_body", "proxy_headers", "forwarded_allow_ips", "ws_max_size",
    "ws_write_limit", "ws_ping_interval", "ws_ping_timeout", "websocket_connect_timeout", "ws_per_message_deflate",
    "ws_deflate_server_max_window_bits", "ws_deflate_client_max_window_bits", "ws_deflate_server_no_context_takeover",
    "ws_deflate_client_no_context_takeover",
    "http_write_limit", "http_write_timeout", "header_timeout", "body_timeout", "body_min_bytes", "limit_concurrency",
]
RELOAD_EXIT = 75  # a dev child asking its parent to restart it
DEV_STOP_TIMEOUT = 10.0  # seconds a stopping dev child gets before it is killed


def _prefix_arg(parser):
    parser.add_argument(
        "--prefix", default=None,
        help="bus prefix (default: from the config file, SHMCHANNELS_PREFIX, else 'asgi')",
    )


def _config_arg(parser):
    parser.add_argument("-c", "--config", default=None, metavar="FILE",
                        help="TOML config file (default: ./shmchannels.toml, else [tool.shmchannels] in ./pyproject.toml)")


def build_parser():
    parser = argparse.ArgumentParser(prog="shmchannels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"shmchannels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the master with protocol servers and workers")
    _config_arg(serve)
    serve.add_argument("--check-config", action="store_true", help="load the config and the application, then exit")
    serve.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    serve.add_argument("app", nargs="?", default=None, metavar="MODULE:APP",
                       help="an ASGI 3 application to host in the workers (the same as --asgi)")
    config_mod.add_arguments(serve)

    worker = sub.add_parser("worker", help="run one standalone worker against a running bus")
    _config_arg(worker)
    config_mod.add_arguments(worker, [
        "routing", "wsgi", "threads", "only_channels", "exclude_channels", *LAYER_FLAGS, "loglevel", "timeout",
        "graceful_timeout", "pythonpath", "chdir",
    ])

    dev = sub.add_parser("dev", help="one process for development: protocol server + worker threads + autoreload")
    _config_arg(dev)
    dev.add_argument("--no-reload", action="store_true", help="do not restart when source files change")
    config_mod.add_arguments(dev, [
        "routing", "wsgi", "threads", *LAYER_FLAGS, *PROTOCOL_FLAGS, "loglevel", "timeout", "graceful_timeout",
        "pythonpath", "chdir",
    ])

    send = sub.add_parser("send", help="send a JSON object as a message to a channel")
    _prefix_arg(send)
    send.add_argument("channel")
    send.add_argument("json", help='the message, e.g. \'{"text": "hello"}\'')

    gsend = sub.add_parser("group-send", help="send a JSON object as a message to a group")
    _prefix_arg(gsend)
    gsend.add_argument("group")
    gsend.add_argument("json")

    status = sub.add_parser("status", help="show processes, channels and groups of a bus")
    _prefix_arg(status)
    how = status.add_mutually_exclusive_group()
    how.add_argument("--json", action="store_true", help="machine-readable output")
    how.add_argument("--watch", action="store_true", help="refresh every second, like top (Ctrl-C stops)")

    metrics = sub.add_parser("metrics", help="serve Prometheus metrics and health checks of any bus, by prefix")
    _prefix_arg(metrics)
    metrics.add_argument("--listen", default="127.0.0.1:9191", metavar="HOST:PORT",
                         help="address of /metrics, /healthz and /readyz (default 127.0.0.1:9191; "
                              "a bare port binds to 127.0.0.1)")
    metrics.add_argument("--capacity", type=int, default=None,
                         help="/readyz fails while a channel holds this many messages (default: ring fill only)")

    reload = sub.add_parser("reload", help="roll the workers (HUP) or the protocol servers of a running master")
    _prefix_arg(reload)
    reload.add_argument("--protocol-servers", action="store_true",
                        help="roll protocol servers instead (their WebSockets close with 1012)")

    gc = sub.add_parser("gc", help="list (and with --remove, delete) buses of this user that no live process uses")
    mode = gc.add_mutually_exclusive_group()
    mode.add_argument("--remove", action="store_true", default=None, help="remove the dead buses (default on a tty)")
    mode.add_argument("--dry-run", action="store_false", dest="remove", help="only list them (default when not a tty)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args) or 0
    except BrokenPipeError:  # `shmchannels status | head`
        sys.stderr.close()
        return 0
    except (ConfigError, AppImportError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except (TypeError, ValueError) as exc:
        if args.command in ("send", "group-send", "status", "reload", "metrics"):
            print(f"Error: {exc}", file=sys.stderr)
            return 1
        raise


# ---------------------------------------------------------------- serve


def cmd_serve(args):
    from shmchannels.runtime.application import ShmApplication
    from shmchannels.runtime.arbiter import StartError

    cli = config_mod.cli_values(args)
    if args.app:
        if cli.get("asgi", args.app) != args.app:
            raise ConfigError(f"two ASGI applications on the command line: {args.app!r} and --asgi {cli['asgi']!r}")
        cli["asgi"] = args.app
    app = ShmApplication(config_file=args.config, cli=cli)
    if args.print_config:
        print(f"# config file: {app.shm.config_file or '(none)'}")
        print(app.shm.describe())
        return 0
    if args.check_config:
        app.load()  # imports the routing and the WSGI app, as a worker would
        print(f"Config OK ({app.shm.config_file or 'no config file'}); application loaded.")
        return 0
    try:
        app.run()
    except StartError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------- worker


def _shm_config(args):
    """The config of a `worker` or `dev` command line: file, environment, flags."""
    shm = config_mod.ShmConfig()
    shm.runs_protocol_servers = args.command != "worker"
    return shm.load(args.config, cli=config_mod.cli_values(args))


def command_options(args):
    """(ProtocolConfig, LayerOptions) that `worker` or `dev` run with for the
    parsed ``args``: the translation `serve`'s children use, on this config."""
    return config_mod.options(_shm_config(args).cfg)


def _load_shm_config(args):
    shm = _shm_config(args)
    cfg = shm.cfg
    if cfg.chdir and os.getcwd() != cfg.chdir:
        os.chdir(cfg.chdir)
    if cfg.pythonpath:
        for path in reversed(cfg.pythonpath.split(",")):
            sys.path.insert(0, path)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return shm


def _setup_logging(level):
    import logging

    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")


def _consumer_process(args, kind, label):
    """Config, logging, the application, the layer and the protocol server's
    config of a process that runs consumers outside `serve` (a standalone
    worker, the dev server)."""
    import shmchannels

    from shmchannels.runtime.application import WorkerBundle

    cfg = _load_shm_config(args).cfg
    pconfig, options = config_mod.options(cfg)
    _setup_logging(cfg.loglevel)
    if cfg.asgi:
        raise ConfigError(f"asgi ({cfg.asgi!r}) is hosted by `shmchannels serve`; `{args.command}` runs "
                          "Channels 1 consumers and WSGI only")
    bundle = WorkerBundle(cfg)
    layer = shmchannels.ChannelLayer.from_options(options, block_timeout=1.0)
    objects.use_layer(layer)  # Channel/Group in consumers use this bus
    bus = layer.core.bus
    bus.describe(kind, label)
    return cfg, pconfig, bundle, layer, bus


def cmd_worker(args):
    from shmchannels.workers.runner import ConsumerRunner, select_channels

    cfg, _, bundle, layer, bus = _consumer_process(args, "worker", "standalone worker")
    channels = select_channels(bundle.router.channels(), cfg.only_channels, cfg.exclude_channels)
    runner = ConsumerRunner(layer, bundle.router, channels, threads=cfg.threads)
    stopping = []

    def stop(signum, frame):
        if stopping:  # a second signal: leave now
            os._exit(1)
        stopping.append(signum)
        runner.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"shmchannels worker on bus {cfg.prefix!r}: {', '.join(channels)} ({cfg.threads} thread(s))", flush=True)
    runner.start()
    while runner.alive:
        busy = runner.busy_since()
        bus.beat(None if busy is None else int(busy * 1e9))
        runner.join(timeout=1.0)
    runner.stop()
    runner.join(timeout=cfg.graceful_timeout)
    return 0


# ------------------------------------------------------------------ dev


def cmd_dev(args):
    if args.no_reload or os.environ.get("SHMCHANNELS_DEV_CHILD"):
        return _dev_child(args)
    return _dev_parent(args)


def _dev_parent(args):
    """Bind once, then run the dev server in a child, restarting it when its
    sources change (the child watches its own modules and exits with
    RELOAD_EXIT).  Binding here keeps the port across restarts.

    The child never outlives the parent: TERM, INT, HUP and QUIT are passed
    on (the child stops gracefully, and is killed if it has not within
    DEV_STOP_TIMEOUT), and the child asks the kernel for a TERM when the
    parent dies (``processes.die_with_parent``), SIGKILL included."""
    import subprocess
    import time

    from gunicorn import sock as gsock

    shm = _shm_config(args)  # the child's config: the same file, environment and flags
    argv = [sys.executable, "-m", "shmchannels"] + sys.argv[1:]
    listeners = gsock.create_sockets(shm.cfg, _PrintLog())
    fds = [lst.sock.fileno() for lst in listeners]
    for fd in fds:
        os.set_inheritable(fd, True)
    env = dict(os.environ, SHMCHANNELS_DEV_CHILD="1", SHMCHANNELS_DEV_FDS=",".join(map(str, fds)),
               SHMCHANNELS_DEV_PARENT=str(os.getpid()))
    child = None
    stop_at = []  # monotonic time of the first stop signal

    def stop_child():
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    def on_signal(signum, frame):
        if not stop_at:
            stop_at.append(time.monotonic())
        stop_child()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, on_signal)
    while True:
        child = subprocess.Popen(argv, env=env, pass_fds=fds)
        if stop_at:  # a signal came while the child was starting
            stop_child()
        while True:
            try:
                rc = child.wait(timeout=0.2 if stop_at else None)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() - stop_at[0] > DEV_STOP_TIMEOUT:
                    print(f"shmchannels dev: the server did not stop within {DEV_STOP_TIMEOUT:.0f} s; killing it",
                          file=sys.stderr, flush=True)
                    child.kill()
        if stop_at:
            return 0 if rc in (0, -signal.SIGTERM, -signal.SIGINT) else rc
        if rc != RELOAD_EXIT:
            return rc
        print("shmchannels dev: source changed, restarting", flush=True)


class _PrintLog:
    def info(self, msg, *args):
        print(msg % args, flush=True)

    debug = warning = error = info


def _dev_child(args):
    import asyncio
    import socket

    from shmchannels.server.server import ProtocolServer
    from shmchannels.workers.runner import ConsumerRunner

    parent = os.environ.get("SHMCHANNELS_DEV_PARENT") if os.environ.get("SHMCHANNELS_DEV_CHILD") else None
    if parent:
        from shmchannels.runtime.processes import die_with_parent

        die_with_parent(signal.SIGTERM)  # never serve on after `shmchannels dev` is gone
        if os.getppid() != int(parent):  # it went before we asked
            return 0
    cfg, pconfig, bundle, layer, bus = _consumer_process(args, "process", "shmchannels dev")
    runner = ConsumerRunner(layer, bundle.router, threads=max(cfg.threads, 4))
    runner.start()
    fds = os.environ.get("SHMCHANNELS_DEV_FDS")
    sockets = [socket.socket(fileno=int(fd)) for fd in fds.split(",")] if fds else []
    # With the parent's sockets, pconfig.bind is not used.
    if not args.no_reload:
        from gunicorn.reloader import Reloader

        Reloader(callback=lambda filename: os._exit(RELOAD_EXIT)).start()

    async def main():
        server = ProtocolServer(layer, pconfig, sockets)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.begin_shutdown)
        await server.serve()
        where = ", ".join(str(s.getsockname()) for s in sockets) or ", ".join(cfg.bind)
        print(f"shmchannels dev: serving on {where} (bus {cfg.prefix!r}); Ctrl-C to stop", flush=True)
        await server.wait_closed()

    asyncio.run(main())
    runner.stop()
    runner.join(timeout=5)
    return 0


# ------------------------------------------------------------- one-shots


def _resolve_prefix(args):
    if args.prefix:
        return args.prefix
    _, table = config_mod.find_config_file()
    return os.environ.get("SHMCHANNELS_PREFIX") or table.get("prefix") or "asgi"


def _json_dict(text):
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the message is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("the message must be a JSON object")
    return value


def cmd_send(args):
    import shmchannels

    layer = shmchannels.ChannelLayer(prefix=_resolve_prefix(args))
    layer.send(args.channel, _json_dict(args.json))
    print(f"sent to {args.channel}")


def cmd_group_send(args):
    import shmchannels

    layer = shmchannels.ChannelLayer(prefix=_resolve_prefix(args))
    layer.send_group(args.group, _json_dict(args.json))
    print(f"sent to group {args.group}")


def _existing_bus(prefix):
    stem = segments.bus_stem(prefix)
    if not os.path.exists(segments.path(segments.file_name(stem, "ctl"))):
        print(f"No bus with prefix {prefix!r} on this host (nothing in /dev/shm).", file=sys.stderr)
        return None
    from shmchannels import bus as bus_mod

    return bus_mod.attach(prefix, kind="cli", label="shmchannels status")


def cmd_gc(args):
    from shmchannels import bus as bus_mod
    from shmchannels.bus import gc

    remove = sys.stdout.isatty() if args.remove is None else args.remove
    reports = gc.collect(bus_mod.Bus, dry_run=not remove)
    if not reports:
        print("No buses of this user in /dev/shm.")
        return 0
    print(f"  {'prefix':<28} {'files':>5} {'KiB':>8}  state")
    for r in reports:
        if r.live_pid:
            state = f"in use (pid {r.live_pid})"
        elif r.removed:
            state = "dead: removed"
        elif r.kept_because:
            state = f"dead: kept, {r.kept_because}"
        else:
            state = "dead (run with --remove to delete)"
        print(f"  {r.prefix:<28} {r.files:>5} {r.bytes >> 10:>8}  {state}")
    return 0


def cmd_status(args):
    from shmchannels.runtime import metrics, status_view

    prefix = _resolve_prefix(args)
    bus = _existing_bus(prefix)
    if bus is None:
        return 1
    if args.watch:
        return status_view.watch(prefix, bus)
    snap = metrics.Snapshot(bus)
    sys.stdout.write(status_view.as_json(prefix, snap) if args.json else status_view.as_text(prefix, snap))
    return 0


def cmd_metrics(args):
    from shmchannels import bus as bus_mod
    from shmchannels.runtime import metrics

    prefix = _resolve_prefix(args)
    address = config_mod.metrics_address(args.listen)
    # TERM and INT end the wait below; blocked before the server's thread
    # starts, so that only sigwait ever takes them
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    bus = bus_mod.attach(prefix, kind="cli", label="shmchannels metrics")
    try:
        server = metrics.MetricsServer(address, lambda: bus, capacity=args.capacity).start()
    except OSError as exc:
        print(f"Error: cannot listen on {args.listen!r}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"metrics of bus {prefix!r} on {server.url}/metrics (and /healthz, /readyz)", flush=True)
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    server.stop()
    return 0


def cmd_reload(args):
    prefix = _resolve_prefix(args)
    stem = segments.bus_stem(prefix)
    mapping = segments.open_existing(segments.file_name(stem, "ctl"))
    if mapping is None:
        print(f"No bus with prefix {prefix!r}: is `shmchannels serve` running?", file=sys.stderr)
        return 1
    ctl = control.Control(mapping)
    slot = ctl.master_slot
    if slot is None:
        print(f"Bus {prefix!r} has no master (started without `shmchannels serve`?)", file=sys.stderr)
        return 1
    pid = ctl.read_slot(slot).pid
    sig = signal.SIGUSR2 if args.protocol_servers else signal.SIGHUP
    os.kill(pid, sig)
    what = "protocol servers" if args.protocol_servers else "workers"
    print(f"asked master {pid} to roll its {what}")
    return 0


COMMANDS = {
    "serve": cmd_serve,
    "worker": cmd_worker,
    "dev": cmd_dev,
    "send": cmd_send,
    "group-send": cmd_group_send,
    "status": cmd_status,
    "metrics": cmd_metrics,
    "reload": cmd_reload,
    "gc": cmd_gc,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
