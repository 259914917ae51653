"""Routing, the consumer runner and the WSGI adapter, driven through a real bus."""

import logging
import threading
import time

import pytest

import shmchannels
from shmchannels import objects
from shmchannels.workers.message import Message
from shmchannels.workers.routing import Router, include, route
from shmchannels.workers.runner import ConsumerRunner, select_channels
from shmchannels.workers.wsgi import WsgiConsumer, build_environ


@pytest.fixture
def layer(prefix):
    lay = shmchannels.ChannelLayer(prefix=prefix, capacity=1000, block_timeout=0.2)
    objects.use_layer(lay)
    yield lay
    lay.flush()
    objects._default = None


def msg(layer, channel, **content):
    return Message(content, channel, layer)


# ---------------------------------------------------------------- routing


def consumer_a(message, **kw):
    return "a", kw


def consumer_b(message, **kw):
    return "b", kw


def test_dict_routing_and_dotted_paths(layer):
    router = Router({"thumbnail": consumer_a, "other": "test_workers.consumer_b"})
    assert router.channels() == {"thumbnail", "other"}
    assert router.match(msg(layer, "thumbnail")) == (consumer_a, {})
    assert router.match(msg(layer, "other")) == (consumer_b, {})
    assert router.match(msg(layer, "nowhere")) is None


def test_filters_named_groups_first_match_and_include(layer):
    router = Router([
        route("websocket.connect", consumer_a, path=r"^/chat/(?P<room>[^/]+)/$"),
        include([route("websocket.connect", consumer_b, path=r"^/(?P<slug>[a-z]+)/$")], path=r"^/blog"),
        route("websocket.connect", consumer_b),
    ])
    assert router.match(msg(layer, "websocket.connect", path="/chat/lobby/")) == (consumer_a, {"room": "lobby"})
    # include strips the part its own filter matched before the inner routes look
    assert router.match(msg(layer, "websocket.connect", path="/blog/news/")) == (consumer_b, {"slug": "news"})
    assert router.match(msg(layer, "websocket.connect", path="/elsewhere")) == (consumer_b, {})


def test_routing_errors_are_clear():
    with pytest.raises(ValueError, match="named groups"):
        route("x", consumer_a, path=r"^/(\d+)/$")
    with pytest.raises(TypeError, match="dict or a list"):
        Router(42)
    with pytest.raises(TypeError, match="Invalid channel name"):
        route("bad name", consumer_a)
    with pytest.raises(ImportError):
        Router({"x": "no_such_module_anywhere.consumer"}).resolve()


def test_select_channels_globs():
    chans = {"http.request", "websocket.connect", "websocket.receive", "thumbnail"}
    assert select_channels(chans, only=["websocket.*"]) == ["websocket.connect", "websocket.receive"]
    assert select_channels(chans, exclude=["websocket.*", "http.*"]) == ["thumbnail"]


# ------------------------------------------------------------------ runner


def run_until(runner, predicate, timeout=5):
    runner.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            time.sleep(0.01)
        assert predicate()
    finally:
        runner.stop()
        runner.join(5)


def test_runner_defers_sends_acks_websocket_messages_and_survives_exceptions(layer, caplog):
    reply = layer.process_prefix("websocket.send") + "conn1"
    seen = []

    def receive(message):
        seen.append(message["text"])
        message.reply_channel.send({"text": message["text"].upper()})
        if message["text"] == "boom":
            raise RuntimeError("consumer broke")

    router = Router({"websocket.receive": receive})
    runner = ConsumerRunner(layer, router)
    for order, text in enumerate(["hi", "boom", "bye"], start=1):
        layer.send("websocket.receive", {"reply_channel": reply, "path": "/", "text": text, "order": order})
    with caplog.at_level(logging.ERROR, logger="shmchannels.worker"):
        run_until(runner, lambda: len(seen) == 3)
        time.sleep(0.1)
    prefix = reply[: reply.index("!") + 1]
    got = []
    while (item := layer.receive([prefix]))[0] is not None:
        got.append(item[1])
    # the failing consumer's deferred reply was dropped, its socket told to
    # close with 1011 (internal error), its ack still sent
    assert got == [{"text": "HI"}, {"__ack__": 1}, {"close": 1011}, {"__ack__": 2}, {"text": "BYE"}, {"__ack__": 3}]
    assert any("consumer broke" in r.getMessage() or r.exc_info for r in caplog.records)


