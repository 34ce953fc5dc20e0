"""Every way a login begins or ends, in process: communicator tabs, AsyncClient browsers."""

from __future__ import annotations

import asyncio
import re
from importlib import import_module

import pytest
from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.core.management import call_command
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext

from accounts.logins import end_checked_login, end_logins
from accounts.models import Login
from realtime.groups import BROWSER_COOKIE
from tests.helpers import assert_logged_out, assert_still_open

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "alice-pass-1234"


def password_of(user) -> str:
    return f"{user.username}-pass-1234"  # as the alice and bob fixtures set them


async def browser(user=None) -> AsyncClient:
    """A browser that has visited / (it has its browser cookie and a session), maybe logged in."""
    client = AsyncClient()
    await client.get("/")
    if user is not None:
        response = await client.post(
            "/accounts/login/", {"username": user.username, "password": password_of(user)}
        )
        assert response.status_code == 302
    return client


async def login_id_of(client: AsyncClient) -> str:
    return await (await client.asession()).aget("_live_login_id")


async def test_anonymous_visit_gets_a_session_and_a_browser_cookie():
    client = AsyncClient()
    response = await client.get("/")
    assert response.cookies["sessionid"].value
    assert response.cookies[BROWSER_COOKIE]["httponly"] is True


async def test_login_in_one_tab_reaches_the_other_tabs_with_a_fresh_status(status_socket, alice):
    client = await browser()
    tabs = [(await status_socket(cookies=client.cookies))[0] for _ in range(2)]
    await client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    for tab in tabs:
        status = await tab.receive_json_from(timeout=2)
        assert status["type"] == "status"
        assert status["authenticated"] is True
        assert status["username"] == "alice"
    # The tabs now belong to the new login: its logout reaches them.
    await client.post("/accounts/logout/")
    for tab in tabs:
        await assert_logged_out(tab, "logout")


async def test_switching_user_reaches_open_tabs(status_socket, alice, bob):
    client = await browser(alice)
    tab, status = await status_socket(cookies=client.cookies)
    assert status["username"] == "alice"
    await client.post("/accounts/logout/")
    await assert_logged_out(tab, "logout")
    tab, status = await status_socket(cookies=client.cookies)  # the client reconnects
    assert status["authenticated"] is False
    await client.post("/accounts/login/", {"username": "bob", "password": "bob-pass-1234"})
    status = await tab.receive_json_from(timeout=2)
    assert (status["authenticated"], status["username"]) == (True, "bob")


async def test_login_as_someone_else_without_logout_moves_the_tabs(status_socket, alice, bob):
    client = await browser(alice)
    tab, _ = await status_socket(cookies=client.cookies)
    old = await login_id_of(client)
    await client.post("/accounts/login/", {"username": "bob", "password": "bob-pass-1234"})
    status = await tab.receive_json_from(timeout=2)
    assert status["username"] == "bob"
    ended = await Login.objects.aget(id=old)
    assert ended.end_reason == "replaced"


def test_a_logout_reads_its_login_once_and_ends_it_in_one_update(alice):
    client = Client()
    client.force_login(alice)
    login_id = client.session["_live_login_id"]
    with CaptureQueriesContext(connection) as queries:
        assert client.post("/accounts/logout/").status_code == 302
    on_logins = [query["sql"] for query in queries if "accounts_login" in query["sql"]]
    assert len(on_logins) == 2, on_logins  # the middleware's check, then the end
    assert on_logins[1].startswith("UPDATE")
    login = Login.objects.get(id=login_id)
    assert login.ended_at is not None and login.end_reason == "logout"


def test_a_login_ends_once_and_keeps_its_first_reason(alice, bob):
    browsers = [Client() for _ in range(3)]
    for client, user in zip(browsers, (alice, alice, bob), strict=True):
        client.force_login(user)
    first, second, other = (Login.objects.get(id=c.session["_live_login_id"]) for c in browsers)

    assert end_logins(Login.objects.filter(id=first.id), "revoked") == [first.id]
    assert end_checked_login(first, "logout") is False  # already ended: no second ending
    assert end_logins(Login.objects.filter(user=alice), "logout_everywhere") == [second.id]

    first.refresh_from_db()
    second.refresh_from_db()
    other.refresh_from_db()
    assert first.end_reason == "revoked" and first.ended_at is not None
    assert second.end_reason == "logout_everywhere" and second.ended_at >= first.ended_at
    assert other.ended_at is None and other.end_reason == ""


