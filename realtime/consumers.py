"""The live status consumer behind /ws/status/ (protocol: docs/protocol.md).

`AuthMiddlewareStack` resolves the user once, at connect, and `scope["session"]` is a copy of the
session taken then; this consumer never trusts it later. Logouts reach it through the login's
group on the channel layer.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from realtime.groups import CLOSE_LOGGED_OUT, LOGIN_ID_SESSION_KEY, login_group


def _iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class StatusConsumer(AsyncWebsocketConsumer):
    """One browser tab (or any client) watching its session's login."""

    group: str | None = None

    # --- Connection lifecycle -----------------------------------------------------------------

    async def connect(self) -> None:
        """Runs once the origin check and auth middleware have resolved the user."""
        user = self.scope["user"]
        session = self.scope["session"]
        status: dict[str, Any] = {
            "type": "status",
            "authenticated": False,
            "username": None,
            "expires_at": None,
        }
        if user.is_authenticated:
            status.update(
                authenticated=True,
                username=user.get_username(),
                expires_at=_iso_utc(await session.aget_expiry_date()),
            )
            # Sessions from before this app was installed have no login id and no live group.
            login_id = await session.aget(LOGIN_ID_SESSION_KEY)
            if login_id:
                # Join before accepting, so no logout sent from now on can slip past this socket.
                self.group = login_group(login_id)
                await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json(status)

    async def disconnect(self, code: int) -> None:
        """Runs when the socket closes, for whatever reason."""
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    # --- Client messages ----------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Runs for every frame the client sends; bad input is answered, never fatal."""
        if text_data is None:
            await self.send_error("binary frames are not supported")
            return
        try:
            message = json.loads(text_data)
        except ValueError:
            await self.send_error("invalid JSON")
            return
        if not isinstance(message, dict):
            await self.send_error("message must be a JSON object")
            return
        if message.get("type") == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.send_error("unknown message type")

    # --- Channel-layer handlers ---------------------------------------------------------------

    async def live_logout(self, event: dict[str, Any]) -> None:
        """Runs when this socket's login has ended: say why, then close with 4001."""
        await self.send_json({"type": "logout", "reason": event["reason"]})
        await self.close(code=CLOSE_LOGGED_OUT)

    # --- Helpers ------------------------------------------------------------------------------

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, separators=(",", ":")))

    async def send_error(self, error: str) -> None:
        await self.send_json({"type": "error", "error": error})
