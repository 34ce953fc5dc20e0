"""Helpers for consumer tests with `channels.testing.WebsocketCommunicator`."""

from __future__ import annotations

from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from asgi_project.asgi import application

ORIGIN = b"http://127.0.0.1"
STATUS_PATH = "/ws/status/"


def cookie_header(cookies) -> bytes:
    """A Cookie header from a test client's cookie jar (a `SimpleCookie`)."""
    return "; ".join(f"{name}={morsel.value}" for name, morsel in cookies.items()).encode()


async def open_status_socket(*, user=None, cookies=None, origin: bytes | None = ORIGIN):
    """Connect to /ws/status/ and read the first message.

    `user` logs a fresh session in (through `login()`, so the login gets its identifier);
    `cookies` reuses a test client's session; neither gives an anonymous socket.
    Returns `(communicator, status)`; `status` is None when the handshake was refused.
    """
    if user is not None:
        client = AsyncClient()
        await client.aforce_login(user)
        cookies = client.cookies
    headers = []
    if origin is not None:
        headers.append((b"origin", origin))
    if cookies:
        headers.append((b"cookie", cookie_header(cookies)))
    communicator = WebsocketCommunicator(application, STATUS_PATH, headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    if not connected:
        return communicator, None
    return communicator, await communicator.receive_json_from(timeout=5)


async def assert_logged_out(communicator: WebsocketCommunicator, reason: str) -> None:
    """The socket got {"type": "logout", "reason": reason} and was then closed with 4001."""
    assert await communicator.receive_json_from(timeout=2) == {"type": "logout", "reason": reason}
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 4001}


async def assert_still_open(communicator: WebsocketCommunicator) -> None:
    """Nothing arrived, and the socket still answers a ping."""
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=2) == {"type": "pong"}


def emptied(table, keep: int = 3):
    """`table` (a set or dict) grown to 10,000 entries, then emptied but for `keep`: a table of
    a wave of sockets, after the wave."""
    for n in range(10_000):
        if isinstance(table, dict):
            table[f"key {n}"] = n
        else:
            table.add(f"key {n}")
    for n in range(keep, 10_000):
        (table.pop if isinstance(table, dict) else table.discard)(f"key {n}")
    return table
