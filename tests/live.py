"""Real Daphne processes, HTTP browsers (cookie jars) and WebSocket tabs for live tests.

Every process is bound to 127.0.0.1 on a free port, waited for with a deadline, and stopped by the
fixture that started it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import redis
import websockets
from django.contrib.auth.hashers import make_password

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LIVE_PASSWORD = "live-test-pass-1234"
# This run's channel-layer keys in Redis: nothing left there by earlier runs, the benchmark or
# another checkout (group members counted for the socket limits, say) is seen by this one.
LAYER_PREFIX = f"asgi-test-{os.getpid()}"
GROUP_KEYS = LAYER_PREFIX + ":group:*"


def live_redis_url() -> str:
    return os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


def redis_available(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


_hash_cache: dict[str, str] = {}


def live_password_hash() -> str:
    """The production hasher's hash of LIVE_PASSWORD, computed once: the servers verify it."""
    if "hash" not in _hash_cache:
        _hash_cache["hash"] = make_password(LIVE_PASSWORD, hasher="pbkdf2_sha256")
    return _hash_cache["hash"]


def database_url(db: dict) -> str:
    """A DATABASE_URL for the subprocesses, pointing at the test database."""
    name = db["NAME"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{name}"
    auth = quote(db.get("USER") or "")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"])
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{auth}@{host}:{port}/{name}"


def project_env(db: dict) -> dict[str, str]:
    """The environment of a project process (a server, manage.py) on the database `db`."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "asgi_project.settings",
        "DJANGO_DEBUG": "true",  # plain HTTP on loopback: no TLS redirect, no Secure cookies
        "DATABASE_URL": database_url(db),
    }


def manage(db: dict, *command: str) -> None:
    """Run a manage.py command on the database `db`, in a process of its own."""
    subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=ROOT,
        env=project_env(db),
        check=True,
        timeout=120,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """One Daphne process."""

    port: int
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/status/"

    def log(self, tail: int | None = 4000) -> str:
        text = self.log_path.read_text(errors="replace")
        return text[-tail:] if tail else text


@dataclass
class LiveServers:
    """Starts Daphne processes that share one Redis and one database, and stops them all."""

    redis_url: str
    log_dir: Path
    database: dict
    servers: list[Server] = field(default_factory=list)

    def start(self, count: int = 1, **env: str) -> list[Server]:
        """Start `count` processes with extra environment `env`, and wait until they serve."""
        started = [self._spawn(env) for _ in range(count)]
        for server in started:
            self._wait_ready(server)
        self.servers.extend(started)
        return started

    def restart(self, server: Server) -> Server:
        """Stop `server` with SIGTERM, as a deploy would, and start it again on the same port."""
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(STOP_TIMEOUT)
        self.servers.remove(server)
        again = self._spawn(server.env, port=server.port)
        self._wait_ready(again)
        self.servers.append(again)
        return again

    def _spawn(self, extra_env: dict[str, str], *, port: int | None = None) -> Server:
        port = port or free_port()
        env = {
            **project_env(self.database),
            "REDIS_URL": self.redis_url,
            "PYTHONUNBUFFERED": "1",
            "PYTHONMALLOC": "malloc",  # as the Procfile runs it (realtime/memory.py)
            "CHANNEL_LAYER_PREFIX": LAYER_PREFIX,
            **extra_env,
        }
        log_path = self.log_dir / f"daphne-{port}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "asgi_project.asgi:application",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return Server(port=port, process=process, log_path=log_path, env=env)

    def _wait_ready(self, server: Server) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"Daphne exited early:\n{server.log()}")
            try:
                if httpx.get(server.http_url + "/accounts/login/", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Daphne did not serve within {START_TIMEOUT}s:\n{server.log()}")

    def stop(self) -> None:
        for server in self.servers:
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        for server in self.servers:
            try:
                server.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(STOP_TIMEOUT)
        self.servers.clear()


@dataclass
class RedisServer:
    """A private redis-server on a free loopback port, for tests that stop, restart or flush it."""

    log_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with (self.log_dir / f"redis-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *("redis-server", "--bind", "127.0.0.1", "--port", str(self.port)),
                    *("--save", "", "--appendonly", "no"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not redis_available(self.url):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(STOP_TIMEOUT)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)


class Browser:
    """One browser: a cookie jar that logs in and out over HTTP and opens tabs."""

    def __init__(self, server: Server, *, cookie_header: str | None = None) -> None:
        """`cookie_header` starts the jar from a `Cookie:` header (a copied, or stolen, browser)."""
        self.server = server
        cookies = httpx.Cookies()
        for pair in (cookie_header or "").split("; "):
            if "=" in pair:
                name, value = pair.split("=", 1)
                cookies.set(name, value, domain="127.0.0.1")
        self.http = httpx.AsyncClient(base_url=server.http_url, timeout=10, cookies=cookies)
        self.tabs: list[Tab] = []

    async def post(self, path: str, data: dict | None = None) -> httpx.Response:
        """A form POST with the CSRF token, as the page's form would send it."""
        if "csrftoken" not in self.http.cookies:
            await self.http.get("/accounts/login/")
        payload = {"csrfmiddlewaretoken": self.http.cookies["csrftoken"], **(data or {})}
        return await self.http.post(path, data=payload, headers={"Referer": self.server.http_url})

    async def login(self, username: str, password: str = LIVE_PASSWORD, **extra) -> None:
        response = await self.post(
            "/accounts/login/", {"username": username, "password": password, **extra}
        )
        assert response.status_code == 302, f"login failed: {response.status_code}"

    async def visit(self, path: str = "/") -> httpx.Response:
        return await self.http.get(path)

    async def logout(self) -> httpx.Response:
        return await self.post("/accounts/logout/")

    def cookie_header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())

    async def open_tab(self, server: Server | None = None) -> Tab:
        """Open /ws/status/ with this browser's cookies; the first (status) message is read."""
        server = server or self.server
        connection = await websockets.connect(
            server.ws_url,
            origin=server.http_url,
            additional_headers={"Cookie": self.cookie_header()},
            open_timeout=5,
            ping_interval=None,  # truly idle: no keep-alive traffic from the client
        )
        tab = Tab(connection, json.loads(await asyncio.wait_for(connection.recv(), 5)))
        self.tabs.append(tab)
        return tab

    async def close(self) -> None:
        for tab in self.tabs:
            await tab.connection.close()
        await self.http.aclose()


