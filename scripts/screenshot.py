"""Make docs/two-tabs.png: two tabs of one browser, after a logout in the first.

Run from the repository root with the venv's Python: `.venv/bin/python scripts/screenshot.py`.
It serves the site on a throw-away SQLite database on a free loopback port, drives Debian's
Chromium through Playwright, and stops the server when done.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run import daphne  # noqa: E402

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


async def shoot(base_url: str, out: Path) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = await browser.new_context(
            base_url=base_url, viewport={"width": 640, "height": 360}
        )
        tab1, tab2 = await context.new_page(), await context.new_page()
        await tab1.goto("/accounts/login/")
        await tab1.fill("#id_username", "alice")
        await tab1.fill("#id_password", "alice-demo-pass")
        await tab1.click("button[type=submit]")
        await tab2.goto("/")
        await tab2.locator("#live-status", has_text="Logged in as alice").wait_for()
        before = await tab2.screenshot()
        await tab1.click("text=Log out")
        await tab2.locator("#live-status", has_text="Not logged in").wait_for()
        after = await tab2.screenshot()
        page = await browser.new_page(viewport={"width": 1300, "height": 420})
        images = "".join(
            f'<figure><figcaption>{caption}</figcaption><img src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}"></figure>'
            for caption, png in (
                ("Tab 2, logged in", before),
                ("Tab 2, a second after Log out in tab 1", after),
            )
        )
        await page.set_content(
            "<style>body{display:flex;gap:12px;margin:8px;font:14px system-ui;background:#ccd}"
            "figure{margin:0}img{border:1px solid #889;display:block}</style>" + images
        )
        await page.screenshot(path=str(out))
        await browser.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DJANGO_DEBUG": "true", "DATABASE_URL": f"sqlite:///{tmp}/db.sqlite3"}
        env.pop("REDIS_URL", None)
        for command in (["migrate", "-v0"], ["create_demo_users"]):
            subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True)
        server = daphne(env)  # the benchmark's: a free loopback port, waited for until it serves
        try:
            base_url = f"http://127.0.0.1:{server.port}"
            asyncio.run(asyncio.wait_for(shoot(base_url, ROOT / "docs" / "two-tabs.png"), 60))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
