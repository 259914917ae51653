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


def add_defaults(router, http_consumer=None):
    """Make sure HTTP and WebSocket channels always have a consumer."""
    routed = router.channels()
    if "http.request" not in routed or http_consumer is not None:
        router.add_default("http.request", http_consumer or no_http_consumer)
    if "websocket.connect" not in routed:
        router.add_default("websocket.connect", accept_connection)
    for channel in ("websocket.receive", "websocket.disconnect"):
        if channel not in routed:
            router.add_default(channel, ignore)
    return router