def test_runner_says_who_took_a_message_that_asks(layer):
    """A message whose ``__taken__`` names a channel: the worker first sends
    its (slot, gen) (and the order of a WebSocket message) there, and the
    consumer never sees the key."""
    http_reply = layer.process_prefix("http.response") + "r1"
    ws_reply = layer.process_prefix("websocket.send") + "c1"
    where = layer.new_channel("shmchannels.taken?")
    seen = []

    def consumer(message):
        seen.append(dict(message.content))
        message.reply_channel.send({"text": "ok"} if "order" in message else {"status": 200, "content": b"ok"})

    runner = ConsumerRunner(layer, Router({"http.request": consumer, "websocket.receive": consumer}))
    layer.send("http.request", {"reply_channel": http_reply, "method": "GET", "path": "/", "__taken__": where})
    layer.send("websocket.receive", {"reply_channel": ws_reply, "path": "/", "text": "x", "order": 4, "__taken__": where})
    layer.send("http.request", {"reply_channel": http_reply, "method": "GET", "path": "/plain"})
    run_until(runner, lambda: runner.handled == 3)
    bus = layer.core.bus
    assert all("__taken__" not in m for m in seen) and len(seen) == 3

    def drain(reply):
        prefix = reply[: reply.index("!") + 1]
        got = []
        while (item := layer.receive([prefix]))[0] is not None:
            got.append(item[1])
        return got

    assert drain(http_reply) == [{"status": 200, "content": b"ok"}, {"status": 200, "content": b"ok"}]
    assert drain(ws_reply) == [{"text": "ok"}, {"__ack__": 4}]
    markers = []
    while (item := layer.receive([where]))[0] is not None:
        markers.append(item[1])
    markers.sort(key=lambda m: m["reply_channel"])  # the runner takes its channels in rotation
    assert markers == [{"__taken__": [bus.slot, bus.gen], "reply_channel": http_reply},
                       {"__taken__": [bus.slot, bus.gen, 4], "reply_channel": ws_reply}]
    assert bus.is_alive(bus.slot, bus.gen)


def test_runner_answers_500_when_an_http_consumer_raises(layer):
    reply = layer.process_prefix("http.response") + "r1"
    runner = ConsumerRunner(layer, Router({"http.request": lambda m: 1 / 0}))
    layer.send("http.request", {"reply_channel": reply, "method": "GET", "path": "/"})
    run_until(runner, lambda: runner.handled == 1)
    ch, response = layer.receive([reply[: reply.index("!") + 1]])
    assert response["status"] == 500


def test_unrouted_messages_are_dropped_and_logged_once_per_channel(layer, caplog):
    # routes cover websocket.receive only for /chat/, so /other/ is unrouted
    runner = ConsumerRunner(layer, Router([route("websocket.receive", consumer_a, path=r"^/chat/")]))
    for i in range(3):
        layer.send("websocket.receive", {"path": "/other/", "text": str(i)})
    with caplog.at_level(logging.WARNING, logger="shmchannels.worker"):
        run_until(runner, lambda: runner.handled == 3)
    warnings = [r for r in caplog.records if "no route matches" in r.getMessage()]
    assert len(warnings) == 1


def test_runner_reports_the_oldest_busy_consumer(layer):
    started = threading.Event()
    release = threading.Event()

    def slow(message):
        started.set()
        release.wait(5)

    runner = ConsumerRunner(layer, Router({"slow": slow}))
    runner.start()
    try:
        assert runner.busy_since() is None
        layer.send("slow", {})
        assert started.wait(5)
        t0 = runner.busy_since()
        assert t0 is not None and time.monotonic() - t0 < 5
    finally:
        release.set()
        runner.stop()
        runner.join(5)
    assert runner.busy_since() is None


# ------------------------------------------------------------------- WSGI


