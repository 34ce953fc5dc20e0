"""The only code that sends to the channel layer.

Views, signal receivers and commands call these functions. The channel layer is a fast path, not
the source of truth: a failed send is logged and swallowed, so a logout never fails because Redis
is unreachable.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from realtime.groups import EVENT_LOGOUT, login_group

logger = logging.getLogger(__name__)


async def alogin_ended(*, login_id: str, reason: str) -> bool:
    """Tell every socket of one login that it has ended; True when the layer took the message."""
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        await layer.group_send(login_group(login_id), {"type": EVENT_LOGOUT, "reason": reason})
    except Exception:
        logger.exception("could not broadcast the end of a login (reason %s)", reason)
        return False
    return True


def login_ended(*, login_id: str, reason: str) -> bool:
    """Synchronous edge of `alogin_ended`, for views, signal receivers and commands."""
    return async_to_sync(alogin_ended)(login_id=login_id, reason=reason)
