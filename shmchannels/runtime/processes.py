"""What every child of the master does, whatever its kind."""

import ctypes
import ctypes.util
import logging
import os
import signal

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


def layer_options(cfg, **extra):
    """Options of the ASGI 1 layer a child process uses, from the config."""
    from shmchannels.server.config import channel_capacity

    options = {
        "prefix": cfg.prefix,
        "expiry": cfg.expiry,
        "group_expiry": cfg.group_expiry,
        "capacity": cfg.capacity,
        "ring_size": cfg.ring_size,
        "max_message_size": cfg.max_message_size,
        "channel_capacity": channel_capacity(reply_capacity=cfg.reply_capacity),
    }
    options.update(extra)
    return options


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
