"""Chromium (Debian's, through Playwright): two tabs of one browser follow a logout live."""

from __future__ import annotations

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


@pytest.mark.timeout(90)
async def test_logout_in_one_tab_shows_in_the_other_without_reload(
    live_servers, live_users, chromium
):
    (server,) = live_servers.start(1)
    context = await chromium.new_context(base_url=server.http_url)
    context.set_default_timeout(10_000)
    try:
        tab1 = await context.new_page()
        await tab1.goto("/accounts/login/")
        await tab1.fill("#id_username", "alice")
        await tab1.fill("#id_password", LIVE_PASSWORD)
        await tab1.click("button[type=submit]")
        await tab1.wait_for_url(server.http_url + "/")

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
