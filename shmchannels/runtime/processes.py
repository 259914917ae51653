"""What every child of the master does, whatever its kind."""

import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1

#: signals the master blocks around fork and a child keeps blocked until its
#: own handlers are installed (see arbiter._signals_held_until_ready)
HELD_SIGNALS = frozenset({
    signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH, signal.SIGCHLD,
})


def die_with_parent(sig=signal.SIGTERM):
    """Ask the kernel to send ``sig`` when the master dies (Linux), so that
    children of a master killed with SIGKILL shut down instead of lingering.
    The supervision tick also checks ``getppid()``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def set_title(title):
    try:
        from setproctitle import setproctitle

        setproctitle(title)
    except ImportError:
        pass


def use_uvloop(setting):
    """Install uvloop's event loop policy as the ``uvloop`` setting says
    (``auto``: when it is installed), before the process's ``asyncio.run``."""
    if setting not in ("auto", "on"):
        return
    try:
        import uvloop
    except ImportError:
        if setting == "on":
            raise
        return
    import asyncio

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def freeze_startup_objects():
    """Take what the process allocated while starting (the application's
    modules, Django's settings and URL patterns, ...) out of the garbage
    collector's reach, just before it takes work.  Otherwise every gen-2
    collection walks all of it: 20-35 ms for a Django app on this box, a
    pause that every connection of the process sees, and one tends to fall
    right on a HUP's handover (docs/decisions.md).  Collected first, so no
    garbage is frozen with it."""
    gc.collect()
    gc.freeze()


def layer(cfg, **kwargs):
    """The ASGI 1 layer a process run with ``cfg`` uses (its options from
    ``config.options``, the translation every entry point shares)."""
    import shmchannels
    from shmchannels.runtime import config

    return shmchannels.ChannelLayer.from_options(config.options(cfg)[1], bridge_options=config.bridge_options(cfg),
                                                 **kwargs)


def attached_layer(glog, cfg, **kwargs):
    """``layer(cfg)`` for a booting child; a bus it cannot attach (BusError)
    is logged and ends the child with ``child_exits.BUS_UNAVAILABLE``."""
    from shmchannels.exceptions import BusError
    from shmchannels.runtime.child_exits import BUS_UNAVAILABLE

    try:
        built = layer(cfg, **kwargs)
        built.core.bus  # attaches: a layer attaches on first use
        return built
    except BusError as exc:
        glog.error("cannot attach the bus: %s", exc)
        sys.exit(BUS_UNAVAILABLE)


def wire_logging(glog, level_name):
    """Send the ``shmchannels.*`` loggers where gunicorn's error log goes."""
    logger = logging.getLogger("shmchannels")
    logger.handlers = list(glog.error_log.handlers)
    logger.setLevel(getattr(logging, str(level_name).upper(), logging.INFO))
    logger.propagate = False


def close_fds(sockets):
    for s in sockets:
        try:
            s.close()
        except OSError:
            pass


def parent_alive(ppid):
    return os.getppid() == ppid
