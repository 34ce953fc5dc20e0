"""The live status consumer behind /ws/status/ (protocol: docs/protocol.md).

The auth stack (`realtime.auth`) resolves the user and checks the login against the `Login` table
once, at connect; `scope["session"]` is a copy of the session taken then. Once the status has gone
out, this consumer drops it and the `Login` row from its scope (1.7 KiB per idle socket): nothing
reads them later, and every later check reads the store fresh. Afterwards the login's group, the
browser's group and the process's login watcher tell it what changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from realtime.groups import (
    BROWSER_COOKIE,
    CLOSE_GOING_AWAY,
    CLOSE_LOGGED_OUT,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY_SOCKETS,
    CLOSE_TRY_AGAIN,
    MAX_FRAME_BYTES,
    RATE_BURST,
    RATE_PER_SECOND,
    browser_group,
    is_valid_id,
    login_group,
    user_sessions_group,
    user_tabs_group,
)
from realtime.layers import (
    REDIS_DOWN,
    BlockingPoolRedisChannelLayer,
    ChannelQueue,
    add_to_groups,
    discard_from_groups,
    join_and_count,
)
from realtime.watch import watcher

logger = logging.getLogger(__name__)

# How long a socket may spend leaving its groups while the server shuts down.
SHUTDOWN_LEAVE_SECONDS = 2.0


def _iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class StatusConsumer(AsyncWebsocketConsumer):
    """One browser tab (or any client) watching its browser's login."""

    login_id: str | None = None
    user_id: int | None = None
    username: str | None = None
    expires_at: float = 0.0
    ended = False
    accepted = False
    watching_sessions = False
    bucket: tuple[float, float] | None = None  # (tokens, when) of the message rate limit

    # --- Connection lifecycle -----------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self._serve(scope, receive, send)
        except asyncio.CancelledError:
            # The server is shutting down (Daphne cancels every application on SIGTERM): say
            # "going away" so the client reconnects with backoff, and leave the shared groups
            # so other processes stop counting this tab.
            # Not after the client has gone: then Daphne cancels a disconnect that ran too long,
            # and running it again would only add to whatever slowed it.
            if self.accepted:
                self.accepted = False
                await send({"type": "websocket.close", "code": CLOSE_GOING_AWAY})
                try:
                    await asyncio.wait_for(
                        self.disconnect(CLOSE_GOING_AWAY), SHUTDOWN_LEAVE_SECONDS
                    )
                except Exception:
                    logger.warning("could not leave the channel-layer groups at shutdown")
            raise

    async def _serve(self, scope, receive, send) -> None:
        """Channels' `AsyncConsumer.__call__`, with one queue for both kinds of message where it
        can: under Daphne, whose input queue for a socket is a `ChannelQueue`
        (realtime/daphne_fixes.py, fix 5), and the Redis layer, whose reader then puts this
        socket's events into that same queue. Channels waits on two receives with
        `asyncio.wait` and a new task for each message, so an event took three turns of the
        event loop to reach `dispatch`, and every idle socket kept two more tasks waiting."""
        queue = getattr(receive, "__self__", None)
        layer = get_channel_layer(self.channel_layer_alias)
        if not isinstance(queue, ChannelQueue) or not isinstance(
            layer, BlockingPoolRedisChannelLayer
        ):
            await super().__call__(scope, receive, send)  # the test communicator, uvicorn, ...
            return
        self.scope, self.channel_layer, self.base_send = scope, layer, send
        self.channel_name = await layer.new_channel_into(queue)
        try:
            while True:
                await self.dispatch(await queue.get())
        except StopConsumer:
            pass
        finally:
            layer.stop_delivering(self.channel_name)

    async def connect(self) -> None:
        """Runs once the origin check and auth middleware have resolved the user."""
        self.joined: list[str] = []
        refusal: tuple[int, str | None] | None = None
        if self.scope.get("live_unavailable"):
            refusal = (CLOSE_TRY_AGAIN, None)
        else:
            try:
                refusal = await self._join_all()
            except REDIS_DOWN:
                logger.warning("refused a socket: Redis is unreachable")
                refusal = (CLOSE_TRY_AGAIN, None)
        if refusal is not None:
            # Unavailable (the database, session store or Redis; RFC 6455's "try again later")
            # or over a socket limit: accept only to say so, then close.
            code, error = refusal
            await self.disconnect(code)
            await self.accept()
            if error:
                await self.send_error(error)
            await self.close(code=code)
            return
        await self.accept()
        self.accepted = True
        watcher().opened(self)
        await self.send_status()
        self.scope.pop("session", None)  # not read again (the module's docstring)
        self.scope.pop("live_login", None)

    async def _join_all(self) -> tuple[int, str] | None:
        """Join this socket's groups (in one round trip), or say why it may not open.

        The same round trip says how many sockets the login and the user have with this one; over
        a limit, the socket is refused and `disconnect` leaves the groups again."""
        groups = []
        browser_id = self.scope["cookies"].get(BROWSER_COOKIE)
        if is_valid_id(browser_id):
            groups.append(browser_group(browser_id))
        user, login = self.scope["user"], self.scope["live_login"]
        if login is not None:  # None: anonymous, or an ended login's cookie replayed
            groups += [login_group(login.id), user_tabs_group(user.pk)]
        # Join before the status goes out, so no logout sent from now on can slip past.
        sizes = await join_and_count(self.channel_layer, groups, self.channel_name)
        self.joined += groups
        if login is None:
            return None
        per_login, per_user = sizes[-2:]
        if per_login > settings.LIVE_MAX_SOCKETS_PER_LOGIN:
            return (CLOSE_TOO_MANY_SOCKETS, "too many open sockets for this session")
        if per_user > settings.LIVE_MAX_SOCKETS_PER_USER:
            return (CLOSE_TOO_MANY_SOCKETS, "too many open sockets for this user")
        self._set_login(login.id, user.pk, user.get_username(), login.expires_at.timestamp())
        return None

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Channels' own, without closing old database connections afterwards: that is a hop to
        the thread that runs the HTTP views, per socket, queued with their requests (10% of the
        CPU of 10,000 tabs closing, py-spy). Nothing here touches the database, and this consumer
        joins none of Channels' `groups`."""
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def disconnect(self, code: int) -> None:
        """Runs when the socket closes, for whatever reason."""
        self.accepted = False
        watcher().closed(self)
        leaving = list(getattr(self, "joined", []))  # absent if it never reached connect()
        if self.ended and self.login_id:
            # An ended login's group is dropped whole by whoever sent the logout
            # (realtime.broadcast); skipping the discard saves a round trip per tab in a storm.
            leaving.remove(login_group(self.login_id))
        self._forget_login()
        try:
            await self._leave(leaving)
        except REDIS_DOWN:
            # Redis is unreachable: the memberships expire there by themselves (group_expiry).
            logger.warning("could not leave the channel-layer groups: Redis is unreachable")

    async def rejoin(self) -> None:
        """Add this socket to its groups again (after Redis lost them, or before they expire)."""
        await add_to_groups(
            self.channel_layer, list(getattr(self, "joined", [])), self.channel_name
        )

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Runs for every event; unlike Channels' own, without closing old database connections
        first (a thread hop per event): no handler here touches the database. Once the socket
        has been told its login ended, only its disconnect is handled: until the close, the
        client's frames and other events get no answer (docs/protocol.md)."""
        if self.ended and message["type"] != "websocket.disconnect":
            return
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # --- Client messages ----------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Runs for every frame the client sends; bad input is answered, never fatal, but an
        oversized frame (1009) or a flood of them (1008) closes the socket."""
        frame = text_data.encode() if text_data is not None else bytes_data or b""
        if len(frame) > MAX_FRAME_BYTES:
            await self.close(code=CLOSE_TOO_BIG)
            return
        if not self._take_token():
            await self.close(code=CLOSE_POLICY_VIOLATION)
            return
        if text_data is None:
            await self.send_error("binary frames are not supported")
            return
        try:
            message = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
            await self.send_error("invalid JSON")
            return
        if not isinstance(message, dict):
            await self.send_error("message must be a JSON object")
        elif message.get("type") == "ping":
            await self.send_json({"type": "pong"})
        elif message.get("type") == "watch_sessions":
            await self._watch_sessions()
        else:
            await self.send_error("unknown message type")

    def _take_token(self) -> bool:
        """A token bucket: RATE_PER_SECOND on average, bursts of RATE_BURST."""
        now = time.monotonic()
        tokens, last = self.bucket or (float(RATE_BURST), now)
        tokens = min(float(RATE_BURST), tokens + (now - last) * RATE_PER_SECOND)
        self.bucket = (tokens - 1, now)
        return tokens >= 1

    async def _watch_sessions(self) -> None:
        if self.user_id is None:
            await self.send_error("not logged in")
            return
        if not self.watching_sessions:
            self.watching_sessions = True
            await self._join(user_sessions_group(self.user_id))
        await self.send_json({"type": "sessions_changed"})

    # --- Channel-layer handlers ---------------------------------------------------------------

    async def live_logout(self, event: dict[str, Any]) -> None:
        """Runs when this socket's login has ended: say why once, then close with 4001."""
        if self.ended:
            return
        self.ended = True
        # Tell the client now; the close follows once this process's logouts of the moment have
        # all gone out (the watcher's `close_after_logouts`), and leaving the groups waits for
        # `disconnect`.
        await self.send_json({"type": "logout", "reason": event["reason"]})
        watcher().close_after_logouts(self)

    async def close_logged_out(self) -> None:
        """The close that follows a `logout` message; nothing if the client has gone already."""
        if self.accepted:
            await self.close(code=CLOSE_LOGGED_OUT)

    async def live_logins_ended(self, event: dict[str, Any]) -> None:
        """Runs when several logins of this socket's user ended at once (logout everywhere, a
        password change): a logout if this socket's login is one of them."""
        if self.login_id is not None and self.login_id in event["login_ids"]:
            await self.live_logout(event)

    async def live_login(self, event: dict[str, Any]) -> None:
        """Runs when another tab of this browser logged in: follow it with a fresh status."""
        if self.ended or event["login_id"] == self.login_id:
            return
        await self._leave(self._forget_login())
        await self._enter_login(
            event["login_id"], event["user_id"], event["username"], event["expires_at"]
        )
        await self.send_status()

    async def live_expiry(self, event: dict[str, Any]) -> None:
        """Runs when HTTP activity moved this login's expiry: push the status again."""
        if self.ended or self.login_id is None:
            return
        self.expires_at = event["expires_at"]
        watcher().set_expiry(self.login_id, self.expires_at)
        await self.send_status()

    async def live_sessions(self, event: dict[str, Any]) -> None:
        """Runs when the user's list of logins changed (this socket watches the sessions page)."""
        await self.send_json({"type": "sessions_changed"})

    # --- Helpers ------------------------------------------------------------------------------

    async def _join(self, *groups: str) -> None:
        await add_to_groups(self.channel_layer, list(groups), self.channel_name)
        self.joined += groups

    async def _leave(self, groups: list[str]) -> None:
        for group in groups:
            self.joined.remove(group)
        if groups:
            await discard_from_groups(self.channel_layer, groups, self.channel_name)

    async def _enter_login(self, login_id: str, user_id: int, username: str, expires_at: float):
        # Join before the status goes out, so no logout sent from now on can slip past.
        await self._join(login_group(login_id), user_tabs_group(user_id))
        self._set_login(login_id, user_id, username, expires_at)

    def _set_login(self, login_id: str, user_id: int, username: str, expires_at: float) -> None:
        self.login_id, self.user_id, self.username = login_id, user_id, username
        self.expires_at = expires_at
        watcher().add(login_id, self, expires_at)
        watcher().tabs_changed(user_id)

    def _forget_login(self) -> list[str]:
        """Drop this socket's login (the watcher's record, a tab-count notice); return the groups
        it joined for it, for the caller to leave."""
        if self.login_id is None:
            return []
        watcher().discard(self.login_id, self)
        watcher().tabs_changed(self.user_id)
        groups = [login_group(self.login_id), user_tabs_group(self.user_id)]
        self.login_id = self.user_id = self.username = None
        return groups

    async def send_status(self) -> None:
        authenticated = self.login_id is not None
        await self.send_json(
            {
                "type": "status",
                "authenticated": authenticated,
                "username": self.username if authenticated else None,
                "expires_at": _iso_utc(self.expires_at) if authenticated else None,
            }
        )

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, separators=(",", ":")))

    async def send_error(self, error: str) -> None:
        await self.send_json({"type": "error", "error": error})
