"""The socket auth stack (realtime/auth.py): who a connecting socket is, in one query."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import BACKEND_SESSION_KEY, SESSION_KEY
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.hashers import make_password
from django.core.exceptions import ValidationError
from django.test import AsyncClient

from accounts.backends import BACKEND_PATH
from accounts.logins import session_store_class
from asgi_project.asgi import application
from realtime import auth
from realtime.auth import _resolve
from realtime.groups import CLOSE_TRY_AGAIN
from tests.helpers import ORIGIN, cookie_header, open_status_socket

pytestmark = pytest.mark.django_db(transaction=True)

ANONYMOUS = {"type": "status", "authenticated": False, "username": None, "expires_at": None}
OTHER_BACKEND = "tests.test_auth.UppercaseBackend"


class UppercaseBackend(ModelBackend):
    """A backend with its own `get_user`: its users are not read in the login's query."""

    def get_user(self, user_id):
        user = super().get_user(user_id)
        if user is not None:
            user.username = user.username.upper()
        return user


async def logged_in_client(user, backend: str | None = None) -> AsyncClient:
    client = AsyncClient()
    await client.aforce_login(user, backend=backend)
    return client


def session_scope(client: AsyncClient) -> dict:
    session_key = client.cookies["sessionid"].value
    return {"session": session_store_class()(session_key)}


def test_user_and_login_come_from_one_query(alice, django_assert_num_queries):
    client = AsyncClient()
    client.force_login(alice)
    scope = session_scope(client)
    scope["session"].keys()  # the session store's own read, not counted
    with django_assert_num_queries(1):
        user, login = _resolve.func(scope)
    assert user.pk == alice.pk and user.get_username() == "alice"
    assert login is not None and login.user_id == alice.pk


async def test_a_socket_opens_while_channels_database_thread_is_busy(status_socket, alice):
    """Connect-time lookups run on threads of their own: on Channels' one database thread, every
    connecting tab waited behind whatever else ran there (and behind each other's round trips)."""
    client = await logged_in_client(alice)
    release = threading.Event()
    busy = asyncio.ensure_future(database_sync_to_async(release.wait)(10))
    try:
        _, status = await asyncio.wait_for(status_socket(cookies=client.cookies), 5)
        assert status["authenticated"] and status["username"] == "alice"
    finally:
        release.set()
        await busy


async def test_a_changed_password_hash_makes_the_socket_anonymous_and_ends_the_session(
    status_socket, alice, django_user_model
):
    client = await logged_in_client(alice)
    # Changed behind Django's back (no signal, so the login is still active): only the session's
    # auth hash tells.
    await django_user_model.objects.filter(pk=alice.pk).aupdate(password=make_password("new-pw"))
    _, status = await status_socket(cookies=client.cookies)
    assert status == ANONYMOUS
    assert not await session_store_class()().aexists(client.cookies["sessionid"].value)


async def test_an_inactive_user_gets_an_anonymous_socket(status_socket, alice, django_user_model):
    client = await logged_in_client(alice)
    await django_user_model.objects.filter(pk=alice.pk).aupdate(is_active=False)
    _, status = await status_socket(cookies=client.cookies)
    assert status == ANONYMOUS


async def test_a_session_without_a_login_gets_an_anonymous_socket(status_socket, alice):
    client = await logged_in_client(alice)
    session = (await client.asession()).__class__(client.cookies["sessionid"].value)
    await session.apop("_live_login_id")
    await session.asave()
    _, status = await status_socket(cookies=client.cookies)
    assert status == ANONYMOUS


async def test_a_backend_with_its_own_get_user_is_still_asked(status_socket, alice, settings):
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, OTHER_BACKEND]
    client = await logged_in_client(alice, backend=OTHER_BACKEND)
    _, status = await status_socket(cookies=client.cookies)
    assert status["authenticated"] is True
    assert status["username"] == "ALICE"


async def test_a_backend_no_longer_configured_gets_an_anonymous_socket(
    status_socket, alice, settings
):
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, OTHER_BACKEND]
    client = await logged_in_client(alice, backend=OTHER_BACKEND)
    settings.AUTHENTICATION_BACKENDS = settings.AUTHENTICATION_BACKENDS[:-1]
    _, status = await status_socket(cookies=client.cookies)
    assert status == ANONYMOUS


def await_chain(task: asyncio.Task) -> list:
    """The coroutines a running application instance is waiting in, outermost first."""
    chain, awaiting = [], task.get_coro()
    while asyncio.iscoroutine(awaiting):
        chain.append(awaiting)
        awaiting = awaiting.cr_await
    return chain


