"""The reference: a plain `websockets` server speaking the same JSON as /ws/status/.

It knows its sessions from a file (cookie value -> username), checks the cookie at the handshake,
sends the same `status` message, and on a control message sends the same `logout` message to every
socket of the named sessions and closes them with 4001. No Django, no channel layer: the physical
limit of a Python WebSocket server doing this job.

Run: python bench/reference_server.py PORT SESSIONS_JSON
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from http.cookies import SimpleCookie

from websockets.asyncio.server import ServerConnection, serve

SESSIONS: dict[str, str] = {}
SOCKETS: dict[str, set[ServerConnection]] = {}


def _session_of(connection: ServerConnection) -> str | None:
    cookie = SimpleCookie(connection.request.headers.get("Cookie", ""))
    morsel = cookie.get("sessionid")
    return morsel.value if morsel and morsel.value in SESSIONS else None


async def _logout(session: str) -> None:
    message = json.dumps({"type": "logout", "reason": "logout"})
    connections = list(SOCKETS.pop(session, ()))
    for connection in connections:
        await connection.send(message)
    await asyncio.gather(*(connection.close(4001) for connection in connections))


async def handler(connection: ServerConnection) -> None:
    if connection.request.path == "/control":
        async for raw in connection:
            sessions = json.loads(raw)["logout"]
            await asyncio.gather(*(_logout(s) for s in sessions))
            await connection.send("done")
        return
    session = _session_of(connection)
    status = {
        "type": "status",
        "authenticated": session is not None,
        "username": SESSIONS.get(session) if session else None,
        "expires_at": "2030-01-01T00:00:00Z" if session else None,
    }
    if session:
        SOCKETS.setdefault(session, set()).add(connection)
    try:
        await connection.send(json.dumps(status))
        async for raw in connection:
            if json.loads(raw).get("type") == "ping":
                await connection.send('{"type":"pong"}')
    finally:
        if session:
            SOCKETS.get(session, set()).discard(connection)


async def main(port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None):
        print("ready", flush=True)
        await stop


if __name__ == "__main__":
    with open(sys.argv[2]) as f:
        SESSIONS.update(json.load(f))
    asyncio.run(main(int(sys.argv[1])))