@dataclass
class Tab:
    """One open WebSocket and the status message it got first."""

    connection: websockets.ClientConnection
    status: dict

    async def receive(self, timeout: float = 2.0) -> dict:
        return json.loads(await asyncio.wait_for(self.connection.recv(), timeout))

    async def expect_logout(self, reason: str, timeout: float = 2.0) -> None:
        """The next message is the logout, and then the server closes with 4001."""
        assert await self.receive(timeout) == {"type": "logout", "reason": reason}
        with_close = await asyncio.wait_for(self.connection.wait_closed(), timeout)
        assert with_close is None
        assert self.connection.close_code == 4001

    async def expect_silence_and_alive(self, quiet: float = 0.5, *, still: str | None = None):
        """Nothing arrives for `quiet` seconds, and the socket still answers a ping.

        With `still`, a status push saying that user is still logged in is allowed (a session
        write moved the expiry, which the server pushes again).
        """
        deadline = time.monotonic() + quiet
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = json.loads(await asyncio.wait_for(self.connection.recv(), left))
            except TimeoutError:
                break
            if still and message.get("type") == "status" and message.get("username") == still:
                continue
            raise AssertionError(f"expected silence, got {message}")
        await self.connection.send(json.dumps({"type": "ping"}))
        assert await self.receive() == {"type": "pong"}