async def test_the_way_to_the_consumer_is_one_coroutine_and_one_small_scope(alice):
    """Channels' origin check, router and auth stack kept a coroutine each, and most a copy of
    the scope, for as long as the socket was open."""
    client = await logged_in_client(alice)
    communicator, status = await open_status_socket(cookies=client.cookies)
    try:
        assert status["username"] == "alice"
        chain = await_chain(communicator.future)
        assert [coroutine.__qualname__ for coroutine in chain[:3]] == [
            "ProtocolTypeRouter.__call__",
            "StatusSocketStack.__call__",
            "StatusConsumer.__call__",
        ]
        scopes = {
            id(coroutine.cr_frame.f_locals["scope"])
            for coroutine in chain
            if "scope" in coroutine.cr_frame.f_locals
        }
        assert len(scopes) == 2  # the server's, and the one the consumer reads
        # The consumer keeps the user, not the session copy or the login row it no longer reads.
        consumer = chain[2].cr_frame.f_locals["self"]
        assert consumer.scope["user"].get_username() == "alice"
        assert "session" not in consumer.scope and "live_login" not in consumer.scope
    finally:
        await communicator.disconnect()


@pytest.mark.parametrize(
    ("path", "root_path", "opens"),
    [
        ("/ws/status/", "", True),
        ("/app/ws/status/", "/app", True),
        ("/ws/status/", "/app", False),
        ("/ws/other/", "", False),
        ("/ws/status/extra/", "", False),
    ],
)
async def test_only_the_status_path_is_served(alice, path, root_path, opens):
    """An unknown path is refused like a foreign origin (Channels' router raised: a server
    error); the server's `root_path` is taken off first, as Channels' router does."""
    communicator = WebsocketCommunicator(application, path, headers=[(b"origin", ORIGIN)])
    communicator.scope["root_path"] = root_path
    connected, _ = await communicator.connect(timeout=5)
    try:
        assert connected is opens
    finally:
        await communicator.disconnect()


# --- Connects in batches (`_ConnectBatches`) -----------------------------------------------------


def batch_of_scopes(alice, bob, django_user_model) -> tuple[list[dict], list]:
    """Scopes of sockets connecting at once, and who each should be (username or None): two tabs
    of one session, another user's, a session whose login names another user's login, a
    session that is gone, and no session at all."""
    alice_client, bob_client = AsyncClient(), AsyncClient()
    alice_client.force_login(alice)
    bob_client.force_login(bob)
    carol = django_user_model.objects.create_user("carol", password="carol-pass-1234")
    mixed = AsyncClient()
    mixed.force_login(carol)
    mixed_session = session_store_class()(mixed.cookies["sessionid"].value)
    bob_session = session_store_class()(bob_client.cookies["sessionid"].value)
    mixed_session["_live_login_id"] = bob_session["_live_login_id"]  # bob's login, carol's session
    mixed_session.save()
    gone = AsyncClient()
    gone.force_login(carol)
    session_store_class()(gone.cookies["sessionid"].value).delete()
    scopes = [
        session_scope(alice_client),
        session_scope(alice_client),
        session_scope(bob_client),
        session_scope(mixed),
        session_scope(gone),
        {"session": session_store_class()(None)},
    ]
    return scopes, ["alice", "alice", "bob", None, None, None]


def who(result) -> str | None:
    user, login = result
    if not user.is_authenticated:
        assert login is None
        return None
    assert login is not None and login.user_id == user.pk
    return user.get_username()


@pytest.mark.parametrize(
    ("engine", "queries"),
    [
        ("accounts.session_engines.db", 2),  # the sessions, then the logins
        ("accounts.session_engines.cached_db", 1),  # the sessions from the cache, in one read
    ],
)
def test_a_batch_reads_its_sessions_at_once_and_its_logins_in_one_query(
    alice, bob, django_user_model, settings, django_assert_num_queries, engine, queries
):
    settings.SESSION_ENGINE = engine
    scopes, expected = batch_of_scopes(alice, bob, django_user_model)
    valid = [scope for scope, name in zip(scopes, expected, strict=True) if name is not None]
    with django_assert_num_queries(queries):
        results = _resolve.func_many(valid)
    assert [who(result) for result in results] == ["alice", "alice", "bob"]
    # Each socket has objects of its own, as from one socket's lookup.
    (user1, login1), (user2, login2) = results[:2]
    assert user1 is not user2 and login1 is not login2 and login1.pk == login2.pk


@pytest.mark.parametrize(
    "engine", ["accounts.session_engines.db", "accounts.session_engines.cached_db"]
)
def test_a_batch_decides_each_socket_as_a_lone_connect_does(
    alice, bob, django_user_model, settings, engine
):
    settings.SESSION_ENGINE = engine
    scopes, expected = batch_of_scopes(alice, bob, django_user_model)
    alone = [
        who(_resolve.func({"session": type(s["session"])(s["session"].session_key)}))
        for s in scopes
    ]
    assert alone == expected
    assert [who(result) for result in _resolve.func_many(scopes)] == expected


