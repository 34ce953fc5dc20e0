"""The status consumer, through the full ASGI stack (origin check, auth, routing)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest
from channels import db as channels_db
from django.test import AsyncClient

from realtime import watch
from realtime.groups import RATE_BURST, RATE_PER_SECOND
from tests.helpers import assert_logged_out, assert_still_open

pytestmark = pytest.mark.django_db(transaction=True)


async def test_anonymous_socket_gets_anonymous_status(status_socket):
    socket, status = await status_socket()
    assert status == {
        "type": "status",
        "authenticated": False,
        "username": None,
        "expires_at": None,
    }
    await assert_still_open(socket)


async def test_authenticated_socket_gets_username_and_expiry(status_socket, alice):
    _, status = await status_socket(user=alice)
    assert status["type"] == "status"
    assert status["authenticated"] is True
    assert status["username"] == "alice"
    assert status["expires_at"].endswith("Z")
    assert datetime.fromisoformat(status["expires_at"]) > datetime.now().astimezone()


async def test_logout_view_closes_every_tab_of_that_session(status_socket, alice):
    client = AsyncClient()
    await client.aforce_login(alice)
    tabs = [(await status_socket(cookies=client.cookies))[0] for _ in range(3)]
    response = await client.post("/accounts/logout/")
    assert response.status_code == 302
    for tab in tabs:
        await assert_logged_out(tab, "logout")


LOGOUT = {"type": "logout", "reason": "logout"}
CLOSED_LOGGED_OUT = {"type": "websocket.close", "code": 4001}


async def test_the_close_waits_until_no_other_tab_is_being_told(
    status_socket, alice, bob, monkeypatch
):
    """A told tab closes once no other tab here has been told for CLOSE_QUIET, so the logouts of
    a storm all go out before the closes, which cost the server more. Until then it answers
    nothing."""
    monkeypatch.setattr(watch, "CLOSE_QUIET", 1.0)
    monkeypatch.setattr(watch, "CLOSE_WAIT_MAX", 5.0)
    first, second = AsyncClient(), AsyncClient()
    await first.aforce_login(alice)
    await second.aforce_login(bob)
    tab, _ = await status_socket(cookies=first.cookies)
    later_tab, _ = await status_socket(cookies=second.cookies)
    await first.post("/accounts/logout/")
    assert await tab.receive_json_from(timeout=2) == LOGOUT
    await tab.send_json_to({"type": "ping"})
    assert await tab.receive_nothing(timeout=0.3)  # no pong, and no close yet
    await second.post("/accounts/logout/")
    later_told = time.monotonic()
    assert await later_tab.receive_json_from(timeout=2) == LOGOUT
    assert await tab.receive_output(timeout=3) == CLOSED_LOGGED_OUT
    # Closed a second after the *later* tab was told; a second after its own logout would have
    # been at most 0.7 s after that.
    assert time.monotonic() - later_told >= 0.9
    assert await later_tab.receive_output(timeout=1) == CLOSED_LOGGED_OUT


async def test_a_told_tab_waits_for_its_close_at_most_close_wait_max(
    status_socket, alice, monkeypatch
):
    monkeypatch.setattr(watch, "CLOSE_QUIET", 10.0)
    monkeypatch.setattr(watch, "CLOSE_WAIT_MAX", 0.5)
    client = AsyncClient()
    await client.aforce_login(alice)
    tab, _ = await status_socket(cookies=client.cookies)
    await client.post("/accounts/logout/")
    assert await tab.receive_json_from(timeout=2) == LOGOUT
    assert await tab.receive_output(timeout=5) == CLOSED_LOGGED_OUT


async def test_any_code_calling_logout_is_broadcast(status_socket, alice):
    client = AsyncClient()
    await client.aforce_login(alice)
    tab, _ = await status_socket(cookies=client.cookies)
    await client.alogout()  # django.contrib.auth.alogout, no view involved
    await assert_logged_out(tab, "logout")


async def test_session_clear_is_broadcast_like_a_logout(status_socket, alice):
    client = AsyncClient()
    await client.aforce_login(alice)
    tab, _ = await status_socket(cookies=client.cookies)
    await client.post("/session/clear/")
    await assert_logged_out(tab, "logout")


async def test_other_sessions_hear_nothing(status_socket, alice, bob):
    client = AsyncClient()
    await client.aforce_login(alice)
    tab, _ = await status_socket(cookies=client.cookies)
    other_browser, _ = await status_socket(user=alice)
    other_user, _ = await status_socket(user=bob)
    anonymous, _ = await status_socket()
    await client.post("/accounts/logout/")
    await assert_logged_out(tab, "logout")
    for socket in (other_browser, other_user, anonymous):
        await assert_still_open(socket)


@pytest.mark.parametrize(
    "origin", [b"http://evil.example", b"null", b"http://127.0.0.1.evil.example", None]
)
async def test_foreign_or_missing_origin_is_refused(status_socket, alice, origin):
    _, status = await status_socket(user=alice, origin=origin)
    assert status is None


async def test_ping_gets_pong(status_socket):
    socket, _ = await status_socket()
    await socket.send_json_to({"type": "ping"})
    assert await socket.receive_json_from(timeout=2) == {"type": "pong"}


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("not json", "invalid JSON"),
        ("{", "invalid JSON"),
        ("[1, 2]", "message must be a JSON object"),
        ('"ping"', "message must be a JSON object"),
        ('{"type": "nope"}', "unknown message type"),
        ("{}", "unknown message type"),
    ],
)
async def test_bad_input_gets_an_error_and_the_socket_stays_open(status_socket, frame, error):
    socket, _ = await status_socket()
    await socket.send_to(text_data=frame)
    assert await socket.receive_json_from(timeout=2) == {"type": "error", "error": error}
    await assert_still_open(socket)


async def test_binary_frames_get_an_error(status_socket):
    socket, _ = await status_socket()
    await socket.send_to(bytes_data=b"\x00\x01")
    assert await socket.receive_json_from(timeout=2) == {
        "type": "error",
        "error": "binary frames are not supported",
    }
    await assert_still_open(socket)


async def test_a_frame_over_64_kib_closes_with_1009(status_socket):
    socket, _ = await status_socket()
    await socket.send_to(text_data='{"type": "ping", "pad": "' + "x" * 70_000 + '"}')
    assert await socket.receive_output(timeout=2) == {"type": "websocket.close", "code": 1009}


async def test_a_frame_just_under_the_limit_is_answered(status_socket):
    socket, _ = await status_socket()
    await socket.send_to(text_data='{"type": "ping", "pad": "' + "x" * 60_000 + '"}')
    assert await socket.receive_json_from(timeout=2) == {"type": "pong"}


async def test_a_flood_of_messages_closes_with_1008(status_socket):
    socket, _ = await status_socket()
    for _ in range(RATE_BURST + 5):
        await socket.send_json_to({"type": "ping"})
    outputs = [await socket.receive_output(timeout=2) for _ in range(RATE_BURST + 1)]
    assert all(o["type"] == "websocket.send" for o in outputs[:RATE_BURST])
    assert outputs[RATE_BURST] == {"type": "websocket.close", "code": 1008}


async def test_messages_within_the_rate_are_all_answered(status_socket):
    socket, _ = await status_socket()
    for _ in range(3):
        for _ in range(RATE_BURST // 2):
            await socket.send_json_to({"type": "ping"})
            assert await socket.receive_json_from(timeout=2) == {"type": "pong"}
        await asyncio.sleep(RATE_BURST / 2 / RATE_PER_SECOND)


async def test_sockets_past_the_per_login_limit_are_refused_with_4029(
    status_socket, alice, settings
):
    settings.LIVE_MAX_SOCKETS_PER_LOGIN = 2
    client = AsyncClient()
    await client.aforce_login(alice)
    first, _ = await status_socket(cookies=client.cookies)
    await status_socket(cookies=client.cookies)
    for _ in range(3):  # each refused socket leaves the groups it joined to be counted
        refused, message = await status_socket(cookies=client.cookies)
        assert message == {"type": "error", "error": "too many open sockets for this session"}
        assert await refused.receive_output(timeout=2) == {"type": "websocket.close", "code": 4029}
    # Another login of the same user is not this session's business.
    _, status = await status_socket(user=alice)
    assert status["username"] == "alice"
    # A closed socket frees its place.
    await first.disconnect()
    _, status = await status_socket(cookies=client.cookies)
    assert status["username"] == "alice"


async def test_sockets_past_the_per_user_limit_are_refused_with_4029(
    status_socket, alice, bob, settings
):
    settings.LIVE_MAX_SOCKETS_PER_USER = 3
    for _ in range(3):
        await status_socket(user=alice)
    refused, message = await status_socket(user=alice)
    assert message == {"type": "error", "error": "too many open sockets for this user"}
    assert await refused.receive_output(timeout=2) == {"type": "websocket.close", "code": 4029}
    _, status = await status_socket(user=bob)  # other users are untouched
    assert status["username"] == "bob"
    _, status = await status_socket()  # and so are anonymous sockets
    assert status["authenticated"] is False


async def test_events_and_closes_make_no_hop_to_the_views_thread(status_socket, alice, monkeypatch):
    """Channels closes old database connections (on the thread of the HTTP views) after every
    event and every close; this consumer touches no database there, and skips both."""
    calls = []
    close_old_connections = channels_db.close_old_connections
    monkeypatch.setattr(
        channels_db,
        "close_old_connections",
        lambda: calls.append(1) or close_old_connections(),
    )
    socket, _ = await status_socket(user=alice)
    calls.clear()  # the connect's own database trip closes them, as it should
    await socket.send_json_to({"type": "ping"})
    assert await socket.receive_json_from() == {"type": "pong"}
    await socket.disconnect()
    assert calls == []
