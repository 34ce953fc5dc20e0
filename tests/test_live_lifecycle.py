"""Live: every way a login begins or ends, across two Daphne processes sharing Redis.

Two browsers of alice and one of bob, each with tabs on both processes. Each case checks that
exactly the affected browsers' tabs get the right reason within a second, and that every other tab
hears nothing and is still open.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session

from tests.live import LIVE_PASSWORD, ROOT, Browser, Tab, live_password_hash

pytestmark = [pytest.mark.live, pytest.mark.timeout(90)]

RECHECK_SECONDS = 2


@dataclass
class Scene:
    servers: list
    browsers: dict[str, Browser]
    tabs: dict[str, list[Tab]]


@pytest.fixture
async def scene(live_servers, live_users):
    servers = live_servers.start(2, LIVE_RECHECK_SECONDS=str(RECHECK_SECONDS))
    browsers = {}
    tabs = {}
    for name, username, server in [
        ("alice_a", "alice", servers[0]),
        ("alice_b", "alice", servers[1]),
        ("bob", "bob", servers[0]),
    ]:
        browser = browsers[name] = Browser(server)
        await browser.login(username)
        tabs[name] = [await browser.open_tab(s) for s in servers]
        assert all(tab.status["username"] == username for tab in tabs[name])
    yield Scene(servers, browsers, tabs)
    for browser in browsers.values():
        await browser.close()


async def revoke_other_browser(scene: Scene) -> None:
    page = (await scene.browsers["alice_a"].http.get("/accounts/sessions/")).text
    actions = re.findall(r'action="(/accounts/sessions/[^"]+/revoke/)"', page)
    assert len(actions) == 1 and "This browser" in page
    assert (await scene.browsers["alice_a"].post(actions[0])).status_code == 302


async def change_password(scene: Scene) -> None:
    new = "an-entirely-new-password-77"
    response = await scene.browsers["alice_a"].post(
        "/accounts/password_change/",
        {"old_password": LIVE_PASSWORD, "new_password1": new, "new_password2": new},
    )
    assert response.status_code == 302


@sync_to_async
def deactivate_alice() -> None:
    user = get_user_model().objects.get(username="alice")
    user.is_active = False
    user.save()


@sync_to_async
def delete_alice() -> None:
    get_user_model().objects.get(username="alice").delete()


def logout_user_command(scene: Scene):
    @sync_to_async
    def run() -> None:
        env = scene.servers[0].env
        subprocess.run(
            [sys.executable, "manage.py", "logout_user", "alice"],
            cwd=ROOT, env=env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    return run()


async def admin_action(scene: Scene) -> None:
    await sync_to_async(get_user_model().objects.create)(
        username="root", password=live_password_hash(), is_staff=True, is_superuser=True
    )
    admin = Browser(scene.servers[1])
    try:
        await admin.login("root")
        alice_pk = await sync_to_async(lambda: get_user_model().objects.get(username="alice").pk)()
        response = await admin.post(
            "/admin/auth/user/", {"action": "log_out_everywhere", "_selected_action": alice_pk}
        )
        assert response.status_code == 302
    finally:
        await admin.close()


CASES = {
    "logout": (lambda s: s.browsers["alice_a"].logout(), {"alice_a"}),
    "logout_everywhere": (
        lambda s: s.browsers["alice_a"].post("/accounts/logout/everywhere/"),
        {"alice_a", "alice_b"},
    ),
    "revoked": (revoke_other_browser, {"alice_b"}),
    "password_changed": (change_password, {"alice_b"}),
    "deactivated": (lambda s: deactivate_alice(), {"alice_a", "alice_b"}),
    "deactivated-by-delete": (lambda s: delete_alice(), {"alice_a", "alice_b"}),
    "revoked-by-command": (logout_user_command, {"alice_a", "alice_b"}),
    "revoked-by-admin": (admin_action, {"alice_a", "alice_b"}),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_each_ending_reaches_exactly_the_affected_tabs(scene, case):
    action, affected = CASES[case]
    reason = case.split("-")[0]
    await action(scene)
    started = time.monotonic()
    await asyncio.gather(
        *(tab.expect_logout(reason, timeout=1.0) for name in affected for tab in scene.tabs[name])
    )
    assert time.monotonic() - started < 1.0
    for name in scene.tabs.keys() - affected:
        # Changing the password saves alice_a's session, which moves (and pushes) its expiry.
        still = "alice" if case == "password_changed" and name == "alice_a" else None
        for tab in scene.tabs[name]:
            await tab.expect_silence_and_alive(still=still)


async def test_expiry_reaches_the_tabs_within_a_second_of_it(scene):
    alice = scene.browsers["alice_a"]
    assert (await alice.post("/session/expiry/", {"seconds": "3"})).status_code == 302
    expires = time.time() + 3
    for tab in scene.tabs["alice_a"]:
        pushed = await tab.receive()
        assert pushed["type"] == "status" and pushed["authenticated"] is True
    await asyncio.gather(
        *(tab.expect_logout("expired", timeout=5.0) for tab in scene.tabs["alice_a"])
    )
    assert time.time() - expires < 1.0
    for name in ("alice_b", "bob"):
        for tab in scene.tabs[name]:
            await tab.expect_silence_and_alive()


async def test_a_vanished_session_ends_within_the_recheck_interval(scene):
    key = scene.browsers["alice_a"].http.cookies["sessionid"]
    await sync_to_async(Session.objects.filter(session_key=key).delete)()
    started = time.monotonic()
    await asyncio.gather(
        *(
            tab.expect_logout("session_ended", timeout=RECHECK_SECONDS + 1.5)
            for tab in scene.tabs["alice_a"]
        )
    )
    assert time.monotonic() - started < RECHECK_SECONDS + 1.0
    for name in ("alice_b", "bob"):
        for tab in scene.tabs[name]:
            await tab.expect_silence_and_alive()


async def test_the_sessions_page_counts_tabs_across_processes(scene):
    page = (await scene.browsers["alice_a"].http.get("/accounts/sessions/")).text
    counts = re.findall(r'<td class="tabs">(\d+)</td>', page)
    assert sorted(counts) == ["2", "2"]  # each alice browser: one tab on each process
    await scene.browsers["alice_b"].open_tab(scene.servers[1])
    page = (await scene.browsers["alice_a"].http.get("/accounts/sessions/")).text
    assert sorted(re.findall(r'<td class="tabs">(\d+)</td>', page)) == ["2", "3"]


async def test_login_and_user_switch_reach_every_open_tab(live_servers, live_users):
    servers = live_servers.start(2)
    browser, bystander = Browser(servers[0]), Browser(servers[1])
    try:
        await browser.visit()  # a first visit: the browser cookie and a session
        await bystander.login("alice")
        watching = await bystander.open_tab(servers[0])
        tabs = [await browser.open_tab(server) for server in servers]
        assert [tab.status["authenticated"] for tab in tabs] == [False, False]

        await browser.login("alice")
        started = time.monotonic()
        for tab in tabs:
            status = await tab.receive(timeout=1.0)
            assert (status["type"], status["username"]) == ("status", "alice")
        assert time.monotonic() - started < 1.0

        await browser.logout()
        await asyncio.gather(*(tab.expect_logout("logout") for tab in tabs))
        tabs = [await browser.open_tab(server) for server in servers]  # as the client reconnects
        assert [tab.status["authenticated"] for tab in tabs] == [False, False]

        await browser.login("bob")
        for tab in tabs:
            status = await tab.receive(timeout=1.0)
            assert (status["type"], status["username"]) == ("status", "bob")
        await watching.expect_silence_and_alive()
    finally:
        await browser.close()
        await bystander.close()
