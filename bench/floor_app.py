"""The floor under the project: Daphne serving an ASGI app that does nothing but accept the
socket, send the same `status` message and wait for the close. No Django, no session, no channel
layer: what Daphne itself costs per handshake and per idle socket, next to the reference.

With `FLOOR_FIXES=1`, the project's fixes to Daphne are applied first (realtime/daphne_fixes.py),
as they are when the project loads: that is Daphne as the project runs it.

Run: FLOOR_FIXES=1 daphne -b 127.0.0.1 -p PORT bench.floor_app:application
"""

from __future__ import annotations

import json
import os

if os.environ.get("FLOOR_FIXES") == "1":
    from realtime import daphne_fixes

    daphne_fixes.apply()

STATUS = json.dumps(
    {
        "type": "status",
        "authenticated": True,
        "username": "bench0",
        "expires_at": "2030-01-01T00:00:00Z",
    }
)


async def application(scope, receive, send) -> None:
    if scope["type"] != "websocket":
        raise ValueError(f"the floor app serves WebSockets only, not {scope['type']}")
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": STATUS})
    while (await receive())["type"] != "websocket.disconnect":
        pass
