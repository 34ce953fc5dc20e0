"""The project's Redis channel layer (realtime.layers), against a real Redis."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref

import pytest
import redis.asyncio
import redis.utils
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient
from redis.asyncio.connection import AbstractConnection

from accounts.logins import end_user_logins
from asgi_project.asgi import application
from realtime import layers
from realtime.layers import (
    REDIS_DOWN,
    BlockingPoolRedisChannelLayer,
    ChannelQueue,
    add_to_groups,
    discard_from_groups,
    group_sizes,
    join_and_count,
)
from tests.conftest import LIVE_LAYER
from tests.helpers import ORIGIN, STATUS_PATH, assert_logged_out, cookie_header

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_layer(settings, redis_url):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": LIVE_LAYER,
            "CONFIG": {"hosts": [{"address": redis_url, "socket_timeout": None, "timeout": 30}]},
        }
    }
    return get_channel_layer()


async def test_closed_sockets_leave_nothing_in_the_receive_buffer(
    redis_layer, status_socket, alice
):
    sockets = [(await status_socket(user=alice))[0] for _ in range(30)]
    assert len(redis_layer.receive_buffer) <= 30
    for socket in sockets:
        await socket.disconnect()
    assert len(redis_layer.receive_buffer) == 0


async def test_more_concurrent_operations_than_connections_wait_instead_of_failing(
    settings, redis_url
):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": LIVE_LAYER,
            "CONFIG": {"hosts": [{"address": redis_url, "max_connections": 2, "timeout": 30}]},
        }
    }
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await asyncio.gather(*(layer.group_add(f"test.burst.{i}", channel) for i in range(50)))
    await asyncio.gather(*(layer.group_discard(f"test.burst.{i}", channel) for i in range(50)))


async def test_channel_queue_hands_over_in_order_and_drops_the_oldest_when_full():
    queue = ChannelQueue(capacity=3)
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # the consumer waits on an empty queue
    queue.put_nowait("first")
    queue.put_nowait("second")  # arrives before the waiting consumer has resumed
    assert await waiting == "first"
    assert await queue.get() == "second"
    for n in range(5):  # nobody reading: only the newest `capacity` are kept
        queue.put_nowait(n)
    assert queue.qsize() == 3
    assert [await queue.get() for _ in range(3)] == [2, 3, 4]


async def test_channel_queue_consumer_cancelled_while_waiting_loses_nothing_queued_later():
    queue = ChannelQueue(capacity=10)
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    queue.put_nowait("after")
    assert await asyncio.wait_for(queue.get(), 1) == "after"


@pytest.fixture
def private_layer(settings, private_redis):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": LIVE_LAYER,
            "CONFIG": {"hosts": [{"address": private_redis.url, "socket_timeout": None}]},
        }
    }
    return get_channel_layer()


def zrem_calls(private_redis) -> int:
    return private_redis.client().info("commandstats").get("cmdstat_zrem", {}).get("calls", 0)


async def test_sockets_leaving_at_once_share_one_zrem_per_group(private_layer, private_redis):
    groups = ["test.leave.login", "test.leave.user"]
    channels = [await private_layer.new_channel() for _ in range(50)]
    for channel in channels:
        await add_to_groups(private_layer, groups, channel)
    before = zrem_calls(private_redis)
    await asyncio.gather(*(discard_from_groups(private_layer, groups, c) for c in channels))
    assert zrem_calls(private_redis) - before == 2
    assert await group_sizes(private_layer, groups) == [0, 0]
    # A leave asked for later goes in a batch of its own.
    await add_to_groups(private_layer, groups, channels[0])
    await discard_from_groups(private_layer, groups[:1], channels[0])
    assert await group_sizes(private_layer, groups) == [0, 1]


async def test_a_batch_keeps_nothing_of_its_sockets_once_answered(private_layer):
    """The last batch of joins or leaves held its channel names and waiters until another batch
    came: after a wave of 10,000 closes, thousands of live objects pinned freed memory."""

    class Name(str):  # a channel name that can be watched
        pass

    groups = ["test.forget.login", "test.forget.user"]
    names = [Name(await private_layer.new_channel()) for _ in range(20)]
    watched = [weakref.ref(name) for name in names]
    await asyncio.gather(*(join_and_count(private_layer, groups, n) for n in names))
    await asyncio.gather(*(discard_from_groups(private_layer, groups, n) for n in names))
    assert await group_sizes(private_layer, groups) == [0, 0]
    del names
    await asyncio.sleep(0)  # the sending tasks' done callbacks
    gc.collect()
    assert [ref() for ref in watched] == [None] * 20


async def test_the_map_of_the_processs_channels_is_rebuilt_for_those_left_at_the_trim(
    private_layer,
):
    """After a wave of 10,000 sockets, the layer's `receive_buffer` keeps a table sized for all
    of them; at the trim it is rebuilt with the channels still open, and makes queues as before."""
    channels = [await private_layer.new_channel() for _ in range(10_000)]
    for channel in channels[3:]:
        private_layer.stop_delivering(channel)
    buffer = private_layer.receive_buffer
    size, entries = sys.getsizeof(buffer), dict(buffer)
    layers._compact_receive_buffers()
    assert private_layer.receive_buffer == entries and list(entries) == channels[:3]
    assert sys.getsizeof(private_layer.receive_buffer) < size // 20
    another = await private_layer.new_channel()
    queue = private_layer.receive_buffer[another]
    assert isinstance(queue, ChannelQueue) and queue.capacity == private_layer.capacity


async def test_joining_answers_how_many_live_members_each_group_has(private_layer, private_redis):
    """A connect joins and counts its groups in one pipeline; members past `group_expiry` are
    dead and not counted (channels-redis's own rule)."""
    groups = ["test.count.login", "test.count.user"]
    first, second = await private_layer.new_channel(), await private_layer.new_channel()
    assert await join_and_count(private_layer, groups, first) == [1, 1]
    assert await join_and_count(private_layer, groups[1:], second) == [2]
    dead_key = private_layer._group_key(groups[0])
    private_redis.client().zadd(dead_key, {"dead-channel": 1.0})  # joined in 1970
    assert await join_and_count(private_layer, groups, second) == [2, 2]  # a rejoin, not a third
    assert await group_sizes(private_layer, groups) == [2, 2]


async def test_sockets_joining_at_once_share_one_round_trip_and_count_in_turn(
    private_layer, redis_sends
):
    """A burst of connects joins in one pipeline; each socket's count is what it would have
    been alone, so a socket limit lets exactly as many in as joining one by one did."""
    groups = ["test.join.login", "test.join.user"]
    channels = [await private_layer.new_channel() for _ in range(50)]
    await join_and_count(private_layer, ["test.join.warm"], channels[0])  # loads the script
    redis_sends.clear()
    sizes = await asyncio.gather(*(join_and_count(private_layer, groups, c) for c in channels))
    assert len(redis_sends) == 1, redis_sends
    assert sizes == [[n, n] for n in range(1, 51)]
    assert await group_sizes(private_layer, groups) == [50, 50]
    key = private_layer._group_key(groups[0])
    assert 0 < await private_layer.connection(0).ttl(key) <= private_layer.group_expiry
    # A join asked for later goes in a batch of its own.
    assert await join_and_count(private_layer, groups[:1], channels[0]) == [50]


async def test_every_socket_in_a_batch_hears_that_redis_is_down(private_layer, private_redis):
    channels = [await private_layer.new_channel() for _ in range(3)]
    for channel in channels:
        await add_to_groups(private_layer, ["test.leave.down"], channel)
    private_redis.stop()
    results = await asyncio.gather(
        *(discard_from_groups(private_layer, ["test.leave.down"], c) for c in channels),
        return_exceptions=True,
    )
    assert all(isinstance(result, REDIS_DOWN) for result in results), results


@pytest.fixture
def redis_sends(monkeypatch) -> list[bytes]:
    """Every write redis-py makes to Redis (a command, or a whole pipeline): its round trips."""
    sends = []
    real_send = AbstractConnection.send_packed_command

    async def counting_send(self, command, *args, **kwargs):
        sends.append(command)
        return await real_send(self, command, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting_send)
    return sends


async def test_new_connections_do_not_read_package_metadata(private_layer, monkeypatch):
    """redis-py looked its own version up (`importlib.metadata`, about 1 ms) for every new
    connection; a burst of logouts opens several at once on the event loop."""
    lookups = []
    real_version = redis.utils.metadata.version
    monkeypatch.setattr(
        redis.utils.metadata, "version", lambda name: lookups.append(name) or real_version(name)
    )
    await asyncio.gather(*(private_layer.connection(0).ping() for _ in range(5)))
    assert lookups == []
    redis.asyncio.Connection()  # as redis-py makes them by default
    assert lookups == ["redis"]


async def test_a_group_message_takes_one_round_trip_to_send_and_one_to_receive(
    private_layer, redis_sends
):
    """channels-redis took four to send (expired members, members, expired messages, the
    script's text) and four per message received (back up, restore, pop, delete the backup)."""
    channels = [await private_layer.new_channel() for _ in range(3)]
    for channel in channels:
        await add_to_groups(private_layer, ["test.trips"], channel)

    async def send_and_receive(message: dict) -> list[dict]:
        receives = [asyncio.create_task(private_layer.receive(c)) for c in channels]
        await asyncio.sleep(0.1)  # the process's reader waits in BZPOPMIN
        await private_layer.group_send("test.trips", message)
        received = await asyncio.wait_for(asyncio.gather(*receives), 5)
        await asyncio.sleep(0.1)  # the reader waits again
        return received

    assert await send_and_receive({"type": "first"}) == [{"type": "first"}] * 3  # loads the script
    redis_sends.clear()
    assert await send_and_receive({"type": "second"}) == [{"type": "second"}] * 3
    assert len(redis_sends) == 2, redis_sends  # the script by SHA, the next BZPOPMIN


def layer_on(shards: int, url: str, **config) -> BlockingPoolRedisChannelLayer:
    """A layer on one Redis, or sharded over `shards` of its databases (channels-redis hashes
    each group and process channel to one of them)."""
    base = url.rsplit("/", 1)[0]
    hosts = [{"address": f"{base}/{n}", "socket_timeout": None} for n in range(shards)]
    return BlockingPoolRedisChannelLayer(hosts=hosts, **config)


@pytest.mark.parametrize("shards", [1, 2], ids=["one Redis", "sharded"])
async def test_messages_to_several_groups_share_the_round_trips_of_one(
    private_redis, redis_sends, shards
):
    """A logout's sends (its login's message, the sessions pages' notice) and the ended group's
    deletion share the round trips of one group message, and each process gets one message per
    group naming its members there."""
    layer, other_process = (layer_on(shards, private_redis.url) for _ in range(2))
    login, other = await layer.new_channel(), await layer.new_channel()
    await add_to_groups(layer, ["test.many.login", "test.many.user"], login)
    await add_to_groups(layer, ["test.many.user"], other)
    elsewhere = [await other_process.new_channel() for _ in range(20)]  # a list of 16 and more
    for channel in elsewhere:
        await add_to_groups(other_process, ["test.many.login"], channel)
    warm = await layer.new_channel()
    await add_to_groups(layer, ["test.many.warm"], warm)
    await layer.group_send("test.many.warm", {"type": "loads the script"})
    redis_sends.clear()
    logout = {"type": "logout", "reason": "logout", "at": 1.5, "bytes": b"\x00\xc0"}
    await layer.group_send_many(
        [
            ("test.many.login", logout),
            ("test.many.user", {"type": "sessions"}),
            ("test.many.nobody", {"type": "lost"}),
        ],
        drop=["test.many.login"],
    )
    if shards == 1:
        round_trips = 1  # one script
    else:  # a pipeline per shard of the groups (members, deletions), a script per shard of the
        # process channels that get messages (channels-redis hashes the names)
        groups = ["test.many.login", "test.many.user", "test.many.nobody"]
        processes = [layer.non_local_name(login), layer.non_local_name(elsewhere[0])]
        round_trips = len({layer.consistent_hash(name) for name in groups}) + len(
            {layer.consistent_hash(name) for name in processes}
        )
    assert len(redis_sends) == round_trips, redis_sends
    got = [await asyncio.wait_for(layer.receive(login), 5) for _ in range(2)]
    assert sorted(got, key=lambda m: m["type"]) == [logout, {"type": "sessions"}]
    assert await asyncio.wait_for(layer.receive(other), 5) == {"type": "sessions"}
    for channel in elsewhere:
        assert await asyncio.wait_for(other_process.receive(channel), 5) == logout
    assert await group_sizes(layer, ["test.many.login", "test.many.user"]) == [0, 2]


@pytest.mark.parametrize("shards", [1, 2], ids=["one Redis", "sharded"])
async def test_a_group_message_skips_a_full_channel_and_drops_expired_messages(
    private_redis, shards
):
    """channels-redis's rules, kept in the scripts: a process channel holding `capacity`
    messages gets no more (its reader has stopped), and messages past `expiry` go first."""
    layer = layer_on(shards, private_redis.url, capacity=2, expiry=60)
    channel = await layer.new_channel()  # no receive: nobody reads the process's channel
    await add_to_groups(layer, ["test.full"], channel)
    key = layer.prefix + layer.non_local_name(channel)
    redis = layer.connection(layer.consistent_hash(layer.non_local_name(channel)))
    await redis.zadd(key, {b"expired": 1.0})  # sent in 1970
    for n in range(4):
        await layer.group_send("test.full", {"type": "test", "n": n})
    messages = await redis.zrange(key, 0, -1)
    assert b"expired" not in messages
    assert [layer.deserialize(m)["n"] for m in messages] == [0, 1]  # the channel was full after
    assert 0 < await redis.ttl(key) <= 60


class InputQueue(ChannelQueue):
    """A socket's input queue as Daphne's is here (realtime/daphne_fixes.py, fix 5), with the
    `put` that the test communicator calls."""

    async def put(self, message) -> None:
        self.put_nowait(message)


async def test_under_daphne_a_socket_reads_its_events_from_its_own_input_queue(redis_layer, alice):
    client = AsyncClient()
    await client.aforce_login(alice)
    headers = [(b"origin", ORIGIN), (b"cookie", cookie_header(client.cookies))]
    sockets, queues = [], []
    for _ in range(2):
        socket = WebsocketCommunicator(application, STATUS_PATH, headers=headers)
        socket._input_queue = InputQueue(capacity=None)
        assert (await socket.connect(timeout=5))[0]
        assert (await socket.receive_json_from(timeout=5))["authenticated"]
        sockets.append(socket)
        queues.append(socket._input_queue)
    # The layer's reader puts the socket's events into that queue: no receive of its own, so
    # one task per socket (the first socket's also started the process's reader).
    assert all(any(q is queue for q in redis_layer.receive_buffer.values()) for queue in queues)
    tasks = len(asyncio.all_tasks())
    third = WebsocketCommunicator(application, STATUS_PATH, headers=headers)
    third._input_queue = InputQueue(capacity=None)
    assert (await third.connect(timeout=5))[0]
    await third.receive_json_from(timeout=5)
    assert len(asyncio.all_tasks()) - tasks == 1
    await third.disconnect()

    await sync_to_async(end_user_logins)(alice, "revoked")
    for socket in sockets:
        await assert_logged_out(socket, "revoked")
        await socket.disconnect()
    await asyncio.sleep(0.1)
    assert not redis_layer.receive_buffer  # every queue forgotten, the reader stopped
