"""Channels' `AuthMiddlewareStack`, with the login check in the same database trip.

`AuthMiddleware` resolves the user once, at connect, in one `database_sync_to_async` call. The
status consumer also needs the user's `Login` row; a second call would cost a second trip through
Channels' single database thread (and, without pooling, a second database connection) on every
connect. This subclass makes both lookups in the first trip and leaves the row in
`scope["live_login"]` (None when anonymous or when the login has ended).

When the database or the session store cannot be reached, the failure is logged and the scope is
marked `live_unavailable`: the consumer refuses the socket cleanly (1013, try again later) instead
of failing the handshake with a server error.
"""

from __future__ import annotations

import logging

from channels.auth import AuthMiddleware, get_user
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.contrib.auth.models import AnonymousUser

from accounts import logins
from realtime.groups import LOGIN_ID_SESSION_KEY

logger = logging.getLogger(__name__)


@database_sync_to_async
def _resolve(scope):
    user = get_user.func(scope)  # Channels' own lookup, undecorated: we are on its thread already
    login = None
    if user.is_authenticated:
        login = logins.active_login(scope["session"].get(LOGIN_ID_SESSION_KEY), user.pk)
    return user, login


class LiveAuthMiddleware(AuthMiddleware):
    async def resolve_scope(self, scope) -> None:
        try:
            scope["user"]._wrapped, scope["live_login"] = await _resolve(scope)
        except Exception:
            logger.exception("could not resolve the user of a socket")
            scope["user"]._wrapped, scope["live_login"] = AnonymousUser(), None
            scope["live_unavailable"] = True


def LiveAuthMiddlewareStack(inner) -> BaseMiddleware:
    """Channels' `AuthMiddlewareStack`, with `LiveAuthMiddleware` in place of `AuthMiddleware`."""
    return CookieMiddleware(SessionMiddleware(LiveAuthMiddleware(inner)))
