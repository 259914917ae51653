"""SharedMemoryChannelLayer against the contract Django Channels 4 sets for a layer.

Channels does not ship its tests in its sdist, so this module restates, in
its own words, what channels 4.3.2's tests/test_layers.py (configuration
through CHANNEL_LAYERS, name validation) and the backend-independent parts of
tests/test_inmemorychannel.py (send/receive, capacity, ordering, groups,
expiry) check, aimed at our backend; then the two ways applications reach a
layer: ``async_to_sync`` from plain sync code, and a consumer's groups.
"""

import asyncio
import threading

import pytest
from asgiref.sync import async_to_sync
from channels import DEFAULT_CHANNEL_LAYER
from channels.exceptions import ChannelFull, InvalidChannelLayerError
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import BaseChannelLayer, channel_layers, get_channel_layer
from django.test import override_settings

from shmchannels.layers import SharedMemoryChannelLayer

BACKEND = "shmchannels.layers.SharedMemoryChannelLayer"


def _websocket_communicator():
    """``channels.testing.WebsocketCommunicator``.

    ``channels/testing/__init__.py`` also imports ChannelsLiveServerTestCase,
    which needs Daphne; our test extra does not install Daphne.  Without it,
    load the ``channels.testing`` submodules we need under a bare package
    object, so the communicator is still Channels' own class.
    """
    try:
        from channels.testing import WebsocketCommunicator

        return WebsocketCommunicator
    except ModuleNotFoundError as exc:
        if exc.name != "daphne" and not (exc.name or "").startswith("daphne."):
            raise
    import importlib
    import os
    import sys
    import types

    import channels

    sys.modules.pop("channels.testing", None)
    package = types.ModuleType("channels.testing")
    package.__path__ = [os.path.join(os.path.dirname(channels.__file__), "testing")]
    package.__package__ = "channels.testing"
    sys.modules["channels.testing"] = package
    package.ApplicationCommunicator = importlib.import_module("channels.testing.application").ApplicationCommunicator
    package.WebsocketCommunicator = importlib.import_module("channels.testing.websocket").WebsocketCommunicator
    return package.WebsocketCommunicator


WebsocketCommunicator = _websocket_communicator()


@pytest.fixture
def channel_layer_settings(django_settings, prefix):
    """``override_settings`` of CHANNEL_LAYERS with our backend as "default".

    The keyword arguments are the alias's entry besides BACKEND (CONFIG,
    TEST_CONFIG ...); CONFIG defaults to this test's bus prefix.
    """

    def make(**entry):
        entry.setdefault("CONFIG", {"prefix": prefix})
        return override_settings(CHANNEL_LAYERS={DEFAULT_CHANNEL_LAYER: {"BACKEND": BACKEND, **entry}})

    return make


@pytest.fixture
async def layer(prefix):
    """A layer with capacity 3, flushed afterwards (then ``prefix`` checks /dev/shm)."""
    layer = SharedMemoryChannelLayer(prefix=prefix, capacity=3)
    yield layer
    await layer.flush()
    await layer.close()


async def receive_within(layer, channel, seconds=1.0):
    async with asyncio.timeout(seconds):
        return await layer.receive(channel)


async def assert_nothing_within(layer, channel, seconds=1.0):
    with pytest.raises(TimeoutError):
        message = await receive_within(layer, channel, seconds)
        pytest.fail(f"{channel} received {message!r}")


# ------------------------------------------------- CHANNEL_LAYERS configuration


def test_test_config_builds_the_test_backend(channel_layer_settings, prefix):
    with channel_layer_settings(TEST_CONFIG={"prefix": prefix, "expiry": 100500}):
        layer = channel_layers.make_test_backend(DEFAULT_CHANNEL_LAYER)
        assert isinstance(layer, SharedMemoryChannelLayer)
        assert layer.expiry == 100500
        # And it works with such an expiry (about 28 hours, in nanoseconds in the ring).
        async_to_sync(layer.send)("cfg-test", {"type": "x"})
        assert async_to_sync(layer.receive)("cfg-test") == {"type": "x"}
        async_to_sync(layer.flush)()


def test_make_test_backend_without_test_config_is_an_error(channel_layer_settings):
    with channel_layer_settings():
        with pytest.raises(InvalidChannelLayerError):
            channel_layers.make_test_backend(DEFAULT_CHANNEL_LAYER)


def test_changing_channel_layers_resets_the_cache(channel_layer_settings, prefix):
    with channel_layer_settings(CONFIG={"prefix": prefix, "capacity": 7, "expiry": 30}):
        assert channel_layers.backends == {}
        layer = get_channel_layer()
        assert isinstance(layer, SharedMemoryChannelLayer)
        assert (layer.prefix, layer.capacity, layer.expiry) == (prefix, 7, 30)
        assert channel_layers.backends != {}
        assert get_channel_layer() is layer
    assert channel_layers.backends == {}


