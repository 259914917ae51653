"""A test application for `shmchannels serve`: consumers driven by tests."""

import os
import threading
import time

from shmchannels import Group, default_layer


def _version():
    path = os.environ.get("WORKAPP_VERSION_FILE")
    return open(path).read().strip() if path else "v0"


VERSION = _version()  # read at import: a new worker process picks up new "code"


def work(message):
    time.sleep(message.get("sleep", 0))
    message.reply_channel.send({"n": message["n"], "pid": os.getpid(), "version": VERSION,
                                "thread": threading.current_thread().name, "t": time.monotonic()})


def join(message):
    """Make a channel owned by this worker process and put it in a group."""
    mine = default_layer().process_prefix("worker.inbox") + "x"
    Group(message["group"]).add(mine)
    message.reply_channel.send({"channel": mine, "pid": os.getpid()})


def boom(message):
    raise RuntimeError("consumer failure on purpose")


def whoami(message):
    message.reply_channel.send({"pid": os.getpid()})


routes = {"work": work, "join": join, "boom": boom, "whoami": whoami}