@pytest.fixture
def batches(monkeypatch) -> list[list]:
    """The batches `_resolve` sends to its threads (each a list of scopes), as they go."""
    sent: list[list] = []
    resolve_many = _resolve.func_many

    def recorded(batch):
        sent.append(list(batch))
        return resolve_many(batch)

    monkeypatch.setattr(_resolve, "func_many", recorded)
    return sent


async def test_sockets_connecting_together_are_resolved_in_one_trip(
    alice, bob, django_user_model, batches
):
    scopes, expected = await database_sync_to_async(batch_of_scopes)(alice, bob, django_user_model)
    results = await asyncio.wait_for(asyncio.gather(*(_resolve(scope) for scope in scopes)), 10)
    assert [who(result) for result in results] == expected
    assert [len(batch) for batch in batches] == [len(scopes)]


async def test_a_socket_that_goes_away_while_waiting_is_left_out_of_its_batch(
    alice, bob, django_user_model, batches
):
    scopes, _ = await database_sync_to_async(batch_of_scopes)(alice, bob, django_user_model)
    tasks = [asyncio.ensure_future(_resolve(scope)) for scope in scopes[:3]]
    await asyncio.sleep(0)  # each has queued its scope; the flush comes after this turn
    tasks[1].cancel()
    done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [who(done[0]), who(done[2])] == ["alice", "bob"]
    assert [scope for batch in batches for scope in batch] == [scopes[0], scopes[2]]


async def test_many_tabs_connecting_at_once_each_get_their_own_status(status_socket, alice, bob):
    clients = [await logged_in_client(user) for user in (alice, bob, alice, bob, alice)]
    cookies = [client.cookies for client in clients] + [None]
    opened = await asyncio.wait_for(
        asyncio.gather(*(status_socket(cookies=jar) for jar in cookies)), 10
    )
    names = [status["username"] for _, status in opened]
    assert names == ["alice", "bob", "alice", "bob", "alice", None]
    assert opened[-1][1] == ANONYMOUS


def broken_session_scope(login_id: str) -> dict:
    """A session whose user id is not a user id, naming a real login."""
    broken = session_store_class()()
    broken.update(
        {SESSION_KEY: "not-a-number", BACKEND_SESSION_KEY: BACKEND_PATH, "_live_login_id": login_id}
    )
    broken.save()
    return {"session": session_store_class()(broken.session_key)}


async def test_one_socket_failing_in_a_batch_fails_alone(alice, bob, django_user_model):
    """A failure in one socket's own part of the lookup (here Channels' `get_user` raises on the
    user id) refuses that socket, not its batch."""
    scopes, _ = await database_sync_to_async(batch_of_scopes)(alice, bob, django_user_model)
    login_id = await scopes[0]["session"].aget("_live_login_id")
    batch = [scopes[0], await database_sync_to_async(broken_session_scope)(login_id), scopes[2]]
    results = await asyncio.wait_for(
        asyncio.gather(*(_resolve(scope) for scope in batch), return_exceptions=True), 10
    )
    assert isinstance(results[1], ValidationError)
    assert [who(results[0]), who(results[2])] == ["alice", "bob"]


async def test_a_lookup_slower_than_its_bound_is_refused_with_try_again(
    status_socket, alice, monkeypatch
):
    """While every connect thread is held up (as in an outage, where the database pool waits up
    to 10 s for a connection), a connecting socket is refused with 1013 within
    `CONNECT_LOOKUP_TIMEOUT`, before Daphne's handshake timeout would drop it without a word;
    once the threads are free, the next socket opens."""
    monkeypatch.setattr(auth, "CONNECT_LOOKUP_TIMEOUT", 0.5)
    client = await logged_in_client(alice)
    release = threading.Event()
    loop = asyncio.get_running_loop()
    busy = [
        loop.run_in_executor(auth._connect_executor, release.wait, 10)
        for _ in range(auth.CONNECT_THREADS)
    ]
    try:
        communicator = WebsocketCommunicator(
            application,
            "/ws/status/",
            headers=[(b"origin", ORIGIN), (b"cookie", cookie_header(client.cookies))],
        )
        started = time.monotonic()
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        assert await communicator.receive_output(timeout=5) == {
            "type": "websocket.close",
            "code": CLOSE_TRY_AGAIN,
        }
        assert time.monotonic() - started < 3
        await communicator.disconnect()
    finally:
        release.set()
        await asyncio.gather(*busy)
    _, status = await status_socket(cookies=client.cookies)
    assert status["username"] == "alice"
