"""Live: two real Daphne processes sharing Redis and the database, real `websockets` clients.

Parametrized over the five session backends. Tabs of one browser are spread over both processes,
so every logout crosses processes through the Redis channel layer.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from tests.live import Browser

pytestmark = pytest.mark.live

BACKENDS = ["db", "cache", "cached_db", "file", "signed_cookies"]
IDLE_SECONDS = 12  # longer than redis-py's 5 s default socket timeout


async def browsers(server, *usernames):
    opened = []
    for username in usernames:
        browser = Browser(server)
        if username:
            await browser.login(username)
        opened.append(browser)
    return opened


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", BACKENDS)
async def test_logout_reaches_every_tab_of_the_session_in_every_process(
    live_servers, live_users, backend
):
    first, second = live_servers.start(2, DJANGO_SESSION_ENGINE=backend)
    alice, alice_elsewhere, bob, guest = await browsers(first, "alice", "alice", "bob", None)
    try:
        tabs = [await alice.open_tab(server) for server in (first, second, second)]
        others = [
            await alice_elsewhere.open_tab(second),
            await bob.open_tab(first),
            await guest.open_tab(second),
        ]
        assert [tab.status["username"] for tab in tabs + others] == [
            "alice", "alice", "alice", "alice", "bob", None,
        ]  # fmt: skip
        assert all(tab.status["authenticated"] for tab in tabs + others[:2])

        await asyncio.sleep(IDLE_SECONDS)  # every socket idle past redis-py's socket timeout

        # A copy of the browser's cookies: it works now, and must open nothing once logged out.
        replay = Browser(second, cookie_header=alice.cookie_header())
        assert (await replay.http.get("/accounts/sessions/")).status_code == 200
        started = time.monotonic()
        response = await alice.logout()
        assert response.status_code == 302
        await asyncio.gather(*(tab.expect_logout("logout", timeout=1.0) for tab in tabs))
        assert time.monotonic() - started < 1.0

        for tab in others:
            await tab.expect_silence_and_alive()
        assert (await alice.open_tab(first)).status["authenticated"] is False

        # The ended login's cookie, replayed, opens nothing, over HTTP or WebSocket.
        try:
            response = await replay.http.get("/accounts/sessions/")
            assert response.status_code == 302
            assert response.headers["location"].startswith("/accounts/login/")
            assert (await replay.open_tab()).status["authenticated"] is False
        finally:
            await replay.close()
    finally:
        for browser in (alice, alice_elsewhere, bob, guest):
            await browser.close()


@pytest.mark.timeout(60)
async def test_clearing_the_session_over_http_logs_out_its_tabs(live_servers, live_users):
    first, second = live_servers.start(2)
    (alice,) = await browsers(first, "alice")
    try:
        tabs = [await alice.open_tab(first), await alice.open_tab(second)]
        response = await alice.post("/session/clear/")
        assert response.status_code == 302
        await asyncio.gather(*(tab.expect_logout("logout") for tab in tabs))
    finally:
        await alice.close()


@pytest.mark.timeout(90)
async def test_a_burst_of_tabs_all_connect(live_servers, live_users):
    """200 tabs at once: more than redis-py 8's default pool of 100 connections would allow."""
    (server,) = live_servers.start(1, LIVE_MAX_SOCKETS_PER_LOGIN="200")
    (alice,) = await browsers(server, "alice")
    try:
        tabs = await asyncio.gather(*(alice.open_tab() for _ in range(200)))
        assert all(tab.status["username"] == "alice" for tab in tabs)
        await alice.logout()
        await asyncio.gather(*(tab.expect_logout("logout", timeout=5.0) for tab in tabs))
    finally:
        await alice.close()


def redis_clients(url: str) -> int:
    return redis.Redis.from_url(url).info("clients")["connected_clients"]


@pytest.mark.timeout(90)
async def test_open_tabs_do_not_each_hold_a_redis_connection(live_servers, live_users, redis_url):
    """Django's cache is per async context; each socket once kept its own Redis connection."""
    (server,) = live_servers.start(1, DJANGO_SESSION_ENGINE="cached_db")
    (alice,) = await browsers(server, "alice")
    try:
        await alice.open_tab()  # the process's pools exist now
        before = redis_clients(redis_url)
        for _ in range(15):
            await asyncio.gather(*(alice.open_tab() for _ in range(10)))
        assert redis_clients(redis_url) - before < 50  # 150 tabs; a leak would add 150
    finally:
        await alice.close()