async def test_logout_everywhere_ends_every_session_of_the_user(status_socket, alice, bob):
    first, second = await browser(alice), await browser(alice)
    tabs = [(await status_socket(cookies=c.cookies))[0] for c in (first, second)]
    other_user, _ = await status_socket(user=bob)
    response = await first.post("/accounts/logout/everywhere/")
    assert response.status_code == 302
    for tab in tabs:
        await assert_logged_out(tab, "logout_everywhere")
    await assert_still_open(other_user)
    assert not await Login.objects.filter(user=alice, ended_at__isnull=True).aexists()


async def test_revoke_ends_exactly_that_session(status_socket, alice):
    first, second = await browser(alice), await browser(alice)
    mine, _ = await status_socket(cookies=first.cookies)
    theirs, _ = await status_socket(cookies=second.cookies)
    page = (await first.get("/accounts/sessions/")).content.decode()
    actions = re.findall(r'action="(/accounts/sessions/[^"]+/revoke/)"', page)
    assert actions == [f"/accounts/sessions/{await login_id_of(second)}/revoke/"]
    assert "This browser" in page
    response = await first.post(actions[0])
    assert response.status_code == 302
    await assert_logged_out(theirs, "revoked")
    await assert_still_open(mine)


async def test_revoke_refuses_the_current_login_and_other_users_logins(alice, bob):
    first, bobs = await browser(alice), await browser(bob)
    response = await first.post(f"/accounts/sessions/{await login_id_of(first)}/revoke/")
    assert response.status_code == 400
    response = await first.post(f"/accounts/sessions/{await login_id_of(bobs)}/revoke/")
    assert response.status_code == 404
    assert (await bobs.get("/accounts/sessions/")).status_code == 200


async def test_password_change_ends_every_other_session(status_socket, alice):
    first, second = await browser(alice), await browser(alice)
    mine, _ = await status_socket(cookies=first.cookies)
    theirs, _ = await status_socket(cookies=second.cookies)
    response = await first.post(
        "/accounts/password_change/",
        {
            "old_password": PASSWORD,
            "new_password1": "a-new-long-password-42",
            "new_password2": "a-new-long-password-42",
        },
    )
    assert response.status_code == 302
    await assert_logged_out(theirs, "password_changed")
    await assert_still_open(mine)
    assert (await first.get("/accounts/sessions/")).status_code == 200


@pytest.mark.parametrize("how", ["deactivate", "delete"])
async def test_deactivating_or_deleting_the_user_ends_every_session(status_socket, alice, how):
    tabs = [(await status_socket(user=alice))[0] for _ in range(2)]
    if how == "deactivate":
        alice.is_active = False
        await alice.asave()
    else:
        await alice.adelete()
    for tab in tabs:
        await assert_logged_out(tab, "deactivated")


async def test_logout_user_command_ends_every_session(status_socket, alice, bob):
    tabs = [(await status_socket(user=alice))[0] for _ in range(2)]
    other, _ = await status_socket(user=bob)
    await sync_to_async(call_command)("logout_user", "alice")
    for tab in tabs:
        await assert_logged_out(tab, "revoked")
    await assert_still_open(other)


async def test_admin_action_logs_users_out_everywhere(status_socket, alice, django_user_model):
    await sync_to_async(django_user_model.objects.create_superuser)("root", password=PASSWORD)
    admin = AsyncClient()
    await admin.post("/accounts/login/", {"username": "root", "password": PASSWORD})
    tab, _ = await status_socket(user=alice)
    response = await admin.post(
        "/admin/auth/user/", {"action": "log_out_everywhere", "_selected_action": [alice.pk]}
    )
    assert response.status_code == 302
    await assert_logged_out(tab, "revoked")


async def test_expiry_closes_the_tabs_unless_activity_extends_it(status_socket, alice):
    client = await browser(alice)
    tab, status = await status_socket(cookies=client.cookies)
    await client.post("/session/expiry/", {"seconds": "2"})
    pushed = await tab.receive_json_from(timeout=2)
    assert pushed["type"] == "status" and pushed["expires_at"] != status["expires_at"]
    await asyncio.sleep(1)
    await client.post("/session/expiry/", {"seconds": "3"})  # activity moves the expiry on
    assert (await tab.receive_json_from(timeout=2))["expires_at"] > pushed["expires_at"]
    assert await tab.receive_nothing(timeout=1.5)  # the first expiry passed: still open
    assert await tab.receive_json_from(timeout=3) == {"type": "logout", "reason": "expired"}


