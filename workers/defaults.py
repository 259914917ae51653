"""Consumers a worker falls back on when the routing does not cover a channel,
as Channels 1's ``check_default`` did."""



def accept_connection(message):
    """Default ``websocket.connect``: accept."""
    message.reply_channel.send({"accept": True}, immediately=True)


def ignore(message):
    """Default ``websocket.receive`` / ``websocket.disconnect``: nothing to do."""


def no_http_consumer(message):
    """Default ``http.request`` when neither ``wsgi`` nor a route serves HTTP."""
    message.reply_channel.send(
        {
            "status": 404,
            "headers": [[b"content-type", b"text/plain; charset=utf-8"]],
            "content": b"No consumer serves http.request: set `wsgi` or route it.\n",
        },
        immediately=True,
    )


def reject_connection(message):
    """Fallback ``websocket.connect`` when connects are routed but none matched: 403 at once."""
    message.reply_channel.send({"close": True}, immediately=True)


def add_defaults(router, http_consumer=None):
    """Fallback routes, matched after everything the routing declares.

    * ``http.request``: the WSGI application, else a 404 (never silence,
      which would leave the client waiting for a 504);
    * ``websocket.connect``: accept all if the routing never mentions it
      (Channels 1's default), else reject the paths no route matched;
    * ``websocket.receive`` / ``websocket.disconnect``: nothing to do, and
      nothing to log.
    """
    routed = router.channels()
    router.add_default("http.request", http_consumer or no_http_consumer)
    router.add_default("websocket.connect", reject_connection if "websocket.connect" in routed else accept_connection)
    for channel in ("websocket.receive", "websocket.disconnect"):
        router.add_default(channel, ignore)
    return router
