"""The project's Redis channel layer (realtime.layers), against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer

from realtime.layers import ChannelQueue
from tests.conftest import LIVE_LAYER

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
