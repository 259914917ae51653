"""The gunicorn Application behind `shmchannels serve`.

``do_load_config`` re-reads the config file and environment on every HUP (the
command line stays as given) into a fresh config, which replaces the one in
use only once every setting and rule holds: a ConfigError propagates (the
CLI prints it on one line before anything is forked; a HUP logs it and keeps
running as before).  ``load`` runs in each *worker* process (unless
``preload_app``) and builds what workers run: the router, with the WSGI
consumer and Channels 1's default consumers.  Protocol servers never import
the application.
"""

import os
import sys

from gunicorn.app.base import BaseApplication
from gunicorn.errors import AppImportError

from shmchannels.runtime.config import ShmConfig

DEMO_ROUTING = "shmchannels.demo.routing:routes"


class WorkerBundle:
    """What a worker runs: the router (every consumer imported up front), or
    an ASGI 3 application (``asgi``; an ASGI 2 double callable is wrapped as
    uvicorn wraps it, by asgiref's ``guarantee_single_callable``)."""

    def __init__(self, cfg):
        from shmchannels.workers.defaults import add_defaults
        from shmchannels.workers.routing import Router, load_object
        from shmchannels.workers.wsgi import WsgiConsumer

        self.asgi = None
        self.router = None
        if cfg.asgi:
            from asgiref.compatibility import guarantee_single_callable

            try:
                app = load_object(cfg.asgi)
            except Exception as exc:  # a Django project's import can raise anything (ImproperlyConfigured...)
                raise AppImportError(f"cannot load the ASGI application: {type(exc).__name__}: {exc}") from exc
            if not callable(app):
                raise AppImportError(f"the ASGI application {cfg.asgi!r} is not callable: {app!r}")
            self.asgi = guarantee_single_callable(app)
            return
        try:
            routing = cfg.routing or (None if cfg.wsgi else DEMO_ROUTING)
            self.router = Router(routing) if routing else Router([])
            http_consumer = None
            if cfg.wsgi:
                http_consumer = WsgiConsumer(load_object(cfg.wsgi), multithread=cfg.threads > 1)
            add_defaults(self.router, http_consumer)
            self.router.resolve()
        except (ImportError, AttributeError, TypeError, ValueError, SyntaxError) as exc:
            raise AppImportError(f"cannot load the application: {type(exc).__name__}: {exc}") from exc


class ShmApplication(BaseApplication):
    def __init__(self, config_file=None, cli=None, environ=None):
        self.config_file = config_file
        self.cli = dict(cli or {})
        self.environ = environ
        super().__init__(usage="shmchannels serve [options]", prog="shmchannels")

    def do_load_config(self):
        shm = ShmConfig().load(self.config_file, self.environ, self.cli)
        shm.cfg.validate()
        self.shm, self.cfg = shm, shm.cfg
        self.chdir()

    def load_default_config(self):
        self.shm = ShmConfig()
        self.cfg = self.shm.cfg

    def load_config(self):
        self.shm.load(self.config_file, self.environ, self.cli)
        self.chdir()

    def chdir(self):
        """As gunicorn's WSGIApplication: the working directory and
        ``pythonpath`` come first on sys.path, so ``myapp.routing`` imports."""
        cfg = self.cfg
        if cfg.chdir and os.getcwd() != cfg.chdir:
            os.chdir(cfg.chdir)
        paths = [cfg.chdir] + ([p.strip() for p in cfg.pythonpath.split(",")] if cfg.pythonpath else [])
        for path in reversed(paths):
            if path and path not in sys.path:
                sys.path.insert(0, path)

    def load(self):
        return WorkerBundle(self.cfg)

    def run(self):
        from shmchannels.runtime.arbiter import ShmArbiter

        ShmArbiter(self).run()
