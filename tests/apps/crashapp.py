"""A test application whose workers boot, then die with an error at once
(tests/runtime/test_serve.py: the master halts instead of respawning them forever)."""

import os
import threading

threading.Timer(0.3, os._exit, (1,)).start()

routes = {"work": lambda message: None}