@pytest.mark.parametrize(
    "config, error",
    [
        # channels_redis's sharding over several servers, which the bridge does not take
        pytest.param({"hosts": [("localhost", 6379), ("localhost", 6380)]}, ValueError, id="hosts"),
        pytest.param({"no_such_option": 1}, TypeError, id="unknown-kwarg"),
        pytest.param({"capacity": 0}, ValueError, id="capacity-0"),
        pytest.param({"prefix": "not a prefix!"}, TypeError, id="bad-prefix"),
    ],
)
def test_errors_of_the_backend_constructor_are_not_hidden(channel_layer_settings, prefix, config, error):
    with channel_layer_settings(CONFIG={"prefix": prefix, **config}):
        with pytest.raises(error) as info:
            channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
        assert not isinstance(info.value, InvalidChannelLayerError)
        with pytest.raises(error):
            get_channel_layer()


# ------------------------------------------------------------- name validation

NAMES = [
    pytest.param("¯\\_(ツ)_/¯", False, id="shrug"),
    pytest.param("chat", True, id="chat"),
    pytest.param("chat" * 100, False, id="chat*100"),
]


@pytest.mark.parametrize("method", ["require_valid_channel_name", "require_valid_group_name"])
@pytest.mark.parametrize("name, valid", NAMES)
def test_name_validation(prefix, method, name, valid):
    check = getattr(SharedMemoryChannelLayer(prefix=prefix), method)
    if valid:
        assert check(name) is True
    else:
        with pytest.raises(TypeError):
            check(name)


@pytest.mark.parametrize("method, kind", [("require_valid_channel_name", "Channel"), ("require_valid_group_name", "Group")])
def test_too_long_name_error_message(prefix, method, kind):
    layer = SharedMemoryChannelLayer(prefix=prefix)
    with pytest.raises(TypeError) as info:
        getattr(layer, method)("a" * 101)
    assert str(info.value) == layer.invalid_name_error.format(kind)
    assert layer.invalid_name_error == BaseChannelLayer.invalid_name_error


@pytest.mark.parametrize(
    "name, valid", NAMES + [pytest.param("a" * 99, True, id="a*99"), pytest.param("a" * 100, False, id="a*100")]
)
async def test_layer_operations_validate_names(layer, name, valid):
    if valid:
        await layer.send(name, {"type": "ok"})
        await layer.group_add(name, "member")
        await layer.group_send(name, {"type": "ok"})
        return
    with pytest.raises(TypeError):
        await layer.send(name, {"type": "bad"})
    with pytest.raises(TypeError):
        await layer.receive(name)
    with pytest.raises(TypeError):
        await layer.group_add(name, "member")
    with pytest.raises(TypeError):
        await layer.group_add("group", name)
    with pytest.raises(TypeError):
        await layer.group_send(name, {"type": "bad"})


# ------------------------------------------------- send, receive, capacity


async def test_send_then_receive(layer):
    message = {"type": "test.message", "text": "Ahoy-hoy!"}
    await layer.send("test-channel-1", message)
    await layer.send("test-channel-1", message)
    assert await receive_within(layer, "test-channel-1") == message
    assert await receive_within(layer, "test-channel-1") == message
    await assert_nothing_within(layer, "test-channel-1", 0.2)


async def test_message_is_a_copy_taken_at_send(layer):
    message = {"type": "test.message", "values": [1, 2, 3]}
    await layer.send("copy-test", message)
    message["values"][0] = "changed"
    assert await receive_within(layer, "copy-test") == {"type": "test.message", "values": [1, 2, 3]}


async def test_fourth_send_over_capacity_3_raises_channel_full(layer):
    for _ in range(3):
        await layer.send("test-channel-1", {"type": "test.message"})
    with pytest.raises(ChannelFull):
        await layer.send("test-channel-1", {"type": "test.message"})
    # The three stored messages are intact.
    for _ in range(3):
        assert (await receive_within(layer, "test-channel-1"))["type"] == "test.message"


async def test_process_local_channel(layer):
    name = await layer.new_channel()
    assert "!" in name and name.startswith("specific.")
    await layer.send(name, {"type": "test.message", "text": "Local only please"})
    message = await receive_within(layer, name)
    assert message == {"type": "test.message", "text": "Local only please"}


async def test_messages_come_out_in_order(layer):
    for i in (1, 2, 3):
        await layer.send("test-channel-3", {"type": f"message.{i}"})
    assert [(await receive_within(layer, "test-channel-3"))["type"] for _ in range(3)] == [
        "message.1", "message.2", "message.3",
    ]


async def test_receive_waiting_before_the_send(layer):
    waiter = asyncio.create_task(layer.receive("late-channel"))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await layer.send("late-channel", {"type": "test.message", "text": "Ahoy-hoy!"})
    async with asyncio.timeout(2):
        assert (await waiter)["text"] == "Ahoy-hoy!"


# ---------------------------------------------------------------------- groups


async def test_groups_basic(layer):
    for member in ("test-gr-chan-1", "test-gr-chan-2", "test-gr-chan-3"):
        await layer.group_add("test-group", member)
    await layer.group_discard("test-group", "test-gr-chan-2")
    await layer.group_send("test-group", {"type": "message.1"})
    async with asyncio.timeout(1):
        assert (await layer.receive("test-gr-chan-1"))["type"] == "message.1"
        assert (await layer.receive("test-gr-chan-3"))["type"] == "message.1"
    await assert_nothing_within(layer, "test-gr-chan-2", 1.0)


