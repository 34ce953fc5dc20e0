"""Hostile input: arbitrary WebSocket frames, socket limits through a real Daphne, HTTP abuse,
brute force. Each gets a clear answer; nothing crashes; nobody else is affected."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest
import websockets
from axes.models import AccessAttempt
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from realtime.groups import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY_SOCKETS,
    MAX_FRAME_BYTES,
    RATE_BURST,
)
from tests.helpers import open_status_socket
from tests.live import Browser

# --- Arbitrary frames (in-process, the whole ASGI stack) ------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)
typed_messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["ping", "watch_sessions", "status", "logout", ""]) | json_values},
    optional={"extra": json_values},
)
frames = st.one_of(
    st.text(),  # mostly not JSON
    st.binary(),
    json_values.map(json.dumps),  # JSON, mostly of the wrong shape
    typed_messages.map(json.dumps),  # objects with right and wrong types
    st.integers(1, MAX_FRAME_BYTES // 2).map(lambda n: "[" * n + "]" * n),  # deep nesting
    st.integers(MAX_FRAME_BYTES - 100, MAX_FRAME_BYTES + 100).map(lambda n: "x" * n),  # huge
)
ANSWERS = {"pong", "error"}  # a valid ping, or {"type": "error", "error": <text>}


@pytest.mark.django_db(transaction=True)
@hypothesis_settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=frames)
async def test_any_frame_gets_an_answer_or_a_clean_close_and_the_server_goes_on(frame):
    socket, status = await open_status_socket()
    assert status["type"] == "status"
    try:
        key = "bytes" if isinstance(frame, bytes) else "text"  # empty frames included
        await socket.send_input({"type": "websocket.receive", key: frame})
        output = await socket.receive_output(timeout=2)
        size = len(frame if isinstance(frame, bytes) else frame.encode())
        if size > MAX_FRAME_BYTES:
            assert output == {"type": "websocket.close", "code": CLOSE_TOO_BIG}
            return
        assert output["type"] == "websocket.send", output
        answer = json.loads(output["text"])
        assert answer["type"] in ANSWERS, answer
        if answer["type"] == "error":
            assert isinstance(answer["error"], str) and answer["error"]
        # The socket is still alive and well.
        await socket.send_json_to({"type": "ping"})
        assert await socket.receive_json_from(timeout=2) == {"type": "pong"}
    finally:
        await socket.disconnect()


# --- The same limits through a real Daphne and a real client -------------------------------------


async def closed_with(connection) -> int:
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(connection.recv(), 5)
    return connection.close_code


@pytest.mark.live
@pytest.mark.timeout(90)
async def test_limits_hold_through_daphne_and_others_are_untouched(live_servers, live_users):
    [server] = live_servers.start(1, LIVE_MAX_SOCKETS_PER_LOGIN="3")
    alice, bob = Browser(server), Browser(server)
    await alice.login("alice")
    await bob.login("bob")
    bystander = await bob.open_tab()
    big, flood, full = [await alice.open_tab() for _ in range(3)]

    await big.connection.send("x" * (MAX_FRAME_BYTES + 1))
    assert await closed_with(big.connection) == CLOSE_TOO_BIG

    for _ in range(RATE_BURST + 10):
        await flood.connection.send('{"type": "ping"}')
    assert await closed_with(flood.connection) == CLOSE_POLICY_VIOLATION

    await alice.open_tab()  # two places were freed; this takes one
    extra = await alice.open_tab()
    assert extra.status["authenticated"] is True
    over = await websockets.connect(
        server.ws_url, origin=server.http_url, additional_headers={"Cookie": alice.cookie_header()}
    )
    assert json.loads(await over.recv()) == {
        "type": "error",
        "error": "too many open sockets for this session",
    }
    assert await closed_with(over) == CLOSE_TOO_MANY_SOCKETS

    await full.expect_silence_and_alive(0.2)
    await bystander.expect_silence_and_alive(0.2)
    assert "Exception inside application" not in server.log(tail=None)
    for browser in (alice, bob):
        await browser.close()


@pytest.mark.live
@pytest.mark.timeout(90)
@pytest.mark.parametrize("origin", [None, "http://evil.example", "null"])
async def test_a_missing_or_foreign_origin_is_refused_whatever_the_cookie(
    live_servers, live_users, origin
):
    [server] = live_servers.start(1)
    alice = Browser(server)
    await alice.login("alice")
    headers = {"Cookie": alice.cookie_header()}
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(server.ws_url, origin=origin, additional_headers=headers)
    assert refused.value.response.status_code == 403
    await alice.close()


# --- HTTP ----------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "fields",
    [
        {"username": "a" * 100_000, "password": "x"},
        {"username": "alice", "password": "p" * 100_000},
        "username=%00%ff%fe&password=%00",  # NUL and bytes that are not UTF-8
        {"username": ["alice", "bob"], "password": ""},
        {},
    ],
)
def test_garbage_login_fields_get_the_form_again_and_log_nobody_in(client, alice, fields):
    if isinstance(fields, str):
        form = "application/x-www-form-urlencoded"
        response = client.post("/accounts/login/", fields, content_type=form)
    else:
        response = client.post("/accounts/login/", fields)
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_a_forged_host_is_refused(client):
    assert client.get("/", headers={"host": "evil.example"}).status_code == 400


@pytest.mark.django_db
def test_pages_carry_the_security_headers(client):
    response = client.get("/accounts/login/")
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    policy = response["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


# --- Brute force (django-axes) -------------------------------------------------------------------

FAILURE_LIMIT = 20


def fail_logins(client: Client, username: str, times: int, address: str = "198.51.100.7") -> None:
    for _ in range(times):
        response = client.post(
            "/accounts/login/",
            {"username": username, "password": "wrong"},
            REMOTE_ADDR=address,
        )
        assert response.status_code in (200, 429)


def log_in(client: Client, username: str, password: str, address: str = "198.51.100.7"):
    return client.post(
        "/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=address
    )


@pytest.mark.django_db
def test_twenty_failures_lock_the_account_out_even_with_the_right_password(alice):
    attacker, owner = Client(), Client()
    fail_logins(attacker, "alice", FAILURE_LIMIT - 1)
    assert log_in(owner, "alice", "alice-pass-1234", "203.0.113.9").status_code == 302
    owner.logout()
    # A success resets nothing for the attacker's address; twenty in a row from anywhere lock.
    fail_logins(attacker, "alice", FAILURE_LIMIT, address="192.0.2.1")
    locked = log_in(owner, "alice", "alice-pass-1234", "203.0.113.9")
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.content.decode()
    assert "_auth_user_id" not in owner.session


@pytest.mark.django_db
def test_one_address_is_throttled_whatever_username_it_tries(alice, bob):
    attacker = Client()
    for index in range(FAILURE_LIMIT):
        log_in(attacker, f"user{index}", "wrong")
    assert log_in(attacker, "bob", "bob-pass-1234").status_code == 429
    assert log_in(Client(), "bob", "bob-pass-1234", "203.0.113.9").status_code == 302


@pytest.mark.django_db
def test_a_lockout_does_not_reveal_whether_the_username_exists(alice):
    fail_logins(Client(), "alice", FAILURE_LIMIT, address="192.0.2.1")
    fail_logins(Client(), "nobody-by-this-name", FAILURE_LIMIT, address="192.0.2.2")
    known = log_in(Client(), "alice", "wrong", "192.0.2.3")
    unknown = log_in(Client(), "nobody-by-this-name", "wrong", "192.0.2.4")
    assert known.status_code == unknown.status_code == 429
    strip = lambda r, name: r.content.decode().replace(name, "NAME")  # noqa: E731
    assert strip(known, "alice") == strip(unknown, "nobody-by-this-name")


@pytest.mark.django_db
def test_the_lockout_ends_after_the_cool_off(alice, settings):
    fail_logins(Client(), "alice", FAILURE_LIMIT, address="192.0.2.1")
    assert log_in(Client(), "alice", "alice-pass-1234", "203.0.113.9").status_code == 429
    settings.AXES_COOLOFF_TIME = timedelta(seconds=0.5)
    time.sleep(0.6)
    assert log_in(Client(), "alice", "alice-pass-1234", "203.0.113.9").status_code == 302


def expired_attempt(username: str) -> AccessAttempt:
    attempt = AccessAttempt.objects.create(
        username=username,
        ip_address="192.0.2.50",
        user_agent="",
        get_data="",
        post_data="",
        http_accept="",
        path_info="/accounts/login/",
        failures_since_start=3,
    )
    long_ago = timezone.now() - timedelta(days=30)  # `attempt_time` is set on create
    AccessAttempt.objects.filter(pk=attempt.pk).update(attempt_time=long_ago)
    return attempt


@pytest.mark.django_db
def test_logins_clean_up_expired_attempts_and_logouts_leave_them_alone(alice):
    """A logout skips axes' clean-up (three database round trips); the next login does it."""
    client = Client()
    first = expired_attempt("someone")
    assert log_in(client, "alice", "alice-pass-1234").status_code == 302
    assert not AccessAttempt.objects.filter(pk=first.pk).exists()

    second = expired_attempt("someone-else")
    with CaptureQueriesContext(connection) as queries:
        assert client.post("/accounts/logout/").status_code == 302
    assert "_auth_user_id" not in client.session
    assert not [q for q in queries.captured_queries if "axes_accessattempt" in q["sql"]]
    assert AccessAttempt.objects.filter(pk=second.pk).exists()

    assert log_in(client, "alice", "alice-pass-1234").status_code == 302
    assert not AccessAttempt.objects.filter(pk=second.pk).exists()
