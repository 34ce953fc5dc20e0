"""The project's Redis channel layer (realtime.layers), against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer

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
