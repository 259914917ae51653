"""A request body streamed to the worker through its own channel.

A body larger than ``body_inline`` cannot ride in ``http.request``: the
rest goes out on a ``http.request.body?`` channel in ``body_inline``-sized
``{"content", "more_content"}`` chunks.  A worker may read slower than the
client sends, so while that channel is full the connection stops reading
the socket (retrying 1 ms, doubling to 50 ms) and the server's memory stays
bounded by one chunk per connection, whatever the upload's size.
"""

import collections


class BodyStream:
    __slots__ = ("conn", "channel", "out", "buf", "ended", "backoff", "retry_handle")

    def __init__(self, conn, channel):
        self.conn = conn
        self.channel = channel
        self.out = collections.deque()  # chunks not yet accepted by the channel; None once over
        self.buf = bytearray()  # bytes short of a full chunk
        self.ended = False
        self.backoff = 0.001
        self.retry_handle = None

    def feed(self, data):
        buf = self.buf
        buf += data
        n = self.conn.config.body_inline
        if len(buf) >= n:
            out = self.out
            pos = 0
            view = memoryview(buf)
            while len(buf) - pos >= n:
                out.append({"content": bytes(view[pos:pos + n]), "more_content": True})
                pos += n
            view.release()
            del buf[:pos]

    def end(self):
        """The body is complete: what is left goes out as the last chunk."""
        buf = self.buf
        self.out.append({"content": bytes(buf), "more_content": False})
        buf.clear()
        self.ended = True

    def pump(self):
        out = self.out
        if out is None:
            return
        if self.retry_handle is not None:
            return  # a retry is scheduled; keep the order
        conn = self.conn
        layer = conn.layer
        channel = self.channel
        while out:
            try:
                layer.send(channel, out[0])
            except layer.ChannelFull:
                conn.body_blocked()
                self.retry_handle = conn.loop.call_later(self.backoff, self._retry)
                self.backoff = min(self.backoff * 2, 0.05)
                return
            out.popleft()
        self.backoff = 0.001
        if self.ended:
            self.out = None
            layer.discard_channel(channel)
        conn.body_flowing()

    def _retry(self):
        self.retry_handle = None
        if not self.conn.closed and self.out is not None:
            self.pump()

    def cancel_retry(self):
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.retry_handle = None

    def abort(self):
        """The request ended before its body did: the worker reading it gets
        ``{"closed": True}`` instead of waiting for chunks that never come."""
        self.out = None
        layer = self.conn.layer
        try:
            layer.send(self.channel, {"closed": True})
        except (layer.ChannelFull, layer.MessageTooLarge):
            pass
        layer.discard_channel(self.channel)
