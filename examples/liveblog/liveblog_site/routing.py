"""Channel routing: WebSockets on /liveblog join the "liveblog" group.

HTTP goes to Django through the WSGI adapter (``wsgi`` in shmchannels.toml).
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "liveblog_site.settings")
django.setup()

from shmchannels.workers.routing import route  # noqa: E402

from posts import consumers  # noqa: E402

routes = [
    route("websocket.connect", consumers.connect, path=r"^/liveblog/?$"),
    route("websocket.disconnect", consumers.disconnect, path=r"^/liveblog/?$"),
]
