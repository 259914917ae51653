"""ASGI entry point of the ``djchat`` test project: ``djchat.asgi:application``.

A small Django project after the official Channels tutorial chat, for
tests/e2e/test_asgi_apps.py.  It must be importable with
``PYTHONPATH=tests/apps/djchat``.

Database: SQLite, ``$DJCHAT_DB/db.sqlite3`` (``DJCHAT_DB`` is a directory).
It is *not* migrated at import (two workers importing at once would race on
SQLite); migrate it once before starting the server::

    DJANGO_SETTINGS_MODULE=djchat.settings DJCHAT_DB=/tmp/x \\
        PYTHONPATH=tests/apps/djchat python -m django migrate --noinput

(``djchat.asgi.migrate()`` does the same in-process.)  The channel layer is
``SharedMemoryChannelLayer`` on the prefix ``$DJCHAT_PREFIX``.

* HTTP (plain Django views): ``/hello/`` -> ``hello``;
  ``/login/<username>/`` creates the user if needed and logs it in (session
  cookie); ``/whoami/`` -> the session's username or ``anonymous``.
* WebSocket, through ``AuthMiddlewareStack``: ``ws/chat/<room>/`` (the
  tutorial's async ``ChatConsumer``) and ``ws/syncchat/<room>/`` (its sync
  ``WebsocketConsumer`` variant).  Both join the group ``chat_<room>``: send
  ``{"message": ...}``, every member receives
  ``{"message": ..., "user": <username or "anonymous">, "via": "async"|"sync"}``.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djchat.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

# initialise Django (apps registry) before importing code that uses models
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
})


def migrate():
    """Create the SQLite schema (``manage.py migrate``)."""
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