async def test_a_session_deleted_behind_the_apps_back_ends_within_the_recheck(
    status_socket, alice, settings
):
    settings.LIVE_RECHECK_SECONDS = 1
    client = await browser(alice)
    tab, _ = await status_socket(cookies=client.cookies)
    session_key = client.cookies["sessionid"].value
    from django.contrib.sessions.models import Session

    await Session.objects.filter(session_key=session_key).adelete()
    assert await tab.receive_json_from(timeout=3) == {"type": "logout", "reason": "session_ended"}


async def test_a_logout_the_channel_layer_lost_still_arrives_within_the_recheck(
    status_socket, alice, settings
):
    settings.LIVE_RECHECK_SECONDS = 1
    client = await browser(alice)
    tab, _ = await status_socket(cookies=client.cookies)
    login = Login.objects.filter(id=await login_id_of(client))
    # Ended with no broadcast at all: as if Redis had dropped the message.
    await sync_to_async(end_logins)(login, "revoked", notify=False)
    assert await tab.receive_json_from(timeout=3) == {"type": "logout", "reason": "revoked"}


async def test_a_session_evicted_from_the_cache_ends_within_the_recheck(
    status_socket, alice, settings
):
    settings.LIVE_RECHECK_SECONDS = 1
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    client = await browser(alice)
    tab, _ = await status_socket(cookies=client.cookies)
    from django.contrib.sessions.backends.cache import KEY_PREFIX
    from django.core.cache import caches

    await caches["default"].adelete(KEY_PREFIX + client.cookies["sessionid"].value)
    assert await tab.receive_json_from(timeout=3) == {"type": "logout", "reason": "session_ended"}


async def _end_by_logout(client, other):
    await client.post("/accounts/logout/")


async def _end_by_logout_everywhere(client, other):
    await other.post("/accounts/logout/everywhere/")


async def _end_by_revoke(client, other):
    response = await other.post(f"/accounts/sessions/{await login_id_of(client)}/revoke/")
    assert response.status_code == 302


@pytest.mark.parametrize("backend", ["db", "cache", "cached_db", "file"])
def test_logout_everywhere_deletes_the_stored_sessions_together(alice, bob, settings, backend):
    settings.SESSION_ENGINE = f"django.contrib.sessions.backends.{backend}"
    store = import_module(settings.SESSION_ENGINE).SessionStore
    browsers = [Client() for _ in range(4)]
    for client, user in zip(browsers, [alice, alice, alice, bob], strict=True):
        client.force_login(user)
    keys = [client.session.session_key for client in browsers]
    assert all(store().exists(key) for key in keys)

    with CaptureQueriesContext(connection) as queries:
        assert browsers[0].post("/accounts/logout/everywhere/").status_code == 302

    assert [store().exists(key) for key in keys] == [False, False, False, True]
    if backend in ("cache", "cached_db"):
        cached = caches[settings.SESSION_CACHE_ALIAS].get_many(
            [store.cache_key_prefix + key for key in keys]
        )
        assert list(cached) == [store.cache_key_prefix + keys[3]]
    deletes = [q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "django_session"')]
    assert len(deletes) == (1 if backend in ("db", "cached_db") else 0), deletes


async def _end_by_password_change(client, other):
    new = "a-new-long-password-42"
    data = {"old_password": PASSWORD, "new_password1": new, "new_password2": new}
    assert (await other.post("/accounts/password_change/", data)).status_code == 302


async def _end_by_expiry(client, other):
    await client.post("/session/expiry/", {"seconds": "1"})
    await asyncio.sleep(1.2)


ENDINGS = {
    "logout": _end_by_logout,
    "logout_everywhere": _end_by_logout_everywhere,
    "revoked": _end_by_revoke,
    "password_changed": _end_by_password_change,
    "expired": _end_by_expiry,
}


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("backend", ["db", "cache", "cached_db", "file", "signed_cookies"])
async def test_an_ended_login_cannot_be_replayed(status_socket, alice, settings, backend, ending):
    settings.SESSION_ENGINE = f"django.contrib.sessions.backends.{backend}"
    client = await browser(alice)
    other = await browser(alice)
    replay = AsyncClient()
    for name, morsel in client.cookies.items():
        replay.cookies[name] = morsel.value  # a copy of the cookies, taken while they worked
    assert (await replay.get("/accounts/sessions/")).status_code == 200

    await ENDINGS[ending](client, other)

    response = await replay.get("/accounts/sessions/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    _, status = await status_socket(cookies=replay.cookies)
    assert status["authenticated"] is False
