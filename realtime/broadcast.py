"""The only code that sends to the channel layer.

Views, signal receivers, commands and the login watcher call these functions. The channel layer is
a fast path, not the source of truth (that is the `Login` table): a failed send is logged and
swallowed, so a logout never fails because Redis is unreachable.

From synchronous code (views, signal receivers) the sends are handed to the server's event loop
and the request goes on without waiting for Redis; where there is no such loop (management
commands, the shell, sync tests) they run to completion before the call returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Collection, Coroutine
from datetime import datetime

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer

from realtime.groups import (
    EVENT_EXPIRY,
    EVENT_LOGIN,
    EVENT_LOGINS_ENDED,
    EVENT_LOGOUT,
    EVENT_SESSIONS,
    browser_group,
    login_group,
    user_sessions_group,
    user_tabs_group,
)
from realtime.layers import REDIS_DOWN, group_sizes, send_to_groups

logger = logging.getLogger(__name__)
_in_flight: set[asyncio.Task] = set()  # keeps handed-off sends alive until they finish


Send = tuple[str, dict] | tuple[str, dict, tuple[str, ...]]  # group, event[, groups to drop]


async def _asend_all(sends: list[Send]) -> bool:
    """Every message, then the ended groups dropped whole (their sockets skip their own discard,
    a round trip each in a storm): one round trip to Redis (`realtime.layers.send_to_groups`)."""
    layer = get_channel_layer()
    if layer is None:
        return False
    types = ", ".join(dict.fromkeys(send[1]["type"] for send in sends))
    ended = [group for send in sends for group in (send[2] if len(send) > 2 else ())]
    try:
        await send_to_groups(layer, [(send[0], send[1]) for send in sends], drop=ended)
    except REDIS_DOWN as error:
        logger.warning("could not send %s to the channel layer: %r", types, error)
        return False
    except Exception:
        logger.exception("could not send %s to the channel layer", types)
        return False
    return True


def _server_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop this thread's sync code was called from (asgiref records it), if any."""
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) != os.getpid():
        return None
    return loop if loop is not None and loop.is_running() else None


def _spawn(coroutine: Coroutine) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _in_flight.add(task)
    task.add_done_callback(_in_flight.discard)


def _run_from_sync(function, *args, **kwargs) -> None:
    """Hand `function(*args, **kwargs)` (a coroutine function) to the server's event loop, or run
    it to completion where there is no such loop."""
    loop = _server_loop()
    if loop is None:
        async_to_sync(function)(*args, **kwargs)
    else:
        loop.call_soon_threadsafe(_spawn, function(*args, **kwargs))


def _send_from_sync(sends: list[Send]) -> None:
    _run_from_sync(_asend_all, sends)


def _sessions_changed(user_id: int) -> tuple[str, dict]:
    return user_sessions_group(user_id), {"type": EVENT_SESSIONS}


def _ended(login_ids: list[str], user_ids: set[int], reason: str) -> list[Send]:
    ended_groups = tuple(login_group(login_id) for login_id in login_ids)
    if len(login_ids) > 1 and len(user_ids) == 1:
        # Several logins of one user (logout everywhere, a password change): one message to the
        # user's tabs, each of which acts on it if its login is named. One per login cost a
        # group send and a message to read per login and process.
        [user_id] = user_ids
        event = {"type": EVENT_LOGINS_ENDED, "login_ids": login_ids, "reason": reason}
        sends: list[Send] = [(user_tabs_group(user_id), event, ended_groups)]
    else:
        event = {"type": EVENT_LOGOUT, "reason": reason}
        sends = [(group, event, (group,)) for group in ended_groups]
    return sends + [_sessions_changed(user_id) for user_id in user_ids]


async def alogins_ended(*, login_ids: list[str], user_ids: set[int], reason: str) -> bool:
    """Tell every socket of these logins that they have ended, and their users' sessions pages
    that the list changed. True when the layer took every message.

    This process's own sockets are told first and directly, by its login watcher: they need not
    wait for the round trips through Redis and back (docs/performance.md), and they learn it even
    when Redis is unreachable."""
    from realtime.watch import existing_watcher  # realtime.watch imports this module

    here = existing_watcher()
    if here is not None:
        await here.tell_ended(login_ids, reason)
    return await _asend_all(_ended(login_ids, user_ids, reason))


def logins_ended(*, login_ids: list[str], user_ids: set[int], reason: str) -> None:
    """Synchronous edge of `alogins_ended`."""
    _run_from_sync(alogins_ended, login_ids=login_ids, user_ids=user_ids, reason=reason)


def browser_logged_in(
    *, browser_id: str, login_id: str, user_id: int, username: str, expires_at: datetime
) -> None:
    """Tell every socket of a browser that it is now logged in (they switch to the new login),
    and the user's sessions pages that the list changed."""
    event = {
        "type": EVENT_LOGIN,
        "login_id": login_id,
        "user_id": user_id,
        "username": username,
        "expires_at": expires_at.timestamp(),
    }
    _send_from_sync([(browser_group(browser_id), event), _sessions_changed(user_id)])


def expiry_moved(*, login_id: str, expires_at: datetime) -> None:
    """Tell a login's sockets its new expiry, after HTTP activity extended it."""
    event = {"type": EVENT_EXPIRY, "expires_at": expires_at.timestamp()}
    _send_from_sync([(login_group(login_id), event)])


async def asessions_changed(*, user_ids: Collection[int]) -> bool:
    """Tell these users' open sessions pages to refresh their list."""
    return await _asend_all([_sessions_changed(user_id) for user_id in user_ids])


async def _atab_counts(login_ids: list[str]) -> dict[str, int]:
    groups = [login_group(login_id) for login_id in login_ids]
    sizes = await group_sizes(get_channel_layer(), groups)
    return dict(zip(login_ids, sizes, strict=True))


def tab_counts(login_ids: list[str]) -> dict[str, int]:
    """How many sockets each login has open right now, across every process."""
    try:
        return async_to_sync(_atab_counts)(login_ids)
    except Exception:
        logger.exception("could not count open tabs")
        return {}
