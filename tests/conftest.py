"""Fixtures shared by the suite: users, logged-in sockets, live Daphne processes.

`status_socket` gives a connected `WebsocketCommunicator` in one line:

    socket, status = await status_socket(user=alice)       # authenticated, first message read
    socket, status = await status_socket()                 # anonymous
    socket, status = await status_socket(cookies=client.cookies)  # the session of a test client

`live_servers` starts real Daphne processes on loopback (docs/testing.md).
"""

from __future__ import annotations

import os
import shutil

import pytest
from channels.layers import channel_layers
from django.db import connections

from tests.helpers import ORIGIN, open_status_socket
from tests.live import (
    LAYER_PREFIX,
    LiveServers,
    RedisServer,
    live_password_hash,
    live_redis_url,
    redis_available,
)

LIVE_LAYER = "realtime.layers.BlockingPoolRedisChannelLayer"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(available: bool, reason: str) -> None:
    """Skip a test whose dependency is missing, except under CI=true, where it fails."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing dependency is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's; at the end, before it drops a PostgreSQL test database, every other
    connection to it is closed: the pool's (settings) and those that threads of this process
    (Channels' database thread, the connect threads) still hold. They kept the database in use,
    and its drop failed with a warning ("being accessed by other users"), leaving it behind."""
    yield
    with django_db_blocker.unblock():
        connection = connections["default"]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            connection.close()
            connection.close_pool()


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    """Each test gets its own channel layer, bound to its own event loop."""
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-pass-1234")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-pass-1234")


@pytest.fixture
async def status_socket():
    """Open /ws/status/ sockets (see the module docstring); all are closed after the test."""
    opened = []

    async def open_socket(*, user=None, cookies=None, origin: bytes | None = ORIGIN):
        socket, status = await open_status_socket(user=user, cookies=cookies, origin=origin)
        opened.append(socket)
        return socket, status

    yield open_socket
    for socket in opened:
        await socket.disconnect()  # harmless if the server closed it already


@pytest.fixture
def redis_url() -> str:
    url = live_redis_url()
    require(redis_available(url), f"Redis is not reachable at {url}")
    return url


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of the test's own on a free loopback port, to stop, restart or flush.
    Override `redis_url` with its `.url` to put the live servers on it."""
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def live_servers(transactional_db, redis_url, tmp_path, settings):
    """Start Daphne processes sharing Redis and the test database: `live_servers.start(2)`.

    This process joins them on Redis too, so what it does (saving a user, say) reaches them.
    """
    layer = {**settings.CHANNEL_LAYERS["default"], "BACKEND": LIVE_LAYER}
    layer["CONFIG"] = {
        "hosts": [{"address": redis_url, "socket_timeout": None, "timeout": 30}],
        "prefix": LAYER_PREFIX,
    }
    settings.CHANNEL_LAYERS = {"default": layer}
    servers = LiveServers(
        redis_url=redis_url, log_dir=tmp_path, database=settings.DATABASES["default"]
    )
    yield servers
    servers.stop()


@pytest.fixture
def live_users(django_user_model):
    """alice and bob, whose password (tests.live.LIVE_PASSWORD) the live servers can verify."""
    return [
        django_user_model.objects.create(username=name, password=live_password_hash())
        for name in ("alice", "bob")
    ]
