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

from .config import ProtocolConfig, channel_capacity


def build_parser():
    defaults = ProtocolConfig()
    ap = argparse.ArgumentParser(prog="python -m shmchannels.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bind", "-b", action="append", default=[], help="host:port, [v6]:port or unix:/path (repeatable)")
    ap.add_argument("--prefix", default=defaults.prefix, help="bus prefix of the channel layer")
    ap.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--access-log", action="store_true", help="print access-log lines to stderr")
    ap.add_argument("--reply-capacity", type=int, default=10_000)
    ap.add_argument("--body-capacity", type=int, default=8, help="chunks a body channel holds")
    ap.add_argument("--capacity", type=int, default=100, help="default channel capacity (http.request, websocket.*)")
    ap.add_argument("--spin-us", type=int, default=None, help="layer spin before parking (default: the layer's)")
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


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
    if not args.access_log:
        logging.getLogger("shmchannels.access").setLevel(logging.WARNING)
    kwargs = {}
    for field in dataclasses.fields(ProtocolConfig):
        if hasattr(args, field.name) and field.name not in ("access_log",):
            kwargs[field.name] = getattr(args, field.name)
    kwargs["bind"] = args.bind or ["127.0.0.1:8001"]
    config = ProtocolConfig(**kwargs)

    import shmchannels

    from .server import ProtocolServer

    extra = {} if args.spin_us is None else {"spin_us": args.spin_us}
    layer = shmchannels.ChannelLayer(
        prefix=config.prefix, capacity=args.capacity,
        channel_capacity=channel_capacity(args.reply_capacity, args.body_capacity), **extra,
    )
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
