"""Chromium (Debian's, through Playwright): two tabs of one browser follow a logout live."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from tests.conftest import require
from tests.live import LIVE_PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.live]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def chromium():
    require(shutil.which(CHROMIUM) is not None, f"Chromium is not installed at {CHROMIUM}")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()


async def log_in(page, base_url: str, username: str = "alice") -> None:
    await page.goto("/accounts/login/")
    await page.fill("#id_username", username)
    await page.fill("#id_password", LIVE_PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(base_url + "/")


@pytest.mark.timeout(90)
async def test_logout_in_one_tab_shows_in_the_other_without_reload(
    live_servers, live_users, chromium
):
    (server,) = live_servers.start(1)
    context = await chromium.new_context(base_url=server.http_url)
    context.set_default_timeout(10_000)
    try:
        tab1 = await context.new_page()
        await log_in(tab1, server.http_url)

        tab2 = await context.new_page()
        await tab2.goto("/")
        for tab in (tab1, tab2):
            status = tab.locator("#live-status")
            await status.filter(has_text="Logged in as alice").wait_for()
            assert await status.get_attribute("data-state") == "authenticated"

        await tab2.evaluate("window.__notReloaded = true")
        await tab1.click("text=Log out")
        await tab1.wait_for_url("**/accounts/login/")

        status = tab2.locator("#live-status")
        await status.filter(has_text="Not logged in").wait_for(timeout=2_000)
        assert await status.get_attribute("data-state") == "anonymous"
        assert await tab2.locator("#live-notice").inner_text() == ("You signed out in another tab.")
        assert await tab2.evaluate("window.__notReloaded") is True
        assert await tab2.locator("form.auth-only").is_hidden()  # the logout button
    finally:
        await context.close()


@pytest.mark.timeout(90)
async def test_login_in_one_tab_shows_in_the_other_without_reload(
    live_servers, live_users, chromium
):
    (server,) = live_servers.start(1)
    context = await chromium.new_context(base_url=server.http_url)
    context.set_default_timeout(10_000)
    try:
        tab1, tab2 = await context.new_page(), await context.new_page()
        await tab2.goto("/")
        await tab2.locator("#live-status", has_text="Not logged in").wait_for()
        await tab2.evaluate("window.__notReloaded = true")

        await log_in(tab1, server.http_url)
        status = tab2.locator("#live-status")
        await status.filter(has_text="Logged in as alice").wait_for(timeout=2_000)
        assert await status.get_attribute("data-state") == "authenticated"
        assert await tab2.evaluate("window.__notReloaded") is True
    finally:
        await context.close()


@pytest.mark.timeout(90)
async def test_revoking_another_browser_from_the_sessions_page(live_servers, live_users, chromium):
    (server,) = live_servers.start(1)
    mine = await chromium.new_context(base_url=server.http_url, user_agent=FIREFOX_ON_LINUX)
    theirs = await chromium.new_context(base_url=server.http_url)
    for context in (mine, theirs):
        context.set_default_timeout(10_000)
    try:
        other = await theirs.new_page()
        await log_in(other, server.http_url)
        sessions = await mine.new_page()
        await log_in(sessions, server.http_url)
        await sessions.goto("/accounts/sessions/")

        rows = sessions.locator("#sessions-table tbody tr")
        await rows.nth(1).wait_for()
        assert await rows.count() == 2
        current = sessions.locator("#sessions-table tr.current")
        assert "This browser" in await current.inner_text()
        assert "Firefox 128 on Linux" in await current.inner_text()
        assert await current.locator("form").count() == 0
        theirs_row = sessions.locator("#sessions-table tbody tr:not(.current)")
        await theirs_row.locator("td.tabs", has_text="1").wait_for()

        second_tab = await theirs.new_page()  # the count follows, live
        await second_tab.goto("/")
        await theirs_row.locator("td.tabs", has_text="2").wait_for(timeout=3_000)

        await theirs_row.locator("button", has_text="Revoke").click()
        for page in (other, second_tab):
            status = page.locator("#live-status")
            await status.filter(has_text="Not logged in").wait_for(timeout=2_000)
            assert await page.locator("#live-notice").inner_text() == (
                "This device was signed out from another one."
            )
        await rows.nth(1).wait_for(state="detached")
        assert await rows.count() == 1
    finally:
        await mine.close()
        await theirs.close()


FIREFOX_ON_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


@pytest.mark.timeout(90)
async def test_a_restarted_server_brings_the_badge_back_without_a_reload(
    live_servers, live_users, chromium
):
    (server,) = live_servers.start(1)
    context = await chromium.new_context(base_url=server.http_url)
    context.set_default_timeout(10_000)
    try:
        page = await context.new_page()
        await log_in(page, server.http_url)
        status = page.locator("#live-status")
        await status.filter(has_text="Logged in as alice").wait_for()
        await page.evaluate("window.__notReloaded = true")
        states = "window.__states = []; new MutationObserver(() => window.__states.push("
        states += "document.querySelector('#live-status').dataset.state)).observe("
        states += "document.querySelector('#live-status'), {attributes: true})"
        await page.evaluate(states)

        await asyncio.to_thread(live_servers.restart, server)  # SIGTERM, then the same port
        await status.filter(has_text="Logged in as alice").wait_for(timeout=20_000)
        assert "offline" in await page.evaluate("window.__states")
        assert await status.get_attribute("data-state") == "authenticated"
        assert await page.evaluate("window.__notReloaded") is True

        # Full jitter: a thousand tabs on their fourth retry spread over the whole window
        # (0 to 4 s), rather than returning in the same second.
        delays = await page.evaluate(
            """async () => {
                const {backoffDelay} = await import('/static/realtime/live-status.js');
                return Array.from({length: 1000}, () => backoffDelay(3));
            }"""
        )
        per_second = [sum(1 for d in delays if s * 1000 <= d < (s + 1) * 1000) for s in range(4)]
        assert sum(per_second) == 1000 and max(per_second) < 400, per_second
    finally:
        await context.close()


@pytest.mark.timeout(90)
async def test_a_tab_past_the_socket_limit_says_so_and_connects_when_a_place_frees(
    live_servers, live_users, chromium
):
    (server,) = live_servers.start(1, LIVE_MAX_SOCKETS_PER_LOGIN="1")
    context = await chromium.new_context(base_url=server.http_url)
    context.set_default_timeout(10_000)
    try:
        first = await context.new_page()
        await log_in(first, server.http_url)
        await first.locator("#live-status", has_text="Logged in as alice").wait_for()
        second = await context.new_page()
        await second.goto("/")
        status = second.locator("#live-status")
        await status.filter(has_text="Too many open tabs").wait_for()
        assert await status.get_attribute("data-state") == "limited"
        await first.close()
        await status.filter(has_text="Logged in as alice").wait_for(timeout=20_000)
    finally:
        await context.close()
