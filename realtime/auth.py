"""Channels' `AuthMiddlewareStack`, with the login check in the same database trip.

`AuthMiddleware` resolves the user once, at connect, in one `database_sync_to_async` call. The
status consumer also needs the user's `Login` row; a second call would cost a second trip through
Channels' single database thread (and, without pooling, a second database connection) on every
connect. This subclass makes both lookups in the first trip and leaves the row in
`scope["live_login"]` (None when anonymous or when the login has ended).
"""

from __future__ import annotations

from channels.auth import AuthMiddleware, get_user
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.sessions import CookieMiddleware, SessionMiddleware

from accounts import logins
from realtime.groups import LOGIN_ID_SESSION_KEY


@database_sync_to_async
def _resolve(scope):
    user = get_user.func(scope)  # Channels' own lookup, undecorated: we are on its thread already
    login = None
    if user.is_authenticated:
        login = logins.active_login(scope["session"].get(LOGIN_ID_SESSION_KEY), user.pk)
    return user, login


class LiveAuthMiddleware(AuthMiddleware):
    async def resolve_scope(self, scope) -> None:
        scope["user"]._wrapped, scope["live_login"] = await _resolve(scope)


def LiveAuthMiddlewareStack(inner) -> BaseMiddleware:
    """Channels' `AuthMiddlewareStack`, with `LiveAuthMiddleware` in place of `AuthMiddleware`."""
    return CookieMiddleware(SessionMiddleware(LiveAuthMiddleware(inner)))
