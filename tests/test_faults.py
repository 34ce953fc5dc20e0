"""Faults with real processes: Redis stopped, restarted and flushed, a full channel, groups older
than `group_expiry`, Daphne stopped with SIGTERM, the database unreachable while a tab connects.

Each test runs its own redis-server on a free loopback port (the shared one is never touched) and
its own Daphne processes; docs/reliability.md lists the guarantee and bound each one holds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psycopg
import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from accounts.models import Login
from realtime.groups import CLOSE_GOING_AWAY, CLOSE_TRY_AGAIN, EVENT_SESSIONS, login_group
from tests.conftest import require
from tests.live import (
    GROUP_KEYS,
    Browser,
    RedisServer,
    Server,
    database_url,
    live_password_hash,
    manage,
)

pytestmark = [pytest.mark.live, pytest.mark.timeout(90)]

RECHECK_SECONDS = 2


@pytest.fixture
def redis_url(private_redis) -> str:
    """The live servers (and this process's channel layer) use the private Redis."""
    return private_redis.url


async def close_code_of_new_socket(browser: Browser, server: Server) -> int:
    """Open a socket that the server is expected to close at once; return its close code."""
    async with websockets.connect(
        server.ws_url,
        origin=server.http_url,
        additional_headers={"Cookie": browser.cookie_header()},
        open_timeout=20,
    ) as connection:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(connection.recv(), 20)
        return connection.close_code


async def eventually_open_tab(browser: Browser, server: Server, *, within: float):
    """Open a tab, retrying while the server still refuses, as the page's client would."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await browser.open_tab(server)
        except (websockets.ConnectionClosed, websockets.InvalidStatus, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def until_members(private_redis: RedisServer, count: int, *, within: float = 10) -> None:
    """Wait until the Redis groups hold `count` members in all (sockets rejoining them)."""
    deadline = time.monotonic() + within
    while await group_members(private_redis) < count:
        assert time.monotonic() < deadline, f"the groups did not get back {count} members"
        await asyncio.sleep(0.1)


async def group_members(private_redis: RedisServer) -> int:
    def count() -> int:
        client = private_redis.client()
        return sum(client.zcard(key) for key in client.scan_iter(GROUP_KEYS))

    return await sync_to_async(count)()


@sync_to_async
def login_id_of(username: str) -> str:
    return Login.objects.get(user__username=username, ended_at=None).id


async def alice_in_two_browsers(server: Server):
    """Alice logged in in two browsers: the one whose login will end, with two tabs, and the one
    that stays, with one. Returns (ending, its tabs, staying, its tab)."""
    ending, staying = Browser(server), Browser(server)
    await ending.login("alice")
    await staying.login("alice")
    ending_tabs = [await ending.open_tab(), await ending.open_tab()]
    return ending, ending_tabs, staying, await staying.open_tab()


async def test_with_redis_down_http_works_tabs_stay_and_learn_and_recover(
    live_servers, live_users, private_redis
):
    [server] = live_servers.start(1, LIVE_RECHECK_SECONDS=str(RECHECK_SECONDS))
    ending, ending_tabs, staying, staying_tab = await alice_in_two_browsers(server)

    private_redis.stop()
    # Pages, login and logout keep working; the logout does not wait for Redis.
    assert (await staying.visit("/")).status_code == 200
    newcomer = Browser(server)
    await newcomer.login("bob")
    started = time.monotonic()
    response = await ending.logout()
    assert response.status_code == 302 and time.monotonic() - started < 1.0
    assert (await ending.visit("/accounts/sessions/")).status_code == 302  # session gone
    # The ended login's tabs still learn it (their process tells them itself, without Redis);
    # the others stay open.
    for tab in ending_tabs:
        await tab.expect_logout("logout", timeout=RECHECK_SECONDS + 2)
    await staying_tab.expect_silence_and_alive(1.0)
    # New sockets are refused cleanly, to retry later, and nothing crashed.
    assert await close_code_of_new_socket(newcomer, server) == CLOSE_TRY_AGAIN
    log = server.log(tail=None)
    assert "could not send live.logout" in log
    assert log.count("Redis is unreachable; sockets stay open") == 1
    assert "Exception inside application" not in log

    private_redis.start()
    # New sockets connect again without restarting Daphne, and the fast path is back: the open
    # tab rejoined its groups in the new (empty) Redis.
    newcomer_tab = await eventually_open_tab(newcomer, server, within=10)
    assert newcomer_tab.status["username"] == "bob"
    await until_members(private_redis, 6)  # two tabs, three groups each
    await staying.logout()
    await staying_tab.expect_logout("logout", timeout=1.0)
    await newcomer_tab.expect_silence_and_alive(0.3)
    for browser in (ending, staying, newcomer):
        await browser.close()


async def test_with_redis_down_a_logout_reaches_its_own_process_tabs_at_once(
    live_servers, live_users, private_redis
):
    """The process that ends a login tells its own tabs directly, not through Redis: here Redis
    is down and the watcher's re-check is a minute away, yet they learn it at once."""
    [server] = live_servers.start(1, LIVE_RECHECK_SECONDS="60")
    browser, tabs, other, other_tab = await alice_in_two_browsers(server)

    private_redis.stop()
    assert (await browser.logout()).status_code == 302
    for tab in tabs:
        await tab.expect_logout("logout", timeout=2)
    await other_tab.expect_silence_and_alive(0.5)
    for each in (browser, other):
        await each.close()


async def test_after_a_redis_restart_open_tabs_rejoin_and_get_their_logout_at_once(
    live_servers, live_users, private_redis
):
    [server] = live_servers.start(1, LIVE_RECHECK_SECONDS=str(RECHECK_SECONDS))
    browser = Browser(server)
    await browser.login("alice")
    tabs = [await browser.open_tab(), await browser.open_tab()]
    members = await group_members(private_redis)
    assert members == 6  # two tabs, each in its browser's, its login's and its user's group

    private_redis.stop()
    private_redis.start()
    assert await group_members(private_redis) == 0
    await until_members(private_redis, members, within=RECHECK_SECONDS + 2)
    await browser.logout()
    for tab in tabs:
        await tab.expect_logout("logout", timeout=1.0)
    await browser.close()


async def test_after_a_flush_logouts_still_arrive_within_the_recheck(
    live_servers, live_users, private_redis
):
    [server] = live_servers.start(1, LIVE_RECHECK_SECONDS=str(RECHECK_SECONDS))
    browser = Browser(server)
    await browser.login("alice")
    tab = await browser.open_tab()
    await sync_to_async(private_redis.client().flushall)()
    await browser.logout()
    await tab.expect_logout("logout", timeout=RECHECK_SECONDS + 2)
    await browser.close()


async def test_a_socket_older_than_group_expiry_gets_its_logout_at_once(
    live_servers, live_users, private_redis
):
    [server] = live_servers.start(1, LIVE_RECHECK_SECONDS="60", CHANNEL_GROUP_EXPIRY="2")
    browser = Browser(server)
    await browser.login("alice")
    tab = await browser.open_tab()
    await asyncio.sleep(5)  # more than twice the group expiry
    await browser.logout()
    await tab.expect_logout("logout", timeout=1.0)
    await browser.close()


async def test_a_full_channel_never_loses_a_logout(live_servers, live_users, private_redis):
    stalled, other = live_servers.start(2, LIVE_RECHECK_SECONDS=str(RECHECK_SECONDS))
    browser = Browser(other)
    await browser.login("alice")
    tab = await browser.open_tab(stalled)
    group = login_group(await login_id_of("alice"))
    # A consumer too slow to read: its process is stopped while its channel fills up (the
    # layer's capacity is 100) and the logout is sent into the full channel, and dropped.
    stalled.process.send_signal(signal.SIGSTOP)
    try:
        layer = get_channel_layer()
        for _ in range(150):
            await layer.group_send(group, {"type": EVENT_SESSIONS})
        assert (await browser.logout()).status_code == 302
        await asyncio.sleep(0.5)
    finally:
        stalled.process.send_signal(signal.SIGCONT)
    backlog = 0
    while (message := await tab.receive(timeout=RECHECK_SECONDS + 3)) == {
        "type": "sessions_changed"
    }:
        backlog += 1
    # 100 queued, and at most one more the blocked receive had already taken: the rest, and the
    # logout after them, were dropped.
    assert backlog <= 101, "the channel was never full"
    assert message == {"type": "logout", "reason": "logout"}
    await asyncio.wait_for(tab.connection.wait_closed(), 2)
    assert tab.connection.close_code == 4001
    await browser.close()


async def test_sigterm_says_going_away_and_tabs_come_back_as_who_they_were(
    live_servers, live_users, private_redis
):
    [server] = live_servers.start(1)
    alice, guest = Browser(server), Browser(server)
    await alice.login("alice")
    await guest.visit("/")  # a browser cookie: the guest's tab joins its browser's group
    tabs = [await alice.open_tab(), await guest.open_tab()]
    server = live_servers.restart(server)
    for tab in tabs:
        await asyncio.wait_for(tab.connection.wait_closed(), 5)
        assert tab.connection.close_code == CLOSE_GOING_AWAY
    assert "Exception inside application" not in server.log(tail=None)
    assert (await alice.open_tab(server)).status["username"] == "alice"
    assert (await guest.open_tab(server)).status["authenticated"] is False
    # The old tabs left their groups on the way out: only the two new ones are counted.
    assert await group_members(private_redis) == 4  # alice's three groups, the guest's one
    for browser in (alice, guest):
        await browser.close()


class TcpProxy:
    """A loopback TCP proxy that can cut every connection and refuse new ones (a database that
    went away), and come back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        for writer in list(self.writers):
            writer.transport.abort()

    async def _serve(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(source, sink) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()
                self.writers.discard(sink)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
def scratch_postgres(settings):
    """A PostgreSQL database of the test's own, migrated, with alice in it: on the server the suite
    runs on when that is PostgreSQL, else on the standard local port (so the SQLite run covers the
    cut too). Dropped afterwards."""
    suite_db = settings.DATABASES["default"]
    if suite_db["ENGINE"] == "django.db.backends.postgresql":
        server = {key: suite_db.get(key) or "" for key in ("USER", "PASSWORD", "HOST", "PORT")}
    else:
        server = {"USER": "postgres", "PASSWORD": "", "HOST": "127.0.0.1", "PORT": "5432"}
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": f"live_session_faults_{os.getpid()}",
        **server,
    }
    admin_url = database_url({**database, "NAME": "postgres"})
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        require(False, f"PostgreSQL is not reachable at {admin_url}: {error}")
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database["NAME"]}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{database["NAME"]}"')
    create_alice = (
        "from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.create(username='alice', password={live_password_hash()!r})"
    )
    manage(database, "migrate", "--no-input", "-v", "0")
    manage(database, "shell", "-c", create_alice)
    yield database
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database["NAME"]}" WITH (FORCE)')


async def test_database_unreachable_while_connecting_refuses_cleanly_and_recovers(
    scratch_postgres, live_servers, private_redis
):  # the database outlives the servers
    proxy = TcpProxy(int(scratch_postgres["PORT"] or 5432))
    await proxy.start()
    live_servers.database = {**scratch_postgres, "HOST": "127.0.0.1", "PORT": str(proxy.port)}
    [server] = live_servers.start(1)
    browser = Browser(server)
    await browser.login("alice")
    assert (await browser.open_tab()).status["username"] == "alice"

    await proxy.cut()
    started = time.monotonic()
    assert await close_code_of_new_socket(browser, server) == CLOSE_TRY_AGAIN
    refused_in = time.monotonic() - started
    # Tabs connecting together (one batch of lookups, or several): each is refused the same way.
    codes = await asyncio.gather(*(close_code_of_new_socket(browser, server) for _ in range(5)))
    assert codes == [CLOSE_TRY_AGAIN] * 5
    assert "Exception inside application" not in server.log(tail=None)

    await proxy.start()  # the database is back, on the same port
    tab = await eventually_open_tab(browser, server, within=20)
    assert tab.status["username"] == "alice", f"refused after {refused_in:.1f}s"
    await browser.close()
    await proxy.cut()