def request(layer, reply, **extra):
    content = {
        "reply_channel": reply, "http_version": "1.1", "method": "POST", "scheme": "https",
        "path": "/app/caf\u00e9", "query_string": b"a=1&b=%20", "root_path": "/app",
        "headers": [[b"host", b"example.com:8443"], [b"content-type", b"text/plain"],
                    [b"x-forwarded_for", b"evil"], [b"cookie", b"a=1"], [b"cookie", b"b=2"]],
        "body": b"hello", "body_channel": None, "client": ["10.0.0.1", 5555], "server": ["127.0.0.1", 8443],
    }
    content.update(extra)
    return content


def test_environ_follows_pep_3333(layer):
    env = build_environ(request(layer, "r!x"), layer, multithread=True)
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == "/app"
    assert env["PATH_INFO"] == "/caf\u00e9".encode().decode("latin-1")  # native string of the UTF-8 bytes
    assert env["QUERY_STRING"] == "a=1&b=%20"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_FORWARDED_FOR" not in env  # underscore header names are dropped
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", "8443")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("10.0.0.1", "5555")
    assert env["wsgi.url_scheme"] == "https" and env["wsgi.multithread"] is True
    assert env["wsgi.input"].read() == b"hello"


def replies(layer, reply):
    prefix = reply[: reply.index("!") + 1]
    out = []
    while (item := layer.receive([prefix]))[0] is not None:
        out.append(item[1])
    return out


def test_wsgi_list_body_is_one_message_and_close_is_called(layer):
    closed = []

    class Body(list):
        def close(self):
            closed.append(True)

    def app(environ, start_response):
        start_response("201 Created", [("Content-Type", "text/plain"), ("X-A", "1")])
        return Body([b"hel", b"lo"])

    reply = layer.process_prefix("http.response") + "a"
    WsgiConsumer(app)(Message(request(layer, reply), "http.request", layer))
    assert replies(layer, reply) == [{
        "status": 201, "headers": [[b"Content-Type", b"text/plain"], [b"X-A", b"1"]],
        "content": b"hello", "more_content": False,
    }]
    assert closed == [True]


def test_wsgi_iterator_streams_each_block_before_asking_for_the_next(layer):
    reply = layer.process_prefix("http.response") + "b"
    produced = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        for i in range(3):
            # by the time block i is produced, block i-1 must already be sent
            produced.append(len(replies_so_far))
            yield f"event {i}\n".encode()

    replies_so_far = []
    real_send = layer.send

    def spy(channel, message):
        replies_so_far.append(message)
        return real_send(channel, message)

    layer.send = spy
    try:
        WsgiConsumer(app)(Message(request(layer, reply), "http.request", layer))
    finally:
        del layer.send
    assert produced == [0, 1, 2]
    got = replies(layer, reply)
    assert got[0]["status"] == 200 and got[0]["more_content"] is True
    assert b"".join(m["content"] for m in got) == b"event 0\nevent 1\nevent 2\n"
    assert got[-1]["more_content"] is False


def test_wsgi_reads_a_streamed_body_from_the_body_channel(layer):
    body_channel = layer.new_channel("http.request.body?")
    for i in range(3):
        layer.send(body_channel, {"content": f"chunk{i};".encode(), "more_content": i < 2})

    def app(environ, start_response):
        data = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(data)))])
        return [data]

    reply = layer.process_prefix("http.response") + "c"
    WsgiConsumer(app)(Message(request(layer, reply, body=b"inline;", body_channel=body_channel), "http.request", layer))
    assert replies(layer, reply)[0]["content"] == b"inline;chunk0;chunk1;chunk2;"


def test_wsgi_app_errors_become_500(layer):
    def app(environ, start_response):
        raise ValueError("app bug")

    reply = layer.process_prefix("http.response") + "d"
    WsgiConsumer(app)(Message(request(layer, reply), "http.request", layer))
    assert replies(layer, reply)[0]["status"] == 500


def test_wsgi_large_response_is_split_into_messages(layer):
    big = b"x" * (1300 * 1024)

    def app(environ, start_response):
        start_response("200 OK", [])
        return [big]

    reply = layer.process_prefix("http.response") + "e"
    WsgiConsumer(app)(Message(request(layer, reply), "http.request", layer))
    got = replies(layer, reply)
    assert len(got) == 3 and b"".join(m["content"] for m in got) == big
    assert [m["more_content"] for m in got] == [True, True, False]
