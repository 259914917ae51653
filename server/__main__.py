"""Standalone protocol server, for development and tests.

    python -m shmchannels.server --bind 127.0.0.1:8001 --prefix myapp [options]

The real deployment runs protocol servers under ``shmchannels serve`` (the
master binds the sockets and builds ``ProtocolServer`` itself).  Signals:
TERM/INT stop gracefully (WebSockets closed with 1001), USR2 stops as a
rolling restart would (1012).
"""

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys

from shmchannels.options import LayerOptions

from .config import BODY_CAPACITY, REPLY_CAPACITY, ProtocolConfig, layer_options, protocol_config

#: the layer's options this command line sets, with their types (the rest
#: keep LayerOptions' defaults)
LAYER_FLAGS = {"capacity": int, "expiry": float, "group_expiry": int, "ring_size": int, "max_message_size": int,
               "spin_us": float, "park_timeout": float}


def build_parser():
    defaults = ProtocolConfig()
    ap = argparse.ArgumentParser(prog="python -m shmchannels.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bind", "-b", action="append", default=[], help="host:port, [v6]:port or unix:/path (repeatable)")
    ap.add_argument("--prefix", default=defaults.prefix, help="bus prefix of the channel layer")
    ap.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--access-log", action="store_true", help="print access-log lines to stderr")
    ap.add_argument("--reply-capacity", type=int, default=REPLY_CAPACITY)
    ap.add_argument("--body-capacity", type=int, default=BODY_CAPACITY, help="chunks a body channel holds")
    layer_defaults = LayerOptions()
    helps = {"capacity": "default channel capacity (http.request, websocket.*)",
             "spin_us": "layer spin before parking, microseconds"}
    for name, kind in LAYER_FLAGS.items():
        ap.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(layer_defaults, name), help=helps.get(name))
    for field in dataclasses.fields(ProtocolConfig):
        if field.name in ("prefix", "bind", "access_log", "forwarded_allow_ips"):
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif default is None or isinstance(default, str):
            ap.add_argument(flag, default=default)
        else:
            ap.add_argument(flag, type=type(default), default=default)
    ap.add_argument("--forwarded-allow-ips", default="127.0.0.1,::1", help='comma list of IPs/CIDRs, or "*"')
    return ap


def settings_from_args(args):
    """The command line as settings (name -> value) for the translation in
    ``config`` that every entry point uses."""
    settings = {k: v for k, v in vars(args).items() if k not in ("loop", "log_level", "access_log")}
    settings["bind"] = args.bind or ["127.0.0.1:8001"]
    return settings


def options_from_args(args):
    """(ProtocolConfig, LayerOptions) of this command line."""
    settings = settings_from_args(args)
    return protocol_config(settings), layer_options(settings)


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
    if not args.access_log:
        logging.getLogger("shmchannels.access").setLevel(logging.WARNING)
    config, options = options_from_args(args)

    import shmchannels

    from .server import ProtocolServer

    layer = shmchannels.ChannelLayer.from_options(options)
    server = ProtocolServer(layer, config)

    async def run():
        loop = asyncio.get_running_loop()
        for sig, code in ((signal.SIGTERM, 1001), (signal.SIGINT, 1001), (signal.SIGUSR2, 1012)):
            loop.add_signal_handler(sig, server.begin_shutdown, code)
        await server.serve()
        await server.wait_closed()

    loop_factory = None
    if args.loop in ("auto", "uvloop"):
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            if args.loop == "uvloop":
                sys.exit("uvloop is not installed (pip install 'shmchannels[uvloop]')")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
