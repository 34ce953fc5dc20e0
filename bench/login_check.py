"""What the per-login check costs: each request and each socket connect, with and without it.

Run: `.venv/bin/python bench/login_check.py` (embedded defaults: SQLite, in-memory layer; set
DATABASE_URL for PostgreSQL). Both variants run in the same process, interleaved, on the same
database; medians of several rounds are printed. docs/performance.md records the figures.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "asgi_project.settings")
os.environ.setdefault("DJANGO_DEBUG", "true")
_db = Path(tempfile.mkdtemp()) / "bench.sqlite3"
os.environ.setdefault("DATABASE_URL", f"sqlite:///{_db}")

import django  # noqa: E402

django.setup()

from asgiref.sync import async_to_sync  # noqa: E402
from channels.testing import WebsocketCommunicator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client, override_settings  # noqa: E402

from accounts import logins  # noqa: E402

REQUESTS = 500
CONNECTS = 200
ROUNDS = 5
MIDDLEWARE = "accounts.middleware.LiveLoginMiddleware"


def per_request_seconds(client: Client) -> float:
    started = time.perf_counter()
    for _ in range(REQUESTS):
        assert client.get("/session/").status_code == 200
    return (time.perf_counter() - started) / REQUESTS


def per_connect_seconds(cookie: bytes) -> float:
    from asgi_project.asgi import application

    async def run() -> float:
        headers = [(b"origin", b"http://127.0.0.1"), (b"cookie", cookie)]
        started = time.perf_counter()
        for _ in range(CONNECTS):
            socket = WebsocketCommunicator(application, "/ws/status/", headers=headers)
            assert (await socket.connect())[0]
            await socket.receive_json_from()
            await socket.disconnect()
        return (time.perf_counter() - started) / CONNECTS

    return async_to_sync(run)()


def main() -> None:
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench", password="bench-pass-1234")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    without = [m for m in settings.MIDDLEWARE if m != MIDDLEWARE]
    bare = Client(HTTP_HOST="127.0.0.1", HTTP_COOKIE=cookie.decode())
    real_check = logins.active_login
    row = real_check(client.session["_live_login_id"], user.pk)
    results: dict[str, list[float]] = {k: [] for k in ("req+", "req-", "ws+", "ws-")}
    for _ in range(ROUNDS):
        results["req+"].append(per_request_seconds(client))
        with override_settings(MIDDLEWARE=without):
            results["req-"].append(per_request_seconds(bare))
        results["ws+"].append(per_connect_seconds(cookie))
        # The reference: the same connect with the Login lookup answered without a query.
        logins.active_login = lambda login_id, user_id: row
        results["ws-"].append(per_connect_seconds(cookie))
        logins.active_login = real_check
    med = {k: statistics.median(v) * 1e6 for k, v in results.items()}
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    print(f"database: {engine}; medians of {ROUNDS} rounds (microseconds per operation)")
    print(f"{'':28}{'with check':>12}{'without':>12}{'added':>10}")
    print(
        f"{'authenticated GET /session/':28}{med['req+']:12.0f}{med['req-']:12.0f}"
        f"{med['req+'] - med['req-']:10.0f}"
    )
    print(
        f"{'authenticated WS connect':28}{med['ws+']:12.0f}{med['ws-']:12.0f}"
        f"{med['ws+'] - med['ws-']:10.0f}"
    )


if __name__ == "__main__":
    main()
