"""The only code that sends to the channel layer.

Views, signal receivers, commands and the login watcher call these functions. The channel layer is
a fast path, not the source of truth (that is the `Login` table): a failed send is logged and
swallowed, so a logout never fails because Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer

from realtime.groups import (
    EVENT_EXPIRY,
    EVENT_LOGIN,
    EVENT_LOGOUT,
    EVENT_SESSIONS,
    browser_group,
    login_group,
    user_sessions_group,
)

logger = logging.getLogger(__name__)


async def _asend(group: str, event: dict) -> bool:
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        await layer.group_send(group, event)
    except Exception:
        logger.exception("could not send %s to the channel layer", event["type"])
        return False
    return True


def _send(group: str, event: dict) -> bool:
    return async_to_sync(_asend)(group, event)


async def alogins_ended(*, login_ids: list[str], user_ids: set[int], reason: str) -> bool:
    """Tell every socket of these logins that they have ended, and their users' sessions pages
    that the list changed; all sends at once. True when the layer took every message."""
    event = {"type": EVENT_LOGOUT, "reason": reason}
    sends = [_asend(login_group(login_id), event) for login_id in login_ids]
    sends += [asessions_changed(user_id=user_id) for user_id in user_ids]
    return all(await asyncio.gather(*sends))


def logins_ended(*, login_ids: list[str], user_ids: set[int], reason: str) -> bool:
    """Synchronous edge of `alogins_ended` (one trip to the event loop)."""
    return async_to_sync(alogins_ended)(login_ids=login_ids, user_ids=user_ids, reason=reason)


def browser_logged_in(
    *, browser_id: str, login_id: str, user_id: int, username: str, expires_at: datetime
) -> bool:
    """Tell every socket of a browser that it is now logged in (they switch to the new login)."""
    event = {
        "type": EVENT_LOGIN,
        "login_id": login_id,
        "user_id": user_id,
        "username": username,
        "expires_at": expires_at.timestamp(),
    }
    return _send(browser_group(browser_id), event)


def expiry_moved(*, login_id: str, expires_at: datetime) -> bool:
    """Tell a login's sockets its new expiry, after HTTP activity extended it."""
    event = {"type": EVENT_EXPIRY, "expires_at": expires_at.timestamp()}
    return _send(login_group(login_id), event)


async def asessions_changed(*, user_id: int) -> bool:
    """Tell the user's open sessions pages to refresh their list."""
    return await _asend(user_sessions_group(user_id), {"type": EVENT_SESSIONS})


def sessions_changed(*, user_id: int) -> bool:
    return async_to_sync(asessions_changed)(user_id=user_id)


async def _atab_counts(login_ids: list[str]) -> dict[str, int]:
    layer = get_channel_layer()
    counts = {}
    for login_id in login_ids:
        group = login_group(login_id)
        if isinstance(layer, RedisChannelLayer):
            # A group is a sorted set of channel names scored by join time, shared by every
            # process; members older than group_expiry are dead (channels-redis's own rule).
            connection = layer.connection(layer.consistent_hash(group))
            oldest = time.time() - layer.group_expiry
            counts[login_id] = await connection.zcount(layer._group_key(group), oldest, "+inf")
        else:
            counts[login_id] = len(getattr(layer, "groups", {}).get(group, ()))
    return counts


def tab_counts(login_ids: list[str]) -> dict[str, int]:
    """How many sockets each login has open right now, across every process."""
    try:
        return async_to_sync(_atab_counts)(login_ids)
    except Exception:
        logger.exception("could not count open tabs")
        return {}