async def test_group_send_to_a_full_member_never_raises(layer):
    await layer.group_add("test-group", "test-gr-chan-1")
    for _ in range(5):
        await layer.group_send("test-group", {"type": "message.1"})
    # Capacity 3: the first three were stored, the rest dropped.
    for _ in range(3):
        assert (await receive_within(layer, "test-gr-chan-1"))["type"] == "message.1"
    await assert_nothing_within(layer, "test-gr-chan-1", 0.5)


# ---------------------------------------------------------------------- expiry


async def test_expiry_single(layer, prefix):
    short = SharedMemoryChannelLayer(prefix=prefix, expiry=0.1)
    await short.send("test-channel-1", {"type": "message.1"})
    await asyncio.sleep(0.1)
    await assert_nothing_within(short, "test-channel-1", 0.5)


async def test_expiry_unread(layer, prefix):
    short = SharedMemoryChannelLayer(prefix=prefix, expiry=0.1)
    await short.send("test-channel-1", {"type": "message.1"})
    await asyncio.sleep(0.1)
    await short.send("test-channel-2", {"type": "message.2"})
    assert (await receive_within(short, "test-channel-2"))["type"] == "message.2"
    await assert_nothing_within(short, "test-channel-1", 0.5)


async def test_expiry_multi(layer, prefix):
    short = SharedMemoryChannelLayer(prefix=prefix, expiry=0.1)
    for i in (1, 2, 3):
        await short.send("test-channel-1", {"type": f"message.{i}"})
    assert (await receive_within(short, "test-channel-1"))["type"] == "message.1"
    await asyncio.sleep(0.1)
    await short.send("test-channel-1", {"type": "message.4"})
    # message.2 and message.3 expired and were dropped.
    assert (await receive_within(short, "test-channel-1"))["type"] == "message.4"
    await assert_nothing_within(short, "test-channel-1", 0.5)


# ----------------------------------------------------------- sync application code


def test_async_to_sync_round_trip_from_sync_code(channel_layer_settings):
    with channel_layer_settings():
        layer = get_channel_layer()

        def view(n):
            # What a Django view, a management command or a Celery task does.
            async_to_sync(layer.send)("sync-test", {"type": "hello", "n": n})
            return async_to_sync(layer.receive)("sync-test")

        assert view(1) == {"type": "hello", "n": 1}
        assert view(2) == {"type": "hello", "n": 2}
        # From other threads too (a threaded WSGI server), each with its own loop.
        results = []
        threads = [threading.Thread(target=lambda n=n: results.append(view(n))) for n in range(3, 6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(m["n"] for m in results) == [3, 4, 5]
        async_to_sync(layer.flush)()


async def test_sync_code_in_a_thread_wakes_a_waiting_consumer(layer):
    channel = await layer.new_channel()
    await layer.group_add("notifications", channel)
    waiter = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.1)  # parked on the ring by now

    def view():
        async_to_sync(layer.group_send)("notifications", {"type": "notify", "text": "from a view"})

    await asyncio.get_running_loop().run_in_executor(None, view)
    async with asyncio.timeout(2):
        assert await waiter == {"type": "notify", "text": "from a view"}


# ------------------------------------------------------------------- consumers


class RoomConsumer(AsyncJsonWebsocketConsumer):
    groups = ["room"]

    async def receive_json(self, content, **kwargs):
        await self.channel_layer.group_send(
            "room", {"type": "room.message", "text": content["text"], "sender": self.channel_name}
        )

    async def room_message(self, event):
        await self.send_json({"text": event["text"], "mine": event["sender"] == self.channel_name})


async def test_websocket_consumers_share_a_group(channel_layer_settings):
    with channel_layer_settings():
        alice = WebsocketCommunicator(RoomConsumer.as_asgi(), "/ws/room/")
        bob = WebsocketCommunicator(RoomConsumer.as_asgi(), "/ws/room/")
        try:
            assert (await alice.connect(timeout=5))[0]
            assert (await bob.connect(timeout=5))[0]
            await alice.send_json_to({"text": "hello room"})
            assert await alice.receive_json_from(timeout=2) == {"text": "hello room", "mine": True}
            assert await bob.receive_json_from(timeout=2) == {"text": "hello room", "mine": False}
            await bob.send_json_to({"text": "hi alice"})
            assert await alice.receive_json_from(timeout=2) == {"text": "hi alice", "mine": False}
            assert await bob.receive_json_from(timeout=2) == {"text": "hi alice", "mine": True}
            assert await alice.receive_nothing(timeout=0.2)
            assert await bob.receive_nothing(timeout=0.2)
            # Bob leaves: his consumer discards itself from the group.
            await bob.disconnect()
            await alice.send_json_to({"text": "anyone?"})
            assert await alice.receive_json_from(timeout=2) == {"text": "anyone?", "mine": True}
            assert await alice.receive_nothing(timeout=0.2)
        finally:
            await alice.disconnect()
            await bob.disconnect()
            await get_channel_layer().flush()
